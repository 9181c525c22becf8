"""TensorFlow without its C++ log lines on the user's terminal, wherever the project imports it.

TensorFlow's runtime writes absl log lines (`I0000 00:00:... cudart_stub.cc ...`, "All log messages
before absl::InitializeLog() ...", the cuInit error on a machine without a GPU) straight to file
descriptor 2 while it imports and when it first lists its devices; `TF_CPP_MIN_LOG_LEVEL` does not reach
the lines written before absl is initialised. So both moments run with fd 2 pointed at a temporary file;
afterwards the lines that are TensorFlow's go to the `tensorflow.startup` logger at DEBUG (shown by
`retina --verbose`, or any DEBUG logging setup) and anything else is written back to the real stderr.

`install()` (done when the `components` or `serving` package is imported) puts a finder on
`sys.meta_path` so that every `import tensorflow` — a step's, Keras', a KFP component's — goes through
this. The finder only wraps the loader of the real spec: `importlib.util.find_spec("tensorflow")` still
imports nothing; the capture happens when the module is executed.
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
import types
from collections.abc import Iterator, Sequence
from typing import Any

log = logging.getLogger("tensorflow.startup")

_TF_LINE = re.compile(r"^([IWEF]\d{4} \d\d:\d\d:\d\d|WARNING: All log messages before absl|"
                      r"WARNING:tensorflow:|Instructions for updating:|Use `tf\.|To enable the following)")


class _Capture:
    """One redirection of fd 2 shared by every thread inside a `captured_stderr` block.

    fd 2 belongs to the whole process, so a nested block (the same thread importing TensorFlow inside a
    captured session start, or another thread starting a capture meanwhile) only counts itself in; the
    last one out restores fd 2 and replays what was written. Nothing here waits for another thread, so
    the import lock and this one cannot deadlock.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._depth = 0
        self._saved = -1
        self._sink: Any = None

    def enter(self) -> None:
        with self._lock:
            if self._depth == 0:
                sys.stderr.flush()
                self._sink = tempfile.TemporaryFile(mode="w+b")
                self._saved = os.dup(2)
                os.dup2(self._sink.fileno(), 2)
            self._depth += 1

    def exit(self) -> None:
        with self._lock:
            self._depth -= 1
            if self._depth:
                return
            sys.stderr.flush()
            os.dup2(self._saved, 2)
            os.close(self._saved)
            sink, self._sink = self._sink, None
        with sink:
            sink.seek(0)
            _replay(sink.read().decode("utf-8", "replace"))


_capture = _Capture()


@contextlib.contextmanager
def captured_stderr() -> Iterator[None]:
    """fd 2 goes to a temporary file inside the block; TF lines are logged, other lines written back."""
    _capture.enter()
    try:
        yield
    finally:
        _capture.exit()


def _replay(text: str) -> None:
    other = []
    for line in text.splitlines():
        if _TF_LINE.match(line) or line.startswith("\t") or not line.strip():
            log.debug("%s", line)
        else:
            other.append(line)
    if other:
        sys.stderr.write("\n".join(other) + "\n")
        sys.stderr.flush()


class _QuietLoader(importlib.abc.Loader):
    """The real `tensorflow` loader, executed inside `captured_stderr` together with the device listing."""

    def __init__(self, loader: importlib.abc.Loader) -> None:
        self._loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: types.ModuleType) -> None:
        with captured_stderr():  # install() has set TF_CPP_MIN_LOG_LEVEL already
            self._loader.exec_module(module)  # type: ignore[attr-defined]
            # The first device listing probes CUDA and logs the cuInit failure on a CPU-only machine; it
            # initialises no runtime, so strategies and device settings can still be chosen afterwards.
            module.config.list_physical_devices()
            module.get_logger().setLevel(logging.ERROR)

    def __getattr__(self, name: str) -> Any:  # get_resource_reader, is_package, ...
        return getattr(self._loader, name)


class _QuietTensorFlowFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: Sequence[str] | None, target: types.ModuleType | None = None,
                  ) -> importlib.machinery.ModuleSpec | None:
        if fullname != "tensorflow":
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return None
        spec.loader = _QuietLoader(spec.loader)
        return spec


_FINDER = _QuietTensorFlowFinder()

# TF's C++ log threshold for this process and its children (kfp local runner steps, model servers): 3 keeps
# ERROR lines too off the terminal — Grappler's "layout failed" and oneDNN's "DT_BOOL only with AVX-512"
# notices are ERROR-level but harmless, and a real failure reaches Python as an exception anyway. A user's
# own TF_CPP_MIN_LOG_LEVEL (0 shows everything) wins.
CPP_MIN_LOG_LEVEL = "3"


def install() -> None:
    """Route every later `import tensorflow` of this process through the capture (idempotent), and set
    TF's C++ log threshold for this process and its children unless the user set one."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", CPP_MIN_LOG_LEVEL)
    if _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)


def import_tensorflow() -> Any:
    """`import tensorflow` with its start-up lines captured (once; later calls are a dict lookup, so the
    server may call this per request)."""
    tf = sys.modules.get("tensorflow")
    if tf is not None and "tensorflow.python" in sys.modules and \
            not getattr(getattr(tf, "__spec__", None), "_initializing", False):  # not still being imported
        return tf
    install()
    import tensorflow as tf

    return tf
