"""The `train` component: its contract, its python_func, and a run under the kfp local runner."""

from __future__ import annotations

import os
import uuid

import pytest
from kfp import dsl

from components.common import storage
from components.common.images import GPU_IMAGE


def test_train_component_contract():
    from components.train.component import train

    spec = train.component_spec
    assert spec.implementation.container.image == GPU_IMAGE
    inputs = set(spec.inputs)
    assert {"modality", "data_uri", "model_name", "image_size", "epochs", "batch_size", "output_uri",
            "learning_rate", "head", "mlflow_experiment", "seed"} <= inputs
    assert {"run_id", "model_uri", "model"} <= set(spec.outputs)


def test_evaluate_component_contract():
    from components.evaluate.component import evaluate

    spec = evaluate.component_spec
    assert {"modality", "data_uri", "model_uri", "run_id", "split"} <= set(spec.inputs)
    assert {"accuracy", "qwk", "metrics", "classification_metrics"} <= set(spec.outputs)


def test_default_checkpoint_sits_beside_the_output():
    from components.train.training import default_checkpoint_uri

    assert default_checkpoint_uri("s3://models/oct/run1") == "s3://models/oct/_checkpoints/run1"


@pytest.mark.slow
@pytest.mark.stack
def test_train_python_func_writes_model_artifact(stack, tiny_oct_data, tmp_path):
    from mlflow.tracking import MlflowClient

    from components.train.component import train

    artifact = dsl.Model(name="model", uri=str(tmp_path / "artifact" / "model"))
    out = f"s3://models/test-component-{uuid.uuid4().hex[:8]}"
    result = train.python_func(modality="oct", data_uri=str(tiny_oct_data), model_name="oct_cnn", image_size=32,
                               epochs=1, batch_size=32, output_uri=out, model=artifact, width=0.25,
                               mlflow_experiment="test-component")
    assert result.model_uri == out and storage.is_published(out)
    assert MlflowClient().get_run(result.run_id).info.status == "FINISHED"
    assert (tmp_path / "artifact" / "model" / "model.keras").exists()
    assert artifact.metadata["mlflow_run_id"] == result.run_id
    assert not storage.exists(f"s3://models/_checkpoints/{storage.basename(out)}/backup")


@pytest.mark.slow
@pytest.mark.stack
def test_train_component_under_kfp_local_runner(stack, tiny_oct_data, tmp_path, kfp_local):
    from components.train.component import train

    out = str(tmp_path / "trained")
    task = train(modality="oct", data_uri=str(tiny_oct_data), model_name="oct_cnn", image_size=32, epochs=1,
                 batch_size=32, output_uri=out, width=0.25, mlflow_experiment="test-component")
    assert task.outputs["model_uri"] == out and task.outputs["run_id"]
    assert os.path.exists(os.path.join(task.outputs["model"].path, "retina_model.json"))
