"""The register KFP component: its python_func directly, and under the KFP local runner."""

from __future__ import annotations

import pytest

from components.common import config

pytestmark = pytest.mark.stack


def _aliases(stack, name):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=stack.mlflow_uri)
    return {
        alias: client.get_model_version_by_alias(name, alias).version
        for alias in (config.ALIAS_CHALLENGER, config.ALIAS_CHAMPION)
    }


def test_component_python_func_registers_the_run(stack, log_model_run):
    from components.register.component import register

    run_id = log_model_run({"test_accuracy": 0.66})
    model_name, version, promoted, reason = register.python_func(modality="oct", run_id=run_id)

    assert model_name == config.REGISTERED_MODEL["oct"]
    aliases = _aliases(stack, model_name)
    assert aliases["challenger"] == version
    assert (aliases["champion"] == version) is promoted
    assert reason


def test_cli_register_prints_the_decision(stack, log_model_run, capsys):
    import json

    from components.cli import main

    run_id = log_model_run({"test_qwk": 0.4})
    capsys.readouterr()  # MLflow prints run links while logging
    assert main(["register", "--modality", "fundus", "--run-id", run_id, "--margin", "0.01", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["model_name"] == "retina-fundus"
    assert _aliases(stack, "retina-fundus")["challenger"] == out["version"]
    # the same run again: same version, no new one
    assert main(["register", "--modality", "fundus", "--run-id", run_id, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["version"] == out["version"]


def test_cli_unknown_run_is_one_line_error(stack, capsys):
    from components.cli import main

    assert main(["register", "--modality", "oct", "--run-id", "f" * 32]) == 2
    err = capsys.readouterr().err
    assert "no MLflow run" in err and "Traceback" not in err


@pytest.mark.slow
def test_register_component_under_kfp_local_runner(stack, log_model_run, kfp_local):
    from components.register.component import register

    run_id = log_model_run({"test_accuracy": 0.61})
    task = register(modality="oct", run_id=run_id, metric="accuracy", margin=0.5)

    version = task.outputs["version"]
    assert task.outputs["model_name"] == "retina-oct"
    assert _aliases(stack, "retina-oct")["challenger"] == version
    assert isinstance(task.outputs["promoted"], bool)
    assert "accuracy" in task.outputs["reason"]
