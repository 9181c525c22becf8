"""`retina demo` keeps the runner's chatter in a log but shows the training step's epochs live."""

from __future__ import annotations

import os
import subprocess
import sys

from infra.local.demo import LIVE_LINE, DemoSettings, _output_to


def test_step_output_goes_to_the_log_and_epoch_lines_to_the_terminal(tmp_path, capfd):
    log = tmp_path / "logs" / "training.log"
    child = ("import sys\nprint('executor input {json}')\nprint('    epoch 1/3 accuracy 0.5 loss 1.2 (2.0 s)', flush=True)\n"
             "print('I0000 tensorflow chatter', file=sys.stderr)\nprint('epoch 2/3 accuracy 0.7 loss 0.9 (1.9 s)')\n")
    with _output_to(log, LIVE_LINE):
        os.write(1, b"runner line from this process\n")
        subprocess.run([sys.executable, "-c", child], check=True)
    shown = capfd.readouterr().out.splitlines()
    assert shown == ["      epoch 1/3 accuracy 0.5 loss 1.2 (2.0 s)", "      epoch 2/3 accuracy 0.7 loss 0.9 (1.9 s)"]
    text = log.read_text()
    assert all(s in text for s in ("executor input", "tensorflow chatter", "runner line", "epoch 2/3"))
    print("after")  # the terminal is back
    assert capfd.readouterr().out == "after\n"


def test_demo_trains_at_128_px_or_more():
    assert DemoSettings().image_size >= 128
