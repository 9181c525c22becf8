"""The whole training pipeline on the kfp local runner against the real local stack, on a tiny synthetic set;
then the promoted model served by the detached model server and queried over gRPC with the real retina.jpg."""

from __future__ import annotations

from pathlib import Path

import pytest

from components.common import storage


@pytest.fixture(scope="module")
def trained(stack, tmp_path_factory: pytest.TempPathFactory) -> dict:
    from infra.local.synthetic import write_fundus_dataset
    from pipelines.local import run_local

    work = tmp_path_factory.mktemp("training-local")
    raw = "s3://raw/test-pipeline/fundus"
    write_fundus_dataset(raw, n=40, seed=3, size=128, balance=True)
    outputs = run_local(
        "training",
        {
            "modality": "fundus",
            "raw_data_uri": raw,
            "datasets_uri": "s3://datasets/test-pipeline",
            "models_uri": "s3://models/test-pipeline",
            "image_size": 64,
            "model_name": "deepsense",
            "model_width": 0.25,
            "epochs": 1,
            "batch_size": 8,
            "gpu_count": 0,
            "serving_base_uri": str(work / "serving"),
            "server_base_path": "",
            "reports_uri": "s3://reports/test-pipeline",
            "explain_images": 2,
            "explain_methods": "gradcam",
        },
        work / "pipeline-root",
    )
    return {"outputs": outputs, "work": work}


@pytest.mark.slow
@pytest.mark.stack
def test_training_pipeline_runs_every_step_locally(trained) -> None:
    out, work = trained["outputs"], trained["work"]
    assert 0.0 <= out["accuracy"] <= 1.0
    assert out["model_name"] == "retina-fundus" and out["version"].isdigit()
    deployed = work / "serving" / "retina-fundus"
    # deploy ran exactly when the gate promoted the new version
    assert deployed.is_dir() == bool(out["promoted"])
    assert storage.exists(storage.join(out["report_uri"], "index.html"))
    assert out["report_uri"].startswith("s3://reports/test-pipeline/retina-fundus/")


@pytest.mark.slow
@pytest.mark.stack
def test_detached_model_server_serves_the_champion_and_stops(trained, tmp_path: Path) -> None:
    from infra.local.demo import _predict_retina
    from infra.local.samples import write_samples
    from infra.local.stack import model_server_status, start_model_server, stop_model_server

    config = trained["work"] / "serving" / "models.config"
    if not config.is_file():
        pytest.skip("the gate kept an earlier champion in this MLflow; nothing was deployed here")
    samples = str(tmp_path / "samples")
    write_samples(samples)
    home = tmp_path / "home"
    server = start_model_server(config, home)
    try:
        assert model_server_status(home)["pid"] == server["pid"]
        label, prob = _predict_retina(server["address"], samples)
        assert 0.0 < prob <= 1.0 and isinstance(label, str)
        assert start_model_server(config, home)["reused"] is True
    finally:
        assert stop_model_server(home) is True
    assert model_server_status(home) is None
    assert stop_model_server(home) is False
