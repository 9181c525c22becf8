"""No TensorFlow C++ start-up lines reach the terminal of a `retina` command."""

from __future__ import annotations

import subprocess
import sys

TF_WORK = "import keras, tensorflow as tf; print(keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])(tf.zeros((1, 2))).shape)"


def _stderr(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stderr


def test_tensorflow_imported_anywhere_after_the_entry_point_prints_no_cxx_lines():
    noisy = _stderr(TF_WORK)
    quiet = _stderr("from components.cli import main; main([]); " + TF_WORK)
    assert "absl::InitializeLog" in noisy or "I0000" in noisy  # the lines exist without the finder …
    assert "absl" not in quiet and "I0000" not in quiet and "E0000" not in quiet  # … and not with it
