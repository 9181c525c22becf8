"""TensorFlow's C++ start-up lines are captured wherever the project imports TensorFlow."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from components.common import quiet

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
TF_LINES = (b"I0000", b"E0000", b"cudart_stub", b"cuInit", b"absl::InitializeLog")


def test_finding_tensorflow_imports_nothing():
    """`find_spec` is a probe (serving.protos uses it): it must not start TensorFlow's runtime."""
    code = ("import importlib.util, sys, components\n"
            "spec = importlib.util.find_spec('tensorflow')\n"
            "print(bool(spec.submodule_search_locations), 'tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=60)
    assert out.stdout.split() == ["True", "False"], out.stderr


def test_c_level_lines_are_logged_and_others_written_back(capfd, caplog):
    with caplog.at_level(logging.DEBUG, logger="tensorflow.startup"), quiet.captured_stderr():
        os.write(2, b"I0000 00:00:1796558233.758357   19764 port.cc:153] oneDNN custom operations are on.\n")
        os.write(2, b"something the user must see\n")
    err = capfd.readouterr().err
    assert "something the user must see" in err and "oneDNN" not in err
    assert any("oneDNN" in r.getMessage() for r in caplog.records)


def test_nested_and_concurrent_captures_do_not_deadlock(capfd):
    """fd 2 is the process's: a capture inside a capture (or in another thread meanwhile) joins the first."""
    inner_done = threading.Event()

    def other_thread() -> None:
        with quiet.captured_stderr():
            os.write(2, b"from the other thread\n")
        inner_done.set()

    with quiet.captured_stderr():
        with quiet.captured_stderr():
            os.write(2, b"E0000 00:00:1796558241.283680   19764 cuda_platform.cc:52] failed call to cuInit\n")
        worker = threading.Thread(target=other_thread)
        worker.start()
        assert inner_done.wait(10), "a second thread's capture blocked on the first"
        worker.join(10)
        os.write(2, b"outer line\n")
    err = capfd.readouterr().err
    assert "from the other thread" in err and "outer line" in err and "cuInit" not in err


@pytest.mark.slow
def test_importing_tensorflow_through_the_package_prints_no_cpp_lines():
    """Start-up lines, and the ERROR-level notices Grappler and oneDNN print when the serving graph's
    preprocessing first runs ("layout failed", "DT_BOOL only on platforms with AVX-512")."""
    code = ("import components, tensorflow as tf, cv2\n"
            "from skimage import data\n"
            "from components.preprocess.params import PreprocessParams\n"
            "from serving.tf_preprocess import preprocess_bytes_uint8\n"
            "jpeg = cv2.imencode('.jpg', data.retina()[..., ::-1])[1].tobytes()\n"
            "fn = tf.function(lambda b: preprocess_bytes_uint8(b, PreprocessParams(image_size=64)), autograph=False)\n"
            "print(fn(tf.constant(jpeg)).shape[0])")
    env = {k: v for k, v in ENV.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, env=env, cwd=ROOT, timeout=180)
    assert out.returncode == 0 and out.stdout.split() == [b"64"], out.stderr
    assert not any(marker in out.stderr for marker in TF_LINES), out.stderr.decode()
