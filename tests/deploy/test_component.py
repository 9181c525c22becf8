"""The deploy KFP component (python_func and the KFP local runner) and `retina deploy`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = [pytest.mark.stack, pytest.mark.slow]


def _labels(base: Path, model_name: str) -> dict[str, int]:
    from serving.model_repository import read_models_config

    return {e.name: e.labels for e in read_models_config(str(base / "models.config"))}[model_name]


def test_component_python_func_publishes_the_version(stack, register_version, model_name, tmp_path):
    from components.deploy.component import deploy

    version = register_version()
    serving_version, endpoint = deploy.python_func(
        model_name=model_name, version=version, serving_base_uri=str(tmp_path / "repo")
    )
    assert serving_version == int(version)
    assert (Path(endpoint) / "saved_model.pb").exists()
    assert _labels(tmp_path / "repo", model_name) == {"stable": serving_version}


def test_cli_deploy_by_alias_prints_json(stack, register_version, model_name, tmp_path, capsys):
    from components.cli import main

    version = register_version()
    base = tmp_path / "repo"
    capsys.readouterr()  # MLflow prints run links while logging
    rc = main(["deploy", "--model", model_name, "--alias", "champion", "--serving-base", str(base), "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["serving_version"] == int(version)
    assert (base / model_name / version / "saved_model.pb").exists()


def test_cli_unknown_model_is_one_line_error(stack, tmp_path, capsys):
    from components.cli import main

    rc = main(["deploy", "--model", "retina-nothing", "--version", "1", "--serving-base", str(tmp_path)])
    assert rc == 2
    err = capsys.readouterr().err
    assert "retina-nothing has no version 1" in err and "Traceback" not in err


def test_deploy_component_under_kfp_local_runner(stack, register_version, model_name, tmp_path, kfp_local):
    from components.deploy.component import deploy

    version = register_version()
    base = tmp_path / "repo"
    task = deploy(model_name=model_name, version="champion", serving_base_uri=str(base))

    assert task.outputs["serving_version"] == int(version)
    assert (base / model_name / version / "saved_model.pb").exists()
    assert _labels(base, model_name) == {"stable": int(version)}
