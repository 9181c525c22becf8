"""Import and start TensorFlow without its C++ log lines on the user's terminal.

TensorFlow's runtime writes absl log lines (`I0000 00:00:... cudart_stub.cc ...`, "All log messages
before absl::InitializeLog() ...", cuInit errors) straight to file descriptor 2 while it imports and
when the first session starts; `TF_CPP_MIN_LOG_LEVEL` does not reach those written before absl is
initialised. So the two moments are run with fd 2 pointed at a temporary file; afterwards the lines that
are TensorFlow's go to the Python logger at DEBUG (visible with `--verbose` / `RETINA_LOG_LEVEL=DEBUG`)
and anything else is written back to the real stderr.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import logging
import os
import re
import sys
import tempfile
import threading
from collections.abc import Iterator
from typing import Any

log = logging.getLogger("serving.tensorflow")

_TF_LINE = re.compile(r"^([IWEF]\d{4} \d\d:\d\d:\d\d|WARNING: All log messages before absl|"
                      r"WARNING:tensorflow:|Instructions for updating:|Use `tf\.|To enable the following)")
_lock = threading.Lock()


@contextlib.contextmanager
def captured_stderr() -> Iterator[None]:
    """fd 2 goes to a temporary file inside the block; TF lines are logged, other lines written back."""
    with _lock:
        sys.stderr.flush()
        saved = os.dup(2)
        with tempfile.TemporaryFile(mode="w+b") as sink:
            os.dup2(sink.fileno(), 2)
            try:
                yield
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
                os.close(saved)
                sink.seek(0)
                _replay(sink.read().decode("utf-8", "replace"))


def _replay(text: str) -> None:
    other = []
    for line in text.splitlines():
        if _TF_LINE.match(line) or line.startswith("\t") or not line.strip():
            log.debug("%s", line)
        else:
            other.append(line)
    if other:
        sys.stderr.write("\n".join(other) + "\n")


def import_tensorflow() -> Any:
    """`import tensorflow` with its start-up noise captured (once; later calls are free)."""
    if "tensorflow.python" in sys.modules:
        import tensorflow as tf

        return tf
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with captured_stderr():
        import tensorflow as tf

        tf.get_logger().setLevel(logging.ERROR)
    return tf


class _QuietTensorFlowImport(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """The first `import tensorflow` anywhere (a step, Keras, a library) goes through `import_tensorflow`.

    Steps import TensorFlow lazily, deep inside their functions; rather than wrap each of those, the
    `retina` entry point installs this finder, which does the real import with stderr captured and then
    hands the loaded module to the import system unchanged (its own `__spec__` restored).
    """

    def __init__(self) -> None:
        self._module: Any = None
        self._spec: Any = None

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)
        self._module = import_tensorflow()
        self._spec = self._module.__spec__
        with captured_stderr():  # CUDA probing (`failed call to cuInit`) happens when devices are first listed
            self._module.config.list_physical_devices()
        sys.modules.pop("tensorflow", None)  # put back by the import system, through create_module
        return importlib.machinery.ModuleSpec(name, self, is_package=True)

    def create_module(self, spec: Any) -> Any:
        return self._module

    def exec_module(self, module: Any) -> None:
        module.__spec__ = self._spec


def quiet_tensorflow_imports() -> None:
    """Install the finder once, unless TensorFlow is already imported (then there is nothing to hide)."""
    if "tensorflow" in sys.modules or any(isinstance(f, _QuietTensorFlowImport) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _QuietTensorFlowImport())
