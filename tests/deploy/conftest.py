"""Fixtures for deploy tests: registered versions of a tiny real Keras model, and a model repository."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

IMAGE_SIZE = 32


def write_tiny_model_dir(out: Path, num_classes: int = 4, seed: int = 0) -> Path:
    """A real Keras model in the trained-model contract: model.keras + retina_model.json, softmax head."""
    import keras

    from components.common.config import CLASS_NAMES

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(num_classes, activation=None)(x)
    outputs = keras.layers.Softmax(name="probabilities")(x)
    model = keras.Model(inputs, outputs, name="tiny_oct")
    out.mkdir(parents=True, exist_ok=True)
    model.save(str(out / "model.keras"))
    names = CLASS_NAMES["oct"] if num_classes == 4 else [f"class_{i}" for i in range(num_classes)]
    info = {
        "modality": "oct",
        "model_name": "tiny_oct",
        "class_names": names,
        "image_size": IMAGE_SIZE,
        "head": "softmax",
        "thresholds": None,
        "preprocessing": {"modality": "oct", "image_size": IMAGE_SIZE},
        "code_version": "test",
        "run_id": "",
    }
    (out / "retina_model.json").write_text(json.dumps(info))
    return out


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model_dir(tmp_path_factory.mktemp("tiny-model") / "model")


@pytest.fixture
def make_model_dir() -> Callable[..., Path]:
    """`write_tiny_model_dir` for tests that need a model of another shape."""
    return write_tiny_model_dir


@pytest.fixture
def model_name() -> str:
    """A registered-model (and served-model) name of its own per test."""
    return f"retina-oct-deploy-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def register_version(stack, tiny_model_dir: Path, model_name: str) -> Callable[..., str]:
    """Log the tiny model on a new run and register it under `model_name`; returns the version."""
    import mlflow

    from components.register.registry import register_model

    def register(accuracy: float = 0.7, model_dir: Path | None = None) -> str:
        mlflow.set_tracking_uri(stack.mlflow_uri)
        mlflow.set_experiment("retina-deploy-tests")
        with mlflow.start_run() as run:
            mlflow.log_metric("test_accuracy", accuracy)
            mlflow.log_artifacts(str(model_dir or tiny_model_dir), artifact_path="model")
        return register_model("oct", run.info.run_id, registered_model=model_name).version

    return register


@pytest.fixture
def register_challenger_version(stack, tiny_model_dir: Path, model_name: str) -> Callable[..., str]:
    """Log a tiny model on a new run and register it as `challenger` only (the gates decide `champion`)."""
    import mlflow

    from components.register.registry import register_challenger

    def register(model_dir: Path | None = None) -> str:
        mlflow.set_tracking_uri(stack.mlflow_uri)
        mlflow.set_experiment("retina-deploy-tests")
        with mlflow.start_run() as run:
            mlflow.log_artifacts(str(model_dir or tiny_model_dir), artifact_path="model")
        return register_challenger("oct", run.info.run_id, registered_model=model_name).version

    return register


@pytest.fixture
def exported(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """`exported(model_dir)` -> a local SavedModel folder of that model directory (one per call)."""
    from components.deploy.deployment import export_local

    def export(model_dir: Path) -> Path:
        return export_local(model_dir, tmp_path_factory.mktemp("export"))

    return export
