"""Serving fixtures: a tiny Keras model exported into a local TF Serving repository, and a running server.

TensorFlow is loaded once; the exported repository is session-scoped and servers are module-scoped
(bound to 127.0.0.1 on a free port and stopped by the fixture).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

IMAGE_SIZE = 48
# TF Serving's own example model, its version folder named as in TF Serving's test data
HALF_PLUS_TWO = Path(__file__).parent / "tfserving_testdata" / "saved_model_half_plus_two_cpu" / "00000123"


def good_model(folder: Path) -> Path:
    """A loadable version folder: a copy of HALF_PLUS_TWO."""
    shutil.copytree(HALF_PLUS_TWO, folder)
    return folder


def broken_model(folder: Path) -> Path:
    """A version folder whose saved_model.pb does not parse (the load fails every time)."""
    folder.mkdir(parents=True)
    (folder / "saved_model.pb").write_bytes(b"not a saved model")
    return folder

MODEL_NAME = "retina-fundus"
FUNDUS_CLASSES = ["No DR", "Mild", "Moderate", "Severe", "Proliferative"]


def build_tiny_model(image_size: int = IMAGE_SIZE, num_classes: int = 5, seed: int = 0, head: str = "softmax") -> Any:
    """A few convolutions + Dense(activation=None) + Softmax named `probabilities` (the model-dir contract).

    The parity test checks the model separates the test images by more than the two preprocessing paths
    differ, so agreement is not an artefact of a model that ignores its input.
    """
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((image_size, image_size, 3), name="images")
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(inputs)
    x = keras.layers.Conv2D(16, 3, strides=2, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    init = keras.initializers.RandomNormal(stddev=2.0, seed=seed)
    if head == "regression":
        out = keras.layers.Dense(1, activation=None, kernel_initializer=init, name="grade")(x)
        return keras.Model(inputs, out)
    logits = keras.layers.Dense(num_classes, activation=None, kernel_initializer=init, name="logits")(x)
    return keras.Model(inputs, keras.layers.Softmax(name="probabilities")(logits))


def model_info(image_size: int = IMAGE_SIZE, modality: str = "fundus", head: str = "softmax") -> dict[str, Any]:
    from components.preprocess.ops import PreprocessParams

    names = FUNDUS_CLASSES if modality == "fundus" else ["NORMAL", "CNV", "DME", "DRUSEN"]
    return {
        "modality": modality,
        "model_name": "tiny",
        "class_names": names,
        "image_size": image_size,
        "head": head,
        "thresholds": [0.5, 1.5, 2.5, 3.5] if head == "regression" else None,
        "preprocessing": PreprocessParams(modality=modality, image_size=image_size).to_dict(),
    }


def encode(image: np.ndarray, ext: str = ".jpg") -> bytes:
    bgr = image[..., ::-1] if image.ndim == 3 else image
    return cv2.imencode(ext, np.ascontiguousarray(bgr), [cv2.IMWRITE_JPEG_QUALITY, 95] if ext == ".jpg" else [])[1].tobytes()


def fundus_images() -> dict[str, bytes]:
    """The real skimage retina (JPEG and PNG) and synthetic fundus photos of several grades."""
    import skimage.data

    from infra.local.synthetic import render_fundus

    real = skimage.data.retina()
    images = {"retina.jpg": encode(real), "retina.png": encode(real, ".png")}
    rng = np.random.default_rng(7)
    for grade in (0, 2, 4):
        images[f"synthetic-{grade}.jpg"] = encode(render_fundus(grade, rng, size=320)[0])
    return images


@pytest.fixture(scope="session")
def tiny_models() -> dict[int, tuple[Any, dict[str, Any]]]:
    """Two versions of the model (different seeds), so a swap is visible in the outputs."""
    return {1: (build_tiny_model(seed=1), model_info()), 2: (build_tiny_model(seed=2), model_info())}


@pytest.fixture(scope="session")
def export_cache(tmp_path_factory: pytest.TempPathFactory, tiny_models: dict) -> dict[int, Path]:
    """Each version exported once per session; tests copy them into their own repositories."""
    from serving.export import export_saved_model

    root = tmp_path_factory.mktemp("exports")
    return {v: export_saved_model(m, info, root / str(v)) for v, (m, info) in tiny_models.items()}


def install_version(export_cache: dict[int, Path], repository: Path, version: int, source: int | None = None,
                    model_name: str = MODEL_NAME) -> Path:
    """Copy an exported version into `<repository>/<model>/<version>/`, atomically (copy aside, rename)."""
    target = repository / model_name / str(version)
    staging = repository / model_name / f".{version}.staging"
    shutil.copytree(export_cache[source or version], staging)
    staging.rename(target)
    return target


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory, export_cache: dict[int, Path]) -> Path:
    repo = tmp_path_factory.mktemp("serving-repo")
    install_version(export_cache, repo, 1)
    return repo


@pytest.fixture(scope="module")
def server(repository: Path) -> Iterator[Any]:
    import socket

    from serving.server import start_server

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        rest_port = s.getsockname()[1]
    running = start_server(model_base_path=str(repository / MODEL_NAME), model_name=MODEL_NAME, port=0,
                           poll_interval_s=0.5, max_batch_size=8, rest_api_port=rest_port)
    try:
        yield running
    finally:
        running.stop(grace=2.0)
