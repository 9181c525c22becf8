"""Training runs end to end on shards; a preempted run resumes from its saved epoch; bad input stops early."""

import json
from pathlib import Path

import pytest

from components.common.errors import DatasetError

pytestmark = pytest.mark.slow


def _config(data, out, **kw):
    from components.train.training import TrainConfig

    base = dict(modality="oct", data_uri=str(data), model_name="oct_cnn", image_size=32, epochs=4,
                batch_size=16, width=0.25, tracking=False, output_uri=str(out))
    base.update(kw)
    return TrainConfig(**base)


def _stop_after(epochs: int):
    import keras

    class Preempted(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch + 1 == epochs:
                raise RuntimeError("simulated preemption")

    return Preempted()


def test_checkpoint_resume_continues_from_saved_epoch(tiny_oct_data, tmp_path):
    from components.common.model_store import load_model
    from components.train.training import train

    ckpt, out = tmp_path / "ckpt", tmp_path / "model"
    with pytest.raises(RuntimeError, match="preemption"):
        train(_config(tiny_oct_data, out, checkpoint_uri=str(ckpt), callbacks=[_stop_after(2)]))
    assert not out.exists()  # nothing half-trained is published
    saved = json.loads((ckpt / "backup" / "training_metadata.json").read_text())
    assert saved["epoch"] == 2  # epochs completed before the interruption

    lines: list[str] = []
    result = train(_config(tiny_oct_data, out, checkpoint_uri=str(ckpt)), progress=lines.append)
    assert result.initial_epoch == 2
    assert result.epochs_run == 2 and len(result.history["loss"]) == 2
    assert [ln.split()[1] for ln in lines if ln.startswith("epoch ")] == ["3/4", "4/4"]
    assert not (ckpt / "backup").exists()  # finished runs leave no checkpoint to resume
    model, info = load_model(str(out))
    assert info.class_names == ["NORMAL", "CNV", "DME", "DRUSEN"] and info.image_size == 32
    assert model.output_shape == (None, 4)


def test_bad_shard_stops_before_any_model(tiny_oct_data, tmp_path, shard_tools):
    import shutil

    import numpy as np

    from components.train.training import train

    data = tmp_path / "data"
    shutil.copytree(tiny_oct_data, data)
    img = shard_tools.draw_oct(1, np.random.default_rng(0), 48)
    bad = data / "val" / "val-00001-of-00002.tfrecord.gz"
    shard_tools.write_shard(bad, [shard_tools.record(img, 9, "x", "p", "oct")])
    with pytest.raises(DatasetError, match="val-00001-of-00002.tfrecord.gz.*label 9"):
        train(_config(data, tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_regression_head_stores_qwk_thresholds(tiny_fundus_data, tmp_path):
    from components.train.training import train

    result = train(_config(tiny_fundus_data, tmp_path / "m", modality="fundus", model_name="deepsense",
                           head="regression", epochs=1))
    info = json.loads(Path(tmp_path / "m" / "retina_model.json").read_text())
    assert info["head"] == "regression" and len(info["thresholds"]) == 4
    assert info["thresholds"] == sorted(info["thresholds"]) == result.info.thresholds


def test_train_cli_prints_epochs_and_reports_bad_input(tiny_oct_data, tmp_path, capsys, monkeypatch):
    from components.cli import main

    monkeypatch.setenv("RETINA_HOME", str(tmp_path / "home"))
    out = tmp_path / "cli-model"
    rc = main(["train", "--modality", "oct", "--data", str(tiny_oct_data), "--model", "oct_cnn", "--image-size", "32",
               "--epochs", "2", "--out", str(out), "--width", "0.25", "--no-mlflow"])
    printed = capsys.readouterr().out
    assert rc == 0 and "epoch 1/2" in printed and "epoch 2/2" in printed and f"model_uri {out}" in printed
    rc = main(["train", "--modality", "oct", "--data", str(tmp_path / "nowhere"), "--out", str(out), "--no-mlflow"])
    assert rc == 2 and "manifest.json" in capsys.readouterr().err


@pytest.mark.stack
def test_checkpoint_on_s3_resumes_after_preemption(stack, tiny_oct_data, tmp_path):
    """The cluster case: the checkpoint lives in the object store, the retried pod starts on a fresh disk."""
    import uuid

    from components.common import storage
    from components.train.training import train

    ckpt = f"s3://models/_checkpoints/test-{uuid.uuid4().hex[:8]}"
    out = tmp_path / "model"
    with pytest.raises(RuntimeError, match="preemption"):
        train(_config(tiny_oct_data, out, checkpoint_uri=ckpt, callbacks=[_stop_after(2)]))
    assert json.loads(storage.read_text(f"{ckpt}/backup/training_metadata.json"))["epoch"] == 2

    result = train(_config(tiny_oct_data, out, checkpoint_uri=ckpt))
    assert result.initial_epoch == 2 and result.epochs_run == 2
    assert not storage.exists(f"{ckpt}/backup/training_metadata.json")  # a finished run is not resumed again


def test_mixed_precision_path_trains_and_restores_the_policy(tiny_oct_data, tmp_path, monkeypatch):
    """What a GPU node runs (float16 compute, float32 variables and head), exercised here on the CPU."""
    import keras
    import numpy as np

    from components.common.model_store import load_model
    from components.train import training

    monkeypatch.setattr(training, "mixed_precision_wanted", lambda: True)
    out = tmp_path / "model"
    result = training.train(_config(tiny_oct_data, out, epochs=1))
    assert keras.mixed_precision.global_policy().name == "float32"  # restored for whatever runs next
    assert np.isfinite(result.history["loss"]).all()
    model, _ = load_model(str(out))
    policies = {layer.dtype_policy.name for layer in model.layers if layer.weights}
    assert "mixed_float16" in policies
    assert model.output.dtype == "float32"  # the softmax head stays float32 for stable probabilities
