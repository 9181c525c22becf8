"""TF Serving flags that change how models are loaded and answered, honoured (not just accepted):
session parallelism and config file, SavedModel tags, tensor_content responses, gRPC threads, CORS.

The server runs in process on TF Serving's own `half_plus_two` example model (x -> 0.5 x + 2)."""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest

from components.common.errors import RetinaError
from serving import protos
from serving.options import ServerOptions

pytestmark = pytest.mark.slow

MODEL = Path(__file__).parent / "tfserving_testdata" / "saved_model_half_plus_two_cpu"


def _options(**kw) -> ServerOptions:
    return ServerOptions(port=0, model_name="default", model_base_path=str(MODEL),
                         file_system_poll_wait_seconds=0, **kw)


def _predict(address: str, x: float = 2.0):
    protos.load()
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "default"
    request.inputs["x"].dtype = 1
    request.inputs["x"].float_val.append(x)
    request.inputs["x"].tensor_shape.dim.add().size = 1
    stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(address))
    return stub.Predict(request, timeout=10)


def _session(running):
    from tensorflow_serving.apis import model_pb2

    spec = model_pb2.ModelSpec(name="default")
    return running.manager.resolve(spec)._session  # noqa: SLF001 - the loaded TF session itself


def test_parallelism_flags_and_config_file_reach_the_session(tmp_path):
    from serving.server import start_server

    config = tmp_path / "session.txt"
    config.write_text("allow_soft_placement: true\nintra_op_parallelism_threads: 7\n")
    with start_server(_options(tensorflow_intra_op_parallelism=1, tensorflow_inter_op_parallelism=2,
                               tensorflow_session_config_file=str(config))) as running:
        session_config = _session(running)._config  # noqa: SLF001
        assert session_config.intra_op_parallelism_threads == 1  # the flags apply on top of the file
        assert session_config.inter_op_parallelism_threads == 2
        assert session_config.allow_soft_placement
        assert _predict(running.address).outputs["y"].float_val == [3.0]
    with start_server(_options(tensorflow_session_parallelism=3)) as running:
        session_config = _session(running)._config  # noqa: SLF001
        assert (session_config.intra_op_parallelism_threads, session_config.inter_op_parallelism_threads) == (3, 3)


def test_all_three_parallelism_flags_or_a_bad_config_file_are_refused(tmp_path):
    from serving.server import start_server

    with pytest.raises(RetinaError, match="You cannot configure all"):
        start_server(_options(tensorflow_session_parallelism=1, tensorflow_intra_op_parallelism=1,
                              tensorflow_inter_op_parallelism=1))
    bad = tmp_path / "bad.txt"
    bad.write_text("intra_op_threads: 1\n")  # not a ConfigProto field
    with pytest.raises(RetinaError, match="tensorflow.ConfigProto"):
        start_server(_options(tensorflow_session_config_file=str(bad)))


def test_saved_model_tags_choose_the_meta_graph():
    from serving.server import start_server

    with start_server(_options(saved_model_tags="serve")) as running:
        assert _predict(running.address).outputs["y"].float_val == [3.0]
    # The example model has no MetaGraph tagged serve,gpu: its only version fails to load, so the server
    # refuses to start, as TF Serving's does (load_servables_fast.cc, main.cc), with TF's reason.
    from serving.server import ModelsNotAvailable

    with pytest.raises(ModelsNotAvailable) as failure:
        start_server(_options(saved_model_tags="serve,gpu", max_num_load_retries=0))
    assert "{{{name: default version: 123} due to error: " in str(failure.value)
    assert "'serve', 'gpu'" in str(failure.value)


def test_tensor_content_serialization_and_grpc_threads():
    from serving.server import start_server

    with start_server(_options(enable_serialization_as_tensor_content=True, grpc_max_threads=1)) as running:
        y = _predict(running.address, 4.0).outputs["y"]
        assert not y.float_val and np.frombuffer(y.tensor_content, np.float32).tolist() == [4.0]
        assert running._grpc is not None  # noqa: SLF001
    with start_server(_options()) as running:
        y = _predict(running.address, 4.0).outputs["y"]
        assert y.float_val == [4.0] and not y.tensor_content  # TF Serving's default: the typed field
    with pytest.raises(RetinaError, match="grpc_max_threads"):
        start_server(_options(grpc_max_threads=0))


@pytest.mark.parametrize("cors", [True, False])
def test_rest_cors_support(cors):
    from components.common.processes import free_port
    from serving.server import start_server

    with start_server(_options(rest_api_port=free_port(), rest_api_enable_cors_support=cors)) as running:
        base = f"http://127.0.0.1:{running.rest_port}/v1/models/default"
        preflight = urllib.request.Request(f"{base}:predict", method="OPTIONS", headers={
            "Origin": "http://viewer.example", "Access-Control-Request-Method": "POST"})
        try:
            with urllib.request.urlopen(preflight, timeout=10) as answer:
                allowed = answer.headers.get("Access-Control-Allow-Origin")
        except urllib.error.HTTPError as exc:
            allowed = exc.headers.get("Access-Control-Allow-Origin")
        get = urllib.request.Request(base, headers={"Origin": "http://viewer.example"})
        with urllib.request.urlopen(get, timeout=10) as answer:
            status_allowed = answer.headers.get("Access-Control-Allow-Origin")
        assert (allowed, status_allowed) == (("*", "*") if cors else (None, None))
