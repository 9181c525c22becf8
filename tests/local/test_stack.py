"""The local stack: real SeaweedFS + MLflow processes, their env file, reuse and clean shutdown."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path

import pytest

from components.common import processes, storage
from components.common.config import BUCKETS
from infra.local import stack as local_stack


def _retina(*args: str, home: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in local_stack.ENV_KEYS}
    env["RETINA_HOME"] = str(home)
    return subprocess.run(
        [sys.executable, "-m", "components.cli", *args], capture_output=True, text=True, env=env, timeout=300
    )


@pytest.mark.stack
def test_stack_serves_s3_through_storage(stack):
    uri = f"s3://raw/test-stack/{uuid.uuid4().hex}"
    storage.write_bytes(f"{uri}/a.bin", b"\x00\x01payload")
    storage.write_text(f"{uri}/sub/b.txt", "hello")
    assert storage.read_bytes(f"{uri}/a.bin") == b"\x00\x01payload"
    assert storage.list_uris(uri) == [f"{uri}/a.bin", f"{uri}/sub/b.txt"]
    names = {b["Name"] for b in storage.s3_client().list_buckets()["Buckets"]}
    assert set(BUCKETS) <= names


@pytest.mark.stack
def test_mlflow_experiment_over_http_and_artifacts_land_in_seaweedfs(stack):
    name = f"stack-test-{uuid.uuid4().hex[:8]}"
    req = urllib.request.Request(
        f"{stack.mlflow_uri}/api/2.0/mlflow/experiments/create",
        data=json.dumps({"name": name}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        experiment_id = json.load(resp)["experiment_id"]
    with urllib.request.urlopen(
        f"{stack.mlflow_uri}/api/2.0/mlflow/experiments/get-by-name?experiment_name={name}", timeout=30
    ) as resp:
        assert json.load(resp)["experiment"]["experiment_id"] == experiment_id

    import mlflow

    client = mlflow.MlflowClient(stack.mlflow_uri)
    run = client.create_run(experiment_id)
    client.log_text(run.info.run_id, "lesion", "notes/n.txt")
    stored = storage.list_uris("s3://mlflow/")
    assert any(u.endswith(f"{run.info.run_id}/artifacts/notes/n.txt") for u in stored)


@pytest.mark.stack
def test_env_file_is_private_sourceable_and_does_not_override(stack, monkeypatch):
    path = local_stack.env_file(stack.home)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((stack.home / "stack" / "credentials.json").stat().st_mode) == 0o600
    out = subprocess.run(
        ["bash", "-c", f"source {path} && echo $AWS_ENDPOINT_URL $MLFLOW_TRACKING_URI"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert out == [stack.s3_endpoint, stack.mlflow_uri]

    for key in local_stack.ENV_KEYS:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://elsewhere:5000")
    assert local_stack.apply_stack_env(stack.home)
    assert os.environ["AWS_SECRET_ACCESS_KEY"] == stack.env["AWS_SECRET_ACCESS_KEY"]
    assert os.environ["MLFLOW_TRACKING_URI"] == "http://elsewhere:5000"
    assert not local_stack.apply_stack_env(stack.home / "no-such-home")


def test_busy_default_port_is_replaced_by_a_free_one():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        ports = local_stack.pick_ports({"s3": taken})
    assert ports["s3"] != taken
    assert len(set(ports.values())) == len(ports) == len(local_stack.DEFAULT_PORTS)


def test_down_never_kills_a_pid_that_is_not_ours(tmp_path):
    stranger = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        state = {
            "ports": dict(local_stack.DEFAULT_PORTS),
            "processes": {
                "seaweedfs": {"pid": stranger.pid, "markers": ["weed", "mini", f"-dir={tmp_path}"]}
            },
        }
        (tmp_path / "stack").mkdir()
        (tmp_path / "stack" / "state.json").write_text(json.dumps(state))
        assert local_stack.stop_stack(tmp_path) == {"mlflow": False, "seaweedfs": False}
        assert stranger.poll() is None
    finally:
        stranger.kill()
        stranger.wait()


@pytest.mark.stack
def test_cli_up_reuses_then_down_leaves_no_process(tmp_path):
    home = tmp_path / "home"
    first = _retina("stack", "up", "--free-ports", home=home)
    assert first.returncode == 0, first.stderr
    state = json.loads((home / "stack" / "state.json").read_text())
    pids = {part: info["pid"] for part, info in state["processes"].items()}
    secret = local_stack.read_env_file(home)["AWS_SECRET_ACCESS_KEY"]
    group_members = [p for pid in pids.values() for p in processes.process_group_pids(pid)]
    try:
        assert "stack is up" in first.stdout
        assert _retina("stack", "status", home=home).returncode == 0

        again = _retina("stack", "up", home=home)
        assert again.returncode == 0, again.stderr
        assert "reusing" in again.stdout
        state_again = json.loads((home / "stack" / "state.json").read_text())
        assert {p: i["pid"] for p, i in state_again["processes"].items()} == pids
        assert secret not in first.stdout + first.stderr + again.stdout + again.stderr
    finally:
        down = _retina("stack", "down", home=home)
    assert down.returncode == 0, down.stderr
    assert set(group_members) >= set(pids.values())
    still_alive = [p for p in group_members if processes.cmdline(p) is not None]
    assert still_alive == []
    assert _retina("stack", "status", home=home).returncode == 1
    leftovers = [p for port in state["ports"].values() for p in Path("/tmp").glob(f"seaweedfs-*-{port}.sock")]
    assert leftovers == []
    assert (home / "stack" / "seaweedfs").is_dir() and (home / "stack" / "mlflow.db").exists()
