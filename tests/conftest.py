"""Fixtures every test area shares: the throw-away local stack (SeaweedFS S3 + MLflow on loopback) and the
kfp local runner that every component's local test runs under."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from infra.local.stack import ENV_KEYS, LocalStack, start_stack, stop_stack


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist, each worker's TensorFlow (and every process it starts: kfp local runner steps,
    model servers) gets its share of the cores instead of one thread per core each.

    Two workers on two cores, each with TensorFlow's default pools, oversubscribe the machine: two demo
    trainings side by side took 62 s wall and 85 CPU-seconds with the default pools, 50 s and 68 with one
    thread each. A value set by the user is kept.
    """
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0") or 0)
    if workers > 1:
        share = str(max(1, (os.cpu_count() or 1) // workers))
        for name in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS"):
            os.environ.setdefault(name, share)


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[Any]) -> None:
    """Files with `long` tests first, the longest first (`long(seconds=...)`, what the file takes on one
    worker), then files with `slow` ones, each file's tests kept together and in their order.

    `make test` deals whole files out to parallel workers (pytest-xdist `--dist loadfile`) in this order
    (`--no-loadscope-reorder`): a long training file handed out last would run alone at the end while the
    other workers idle. Dealt out first, longest first, the short files fill in around them. (xdist keeps a
    worker's queue at more than two tests, so a file of one or two tests gets the next file queued behind
    it: the pipeline run, longest, goes first so no training file waits behind it on the same worker.)
    """
    seconds: dict[Any, float] = {}
    for item in items:
        marker = item.get_closest_marker("long")
        if marker is not None:
            seconds[item.path] = max(seconds.get(item.path, 0.0), float(marker.kwargs.get("seconds", 60)))
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    # stable: the order inside each group (and each file) is kept
    items.sort(key=lambda item: (0, -seconds[item.path]) if item.path in seconds
               else (1, 0.0) if item.path in slow_files else (2, 0.0))


@pytest.fixture(scope="session", autouse=True)
def session_temp_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Every temporary folder of the session — ours, kfp's `kfp-workspace-*`, the servers' and the steps'
    subprocesses' (they inherit TMPDIR) — goes under one folder that is removed at the end, so a test
    run leaves nothing in the system temp folder."""
    tmp_path_factory.getbasetemp()  # pytest's own tmp_path folders stay where pytest keeps them
    root = Path(tempfile.mkdtemp(prefix="retina-tests-"))
    saved_env, saved_tempdir = os.environ.get("TMPDIR"), tempfile.tempdir
    os.environ["TMPDIR"] = str(root)
    tempfile.tempdir = str(root)
    try:
        yield root
    finally:
        tempfile.tempdir = saved_tempdir
        if saved_env is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = saved_env
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """A real SeaweedFS + MLflow for the whole session, on free ports, in a home of its own.

    Sets the S3/MLflow variables and RETINA_HOME in os.environ for the session (so storage, mlflow
    and in-process `retina` commands all reach it), restores them and stops both servers at the end.
    """
    home = tmp_path_factory.mktemp("retina-home")
    running = start_stack(home, use_default_ports=False)
    names = (*ENV_KEYS, "RETINA_HOME")
    saved = {k: os.environ.get(k) for k in names}
    os.environ.update(running.env)
    os.environ["RETINA_HOME"] = str(home)
    try:
        yield running
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        stop_stack(home)


@pytest.fixture
def kfp_local(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """`kfp.local` with `SubprocessRunner(use_venv=False)`: each component runs in a subprocess of this venv,
    as it runs in the project image on the cluster (the package is installed, no pip at start).

    PYTHONPATH points at the checkout so the subprocess imports this tree even where the package is not
    installed in editable mode. Returns the local pipeline root (artifacts land under it).
    """
    from kfp import local

    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parent.parent))
    root = tmp_path / "pipeline-root"
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root))
    return root


def _closed(schema: Any) -> Any:
    """The schema with unknown fields refused where it lists properties, as `kubectl apply --validate=strict`
    (server-side field validation) refuses them; a structural schema alone lets the API server prune them."""
    if isinstance(schema, list):
        return [_closed(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _closed(v) for k, v in schema.items()}
    if "properties" in out and "additionalProperties" not in out \
            and not out.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


@pytest.fixture(scope="session")
def strict_crd_validator() -> Callable[[dict], Any]:
    """`make(openapi_schema)` -> a jsonschema validator for a custom resource that refuses unknown fields."""
    import jsonschema

    def make(schema: dict) -> Any:
        schema = _closed(schema)
        cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft7Validator)
        cls.check_schema(schema)
        return cls(schema)

    return make
