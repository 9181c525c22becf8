"""Fixtures for the pipeline tests: compiled packages with sentinel credentials (`kfp_local` is in tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

# Values that must never reach a compiled package, whatever the compiling shell has exported.
SENTINEL_SECRETS = {
    "AWS_ACCESS_KEY_ID": "sentinel-access-key-4f1e",
    "AWS_SECRET_ACCESS_KEY": "sentinel-secret-key-9c2d",
    "MLFLOW_TRACKING_PASSWORD": "sentinel-mlflow-pass-77ab",
}


@pytest.fixture(scope="session")
def sentinel_secrets() -> dict[str, str]:
    return dict(SENTINEL_SECRETS)


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Both pipelines compiled with sentinel credentials in the environment: name -> {text, spec, platform}."""
    from pipelines.compile import compile_all

    mp = pytest.MonkeyPatch()
    for key, value in SENTINEL_SECRETS.items():
        mp.setenv(key, value)
    try:
        paths = compile_all(tmp_path_factory.mktemp("compiled"))
    finally:
        mp.undo()
    out = {}
    for name, path in paths.items():
        text = Path(path).read_text()
        docs = list(yaml.safe_load_all(text))
        out[name] = {"text": text, "spec": docs[0], "platform": docs[1] if len(docs) > 1 else {}}
    return out

