"""Fixtures for registry tests: MLflow runs that logged a tiny model directory the way train does."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest


def _write_tiny_model_dir(out: Path, image_size: int = 32) -> Path:
    """A real Keras model in the trained-model contract: model.keras + retina_model.json, softmax head."""
    import keras

    from components.common.config import CLASS_NAMES

    inputs = keras.Input((image_size, image_size, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(len(CLASS_NAMES["oct"]), activation=None)(x)
    outputs = keras.layers.Softmax(name="probabilities")(x)
    model = keras.Model(inputs, outputs, name="tiny_oct")
    out.mkdir(parents=True, exist_ok=True)
    model.save(str(out / "model.keras"))
    info = {
        "modality": "oct",
        "model_name": "tiny_oct",
        "class_names": CLASS_NAMES["oct"],
        "image_size": image_size,
        "head": "softmax",
        "thresholds": None,
        "preprocessing": {},
        "code_version": "test",
        "run_id": "",
    }
    (out / "retina_model.json").write_text(json.dumps(info))
    return out


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_tiny_model_dir(tmp_path_factory.mktemp("tiny-model") / "model")


@pytest.fixture
def log_model_run(stack, tiny_model_dir: Path) -> Callable[..., str]:
    """Log the tiny model as artifact `model` of a new run with the given metrics; returns the run id."""
    import mlflow

    def log(metrics: dict[str, float], params: dict[str, str] | None = None) -> str:
        mlflow.set_tracking_uri(stack.mlflow_uri)
        mlflow.set_experiment("retina-register-tests")
        with mlflow.start_run() as run:
            mlflow.log_metrics(metrics)
            if params:
                mlflow.log_params(params)
            mlflow.log_artifacts(str(tiny_model_dir), artifact_path="model")
        return run.info.run_id

    return log


@pytest.fixture
def model_name() -> str:
    """A registered-model name of its own per test, so champion state never leaks between tests."""
    return f"retina-oct-test-{uuid.uuid4().hex[:8]}"
