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
