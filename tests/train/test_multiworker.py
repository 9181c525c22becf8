"""Two real `retina train` workers on loopback (MultiWorkerMirroredStrategy over TF_CONFIG, CPU).

One scenario, as a TFJob lives it: both workers start on the same command line (the launcher's MLflow
run id, a shared checkpoint folder), worker 1 is killed after the first checkpoint, the chief is then
stopped (alone it fails its next collective — measured here after ~45 s of missed heartbeats — and the
operator restarts every pod), both restart and resume from the checkpoint, finish, and end with
byte-identical weights. Only the chief writes the checkpoint, the model and the MLflow run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from components.common import storage
from components.common.processes import free_port

pytestmark = [pytest.mark.slow, pytest.mark.stack]

REPO = Path(__file__).resolve().parents[2]
EPOCHS = 3


def _tf_config(ports: list[int], index: int) -> str:
    return json.dumps({"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                       "task": {"type": "worker", "index": index}})


def _start_workers(tmp: Path, attempt: str, argv: list[str], outs: list[str]) -> list[subprocess.Popen]:
    """Both workers, each with its own TMPDIR (where a non-chief keeps its private checkpoint copy)."""
    first = free_port()
    ports = [first, free_port(taken=(first,))]
    procs = []
    for index in (0, 1):
        tmpdir = tmp / f"tmp-w{index}"
        tmpdir.mkdir(exist_ok=True)
        env = dict(os.environ, TF_CONFIG=_tf_config(ports, index), CUDA_VISIBLE_DEVICES="",
                   TMPDIR=str(tmpdir), PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="2")
        log = open(tmp / f"{attempt}-w{index}.log", "wb")  # noqa: SIM115 - the child holds it
        # -X faulthandler: a worker stuck past the deadline is sent SIGABRT and its stacks land in its log
        procs.append(subprocess.Popen([sys.executable, "-X", "faulthandler", "-m", "components.cli", *argv,
                                       "--out", outs[index]],
                                      env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                                      start_new_session=True))
        log.close()
    return procs


def _log(tmp: Path, attempt: str, index: int) -> str:
    return (tmp / f"{attempt}-w{index}.log").read_text(errors="replace")


def _value(log: str, key: str) -> str | None:
    lines = [ln.split(" ", 1)[1] for ln in log.splitlines() if ln.startswith(f"{key} ")]
    return lines[-1] if lines else None


def _wait_for(check, procs: list[subprocess.Popen], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        exited = [p.returncode for p in procs if p.poll() is not None]
        assert not exited, f"a worker exited ({exited}) before {what}"
        assert time.monotonic() < deadline, f"no {what} after {timeout_s:.0f} s"
        time.sleep(0.2)


def _finish(procs: list[subprocess.Popen], tmp: Path, attempt: str, timeout_s: float) -> None:
    """Wait for both workers; past the deadline, dump their Python stacks (SIGABRT) and fail with the logs."""
    deadline = time.monotonic() + timeout_s
    while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
        time.sleep(0.5)
    stuck = [i for i, p in enumerate(procs) if p.poll() is None]
    if stuck:
        for i in stuck:
            os.kill(procs[i].pid, signal.SIGABRT)
        time.sleep(3)
        _kill(procs)
        tails = "\n".join(f"--- worker {i}:\n{_log(tmp, attempt, i)[-4000:]}" for i in stuck)
        pytest.fail(f"workers {stuck} still running after {timeout_s:.0f} s\n{tails}")


def _kill(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def test_two_workers_train_identically_and_resume_after_a_lost_worker(stack, tiny_oct_data, tmp_path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    experiment = f"test-multiworker-{uuid.uuid4().hex[:8]}"
    run_id = client.create_run(client.create_experiment(experiment)).info.run_id  # as the launcher does
    ckpt = tmp_path / "ckpt"  # one folder both workers see, as an s3:// URI is on the cluster
    out = f"s3://models/{experiment}"
    outs = [out, f"{out}-worker1"]  # worker 1 is told to write elsewhere: it must not write at all
    argv = ["train", "--modality", "oct", "--data", str(tiny_oct_data), "--model", "oct_cnn", "--width", "0.25",
            "--image-size", "32", "--batch-size", "8", "--epochs", str(EPOCHS), "--patience", "100",
            "--checkpoint-dir", str(ckpt), "--run-id", run_id]
    metadata = ckpt / "backup" / "training_metadata.json"

    started = time.monotonic()
    first = _start_workers(tmp_path, "first", argv, outs)
    try:
        _wait_for(metadata.exists, first, 240, "first checkpoint")
        saved_epoch = json.loads(metadata.read_text())["epoch"]
        os.killpg(first[1].pid, signal.SIGKILL)  # worker 1 is lost (pre-empted node)
        time.sleep(2)  # the chief is now blocked in its next collective, not writing
    finally:
        _kill(first)
    assert 1 <= saved_epoch < EPOCHS
    private = list((tmp_path / "tmp-w1").glob("retina-ckpt-*/backup"))
    assert private, "worker 1 keeps its checkpoint writes in a private copy"
    assert not storage.exists(out) and not storage.exists(outs[1])  # nothing half-trained is published

    second = _start_workers(tmp_path, "second", argv, outs)
    try:
        _finish(second, tmp_path, "second", 300)
    finally:
        _kill(second)
    logs = [_log(tmp_path, "second", i) for i in (0, 1)]
    assert [p.returncode for p in second] == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    wall = time.monotonic() - started

    # both resumed from the same saved epoch and ended with byte-identical weights
    for log in logs:
        assert f"resumed from checkpoint at epoch {saved_epoch}" in log
    digests = [_value(log, "weights_digest") for log in logs]
    assert digests[0] and digests[0] == digests[1]

    # only the chief published: the model, the run, the checkpoint's removal
    assert _value(logs[0], "model_uri") == out and _value(logs[1], "model_uri") is None
    assert storage.is_published(out) and not storage.exists(outs[1])
    assert not (ckpt / "backup").exists()
    from components.common.model_store import load_model
    from components.train.training import weights_digest

    model, _ = load_model(out)
    assert weights_digest(model) == digests[0]
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert [r.info.run_id for r in runs] == [run_id] and runs[0].info.status == "FINISHED"
    history = client.get_metric_history(run_id, "loss")
    steps = sorted(m.step for m in history)
    assert steps == sorted(set(steps)) and set(steps) == set(range(1, EPOCHS + 1)), steps  # one writer per epoch
    assert any(a.path == "model" for a in client.list_artifacts(run_id))
    print(f"two-worker train + kill + resume: {wall:.0f} s wall")
