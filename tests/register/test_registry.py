"""Registration and the champion gate against a real MLflow tracking server + registry."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from components.common import config, storage
from components.register.registry import RegistrationError, register_model

pytestmark = pytest.mark.stack


def _client(stack):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=stack.mlflow_uri)


def test_first_version_becomes_champion_and_challenger(stack, log_model_run, model_name):
    run_id = log_model_run({"test_accuracy": 0.71, "test_qwk": 0.55})

    result = register_model("oct", run_id, registered_model=model_name)

    assert result.promoted
    assert "no champion" in result.reason
    client = _client(stack)
    assert client.get_model_version_by_alias(model_name, config.ALIAS_CHAMPION).version == result.version
    assert client.get_model_version_by_alias(model_name, config.ALIAS_CHALLENGER).version == result.version
    mv = client.get_model_version(model_name, result.version)
    assert mv.status == "READY"
    assert mv.run_id == run_id
    assert float(mv.tags["metric.test_accuracy"]) == pytest.approx(0.71)
    assert mv.tags["code_version"] == config.code_version()
    assert mv.tags["retina.promotion"] == "champion"
    assert mv.tags["retina.promotion_reason"] == result.reason
    assert result.reason in mv.description


def test_better_model_takes_champion(stack, log_model_run, model_name):
    first = register_model("oct", log_model_run({"test_accuracy": 0.70}), registered_model=model_name)
    second = register_model(
        "oct", log_model_run({"test_accuracy": 0.80}), margin=0.05, registered_model=model_name
    )

    assert second.promoted and second.version != first.version
    assert "promoted" in second.reason and "0.8000" in second.reason
    client = _client(stack)
    assert client.get_model_version_by_alias(model_name, "champion").version == second.version


def test_improvement_below_margin_keeps_champion(stack, log_model_run, model_name):
    champion = register_model("oct", log_model_run({"test_accuracy": 0.70}), registered_model=model_name)
    candidate = register_model(
        "oct", log_model_run({"test_accuracy": 0.705}), margin=0.01, registered_model=model_name
    )

    assert not candidate.promoted
    assert "kept champion" in candidate.reason and "margin 0.0100" in candidate.reason
    client = _client(stack)
    assert client.get_model_version_by_alias(model_name, "champion").version == champion.version
    assert client.get_model_version_by_alias(model_name, "challenger").version == candidate.version
    mv = client.get_model_version(model_name, candidate.version)
    assert mv.tags["retina.promotion"] == "challenger"
    assert candidate.reason in mv.description


def test_worse_model_is_refused_even_without_margin(stack, log_model_run, model_name):
    register_model("oct", log_model_run({"test_accuracy": 0.70}), registered_model=model_name)
    worse = register_model("oct", log_model_run({"test_accuracy": 0.60}), registered_model=model_name)
    assert not worse.promoted


def test_rerun_with_same_run_creates_no_second_version(stack, log_model_run, model_name):
    run_id = log_model_run({"test_accuracy": 0.7})
    first = register_model("oct", run_id, registered_model=model_name)
    again = register_model("oct", run_id, registered_model=model_name)

    assert again.version == first.version
    assert again.promoted and "already the champion" in again.reason
    versions = _client(stack).search_model_versions(f"name='{model_name}'")
    assert [v.version for v in versions] == [first.version]


def test_rerun_of_refused_run_stays_refused(stack, log_model_run, model_name):
    register_model("oct", log_model_run({"test_accuracy": 0.9}), registered_model=model_name)
    run_id = log_model_run({"test_accuracy": 0.5})
    first = register_model("oct", run_id, registered_model=model_name)
    again = register_model("oct", run_id, registered_model=model_name)
    assert (again.version, again.promoted) == (first.version, False)
    assert len(_client(stack).search_model_versions(f"name='{model_name}'")) == 2


def test_dataset_manifest_summary_is_tagged(stack, log_model_run, model_name, tmp_path):
    manifest = {
        "modality": "oct",
        "image_size": 32,
        "code_version": "0.1.0+gabc",
        "splits": {"train": {"count": 40}, "val": {"count": 5}, "test": {"count": 5}},
        "rejected_count": 1,
    }
    data_uri = "s3://datasets/register-test-" + model_name
    storage.write_json(storage.join(data_uri, "manifest.json"), manifest)
    run_id = log_model_run({"test_accuracy": 0.7}, params={"data_uri": data_uri})

    result = register_model("oct", run_id, registered_model=model_name)

    dataset = json.loads(_client(stack).get_model_version(model_name, result.version).tags["dataset"])
    assert dataset["uri"] == data_uri
    assert dataset["counts"] == {"train": 40, "val": 5, "test": 5}
    assert dataset["rejected_count"] == 1


def test_missing_metric_names_what_the_run_has(stack, log_model_run, model_name):
    run_id = log_model_run({"val_loss": 0.3})
    with pytest.raises(RegistrationError, match="no metric 'qwk'.*val_loss"):
        register_model("fundus", run_id, registered_model=model_name)


def test_unknown_run_is_a_user_error(stack, model_name):
    with pytest.raises(RegistrationError, match="no MLflow run"):
        register_model("oct", "0" * 32, registered_model=model_name)


def test_registered_version_downloads_as_model_dir(stack, log_model_run, model_name, tmp_path):
    import mlflow

    result = register_model("oct", log_model_run({"test_accuracy": 0.7}), registered_model=model_name)
    local = mlflow.artifacts.download_artifacts(
        f"models:/{model_name}/{result.version}", dst_path=str(tmp_path)
    )
    names = sorted(p.name for p in Path(local).iterdir())
    assert {"model.keras", "retina_model.json"} <= set(names)
