"""TF Serving's official protos and gRPC stubs, importable without starting TensorFlow.

`tensorflow_serving.apis` imports `tensorflow.core.framework.tensor_pb2` (and other generated proto
modules shipped inside the TensorFlow wheel). Importing any `tensorflow.*` submodule normally runs
`tensorflow/__init__.py`, which loads the whole runtime (~5-12 s, C++ log lines on the terminal). A
client only needs the generated message classes, so when TensorFlow is not loaded yet,
`load()` imports them with a bare placeholder standing in for the `tensorflow` package (its real folder
as `__path__`, no code run), then removes the placeholder: a later `import tensorflow` runs the real
package and finds the same proto modules already imported.

Call `load()` before importing anything from `tensorflow_serving` in code that may run without TF.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import threading
import types

# Every proto module the project's client, server and export use, in dependency order.
_MODULES = (
    "tensorflow.core.framework.types_pb2",
    "tensorflow.core.framework.tensor_shape_pb2",
    "tensorflow.core.framework.tensor_pb2",
    "tensorflow.core.example.example_pb2",
    "tensorflow.core.protobuf.error_codes_pb2",
    "tensorflow.core.protobuf.meta_graph_pb2",
    "tensorflow.core.protobuf.saved_model_pb2",
    "tensorflow_serving.apis.predict_pb2",
    "tensorflow_serving.apis.classification_pb2",
    "tensorflow_serving.apis.regression_pb2",
    "tensorflow_serving.apis.inference_pb2",
    "tensorflow_serving.apis.get_model_metadata_pb2",
    "tensorflow_serving.apis.get_model_status_pb2",
    "tensorflow_serving.apis.model_management_pb2",
    "tensorflow_serving.apis.prediction_log_pb2",
    "tensorflow_serving.apis.prediction_service_pb2_grpc",
    "tensorflow_serving.apis.model_service_pb2_grpc",
    "tensorflow_serving.config.model_server_config_pb2",
)

_lock = threading.Lock()
_loaded = False


def load() -> None:
    """Import the proto modules (once); TensorFlow's runtime is not started if it is not running yet."""
    global _loaded
    if _loaded:
        return
    with _lock:
        if _loaded:
            return
        placeholder = None
        if "tensorflow" not in sys.modules:
            spec = importlib.util.find_spec("tensorflow")
            if spec is None or not spec.submodule_search_locations:
                raise ImportError("the tensorflow wheel (which ships the TF Serving protos) is not installed")
            placeholder = types.ModuleType("tensorflow")
            placeholder.__path__ = list(spec.submodule_search_locations)
            placeholder.__file__ = None
            sys.modules["tensorflow"] = placeholder
        try:
            for name in _MODULES:
                importlib.import_module(name)
        finally:
            if placeholder is not None and sys.modules.get("tensorflow") is placeholder:
                del sys.modules["tensorflow"]
        _loaded = True
