"""End to end through real shards on the local S3 and a real MLflow server: the models learn, runs are tracked.

The data is the project's synthetic generator run through the real Beam preprocessing. Thresholds
(OCT accuracy >= 0.8, DR QWK >= 0.6) hold with margin on these fixed seeds (measured: OCT 1.0, DR QWK 0.94);
data, shuffling and augmentation are all seeded.
"""

from __future__ import annotations

import uuid

import pytest

from components.common import storage

pytestmark = [pytest.mark.slow, pytest.mark.stack]


def _prepare(tmp_path_factory, modality: str, n: int, size: int) -> str:
    """Synthetic raw set (foundation generator) -> real Beam preprocessing -> shards uploaded to the local S3."""
    from components.preprocess.ops import PreprocessParams
    from components.preprocess.pipeline import run_preprocess
    from infra.local.synthetic import write_fundus_dataset, write_oct_dataset

    work = tmp_path_factory.mktemp(f"{modality}-learn")
    writer = write_oct_dataset if modality == "oct" else write_fundus_dataset
    writer(str(work / "raw"), n, seed=5, size=2 * size, balance=True)
    run_preprocess(modality, str(work / "raw"), str(work / "shards"),
                   params=PreprocessParams(modality=modality, image_size=size),
                   val_fraction=0.2, test_fraction=0.2, seed=0, images_per_shard=100)
    uri = f"s3://datasets/test-{modality}-{uuid.uuid4().hex[:8]}"
    storage.upload_dir(work / "shards", uri)
    return uri


@pytest.fixture(scope="module")
def oct_s3_data(stack, tmp_path_factory):
    return _prepare(tmp_path_factory, "oct", 300, 48)


@pytest.fixture(scope="module")
def fundus_s3_data(stack, tmp_path_factory):
    return _prepare(tmp_path_factory, "fundus", 300, 64)


def test_oct_model_learns_and_run_is_fully_tracked(stack, oct_s3_data, tmp_path):
    from mlflow.tracking import MlflowClient

    from components.evaluate.evaluation import evaluate_step
    from components.train.training import TrainConfig, train

    out = f"s3://models/test-oct-{uuid.uuid4().hex[:8]}"
    lines: list[str] = []
    result = train(TrainConfig(modality="oct", data_uri=oct_s3_data, model_name="oct_cnn", image_size=48,
                               epochs=6, batch_size=16, width=0.5, output_uri=out, mlflow_experiment="test-train",
                               checkpoint_uri=f"s3://models/_checkpoints/{uuid.uuid4().hex[:8]}",
                               cache_dir=str(tmp_path / "cache")), progress=lines.append)
    assert sum(ln.startswith("epoch ") for ln in lines) == result.epochs_run
    client = MlflowClient()
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["model_name"] == "oct_cnn" and run.data.params["image_size"] == "48"
    assert "DRUSEN" in run.data.params["class_names"]
    assert len(client.get_metric_history(result.run_id, "val_loss")) == result.epochs_run
    artifacts = {a.path for a in client.list_artifacts(result.run_id)}
    assert {"model", "dataset", "class_names.json"} <= artifacts
    assert {a.path for a in client.list_artifacts(result.run_id, "model")} >= {"model/model.keras",
                                                                                 "model/retina_model.json"}
    assert storage.is_published(out) and result.model_uri == out

    accuracy, qwk = evaluate_step("oct", oct_s3_data, f"runs:/{result.run_id}/model")
    assert accuracy >= 0.8, accuracy
    run = client.get_run(result.run_id)
    assert run.data.metrics["test_accuracy"] == pytest.approx(accuracy)  # logged into the training run
    assert run.info.status == "FINISHED"


def test_dr_model_reaches_qwk(stack, fundus_s3_data, tmp_path):
    from components.evaluate.evaluation import evaluate_model
    from components.train.training import TrainConfig, train

    result = train(TrainConfig(modality="fundus", data_uri=fundus_s3_data, model_name="deepsense", image_size=64,
                               epochs=10, batch_size=16, width=0.25, learning_rate=2e-3, head="regression",
                               patience=10, mlflow_experiment="test-train", cache_dir=str(tmp_path / "cache")))
    assert result.model_uri == f"runs:/{result.run_id}/model"
    evaluation = evaluate_model(result.model_uri, fundus_s3_data, "fundus")
    assert evaluation.qwk >= 0.6, evaluation.qwk


def test_failed_run_is_marked_failed_without_model(stack, oct_s3_data, tmp_path):
    import keras
    import mlflow
    from mlflow.tracking import MlflowClient

    from components.train.training import TrainConfig, train

    class Crash(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            raise RuntimeError("node lost")

    out = f"s3://models/test-failed-{uuid.uuid4().hex[:8]}"
    experiment = f"test-failed-{uuid.uuid4().hex[:6]}"
    with pytest.raises(RuntimeError, match="node lost"):
        train(TrainConfig(modality="oct", data_uri=oct_s3_data, model_name="oct_cnn", image_size=32, epochs=2,
                          batch_size=32, width=0.25, output_uri=out, mlflow_experiment=experiment,
                          cache_dir=str(tmp_path / "cache"), callbacks=[Crash()]))
    runs = mlflow.search_runs(experiment_names=[experiment], output_format="list")
    assert len(runs) == 1 and runs[0].info.status == "FAILED"
    assert "model" not in {a.path for a in MlflowClient().list_artifacts(runs[0].info.run_id)}
    assert not storage.exists(out)


def test_load_model_from_s3_runs_and_registry(stack, oct_s3_data, tmp_path):
    from mlflow.tracking import MlflowClient

    from components.common.model_store import load_model
    from components.train.training import TrainConfig, train

    out = f"s3://models/test-load-{uuid.uuid4().hex[:8]}"
    result = train(TrainConfig(modality="oct", data_uri=oct_s3_data, model_name="oct_cnn", image_size=32, epochs=1,
                               batch_size=32, width=0.25, output_uri=out, mlflow_experiment="test-train",
                               cache_dir=str(tmp_path / "cache")))
    client = MlflowClient()
    name = f"test-retina-oct-{uuid.uuid4().hex[:6]}"
    client.create_registered_model(name)
    version = client.create_model_version(name, source=f"runs:/{result.run_id}/model", run_id=result.run_id)
    client.set_registered_model_alias(name, "challenger", version.version)
    for uri in (out, f"runs:/{result.run_id}/model", f"models:/{name}@challenger", f"models:/{name}/{version.version}"):
        model, info = load_model(uri)
        assert info.run_id == result.run_id and info.class_names[0] == "NORMAL", uri
        assert model.output_shape == (None, 4)
    keras_file = tmp_path / "bare.keras"
    model.save(str(keras_file))
    storage.copy(str(keras_file), f"{out}-bare/bare.keras")
    bare, info = load_model(f"{out}-bare/bare.keras", modality="oct")
    assert info.image_size == 32 and info.class_names == ["NORMAL", "CNV", "DME", "DRUSEN"]
    _, info = load_model(str(keras_file))
    assert info.class_names == ["class_0", "class_1", "class_2", "class_3"]
