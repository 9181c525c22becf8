"""Fixtures for explanation tests: planted-lesion images and a small CNN trained to find the lesion.

The data: grey textured background; class 1 images carry one bright blob (the "lesion", with its
mask), class 0 images none. A model can only tell them apart by looking at the blob, so a faithful
CAM must point at it — a ground truth no real dataset here offers.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

IMAGE_SIZE = 64


def planted_lesions(n: int, seed: int, size: int = IMAGE_SIZE, positive_fraction: float = 0.5):
    """(images float32 [n,S,S,3] in [0,1], labels [n], masks uint8 [n,S,S] 255 = lesion)."""
    import cv2

    rng = np.random.default_rng(seed)
    images = np.empty((n, size, size, 3), np.float32)
    masks = np.zeros((n, size, size), np.uint8)
    labels = (rng.random(n) < positive_fraction).astype(np.int64)
    for i in range(n):
        base = rng.uniform(0.25, 0.45) + 0.06 * rng.standard_normal((size, size, 1))
        tint = rng.uniform(0.9, 1.1, size=(1, 1, 3))
        img = np.clip(base * tint, 0, 1).astype(np.float32)
        if labels[i]:
            r = int(rng.integers(size // 14, size // 9 + 1))
            cy, cx = (int(v) for v in rng.integers(r + 2, size - r - 2, size=2))
            cv2.circle(masks[i], (cx, cy), r, 255, -1)
            lesion = masks[i] > 0
            img[lesion] = np.clip(img[lesion] + rng.uniform(0.35, 0.5), 0, 1)
        images[i] = img
    return images, labels, masks


def small_cnn(size: int = IMAGE_SIZE, num_classes: int = 2, seed: int = 0):
    import keras
    from keras import layers

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((size, size, 3), name="image")
    x = layers.Conv2D(16, 3, padding="same", activation="relu", name="conv1")(inputs)
    x = layers.Conv2D(16, 3, padding="same", activation="relu", name="conv2")(x)
    x = layers.MaxPooling2D(2, name="pool1")(x)
    x = layers.Conv2D(32, 3, padding="same", activation="relu", name="conv3")(x)
    x = layers.Conv2D(32, 3, padding="same", activation="relu", name="conv4")(x)
    x = layers.GlobalMaxPooling2D(name="global_max")(x)
    x = layers.Dense(num_classes, activation=None, name="logits")(x)
    outputs = layers.Softmax(name="probabilities")(x)
    return keras.Model(inputs, outputs, name="planted_cnn")


@pytest.fixture(scope="session")
def trained_model():
    """Small CNN trained on planted-lesion data (fixed seeds; ~10-20 s on 2 cores)."""
    import keras

    images, labels, _ = planted_lesions(768, seed=1)
    model = small_cnn()
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(images, labels, batch_size=32, epochs=6, verbose=0, shuffle=True)
    test_x, test_y, _ = planted_lesions(128, seed=99)
    accuracy = float((model.predict(test_x, verbose=0).argmax(-1) == test_y).mean())
    assert accuracy > 0.9, f"planted-lesion model did not learn (accuracy {accuracy:.2f})"
    return model


@pytest.fixture(scope="session")
def trained_model_dir(trained_model, tmp_path_factory) -> Path:
    """The trained model in the model-directory contract (model.keras + retina_model.json)."""
    out = tmp_path_factory.mktemp("planted-model") / "model"
    out.mkdir()
    trained_model.save(str(out / "model.keras"))
    info = {"modality": "fundus", "model_name": "planted_cnn", "class_names": ["no lesion", "lesion"],
            "image_size": IMAGE_SIZE, "head": "softmax", "thresholds": None, "preprocessing": {},
            "code_version": "test", "run_id": "0123456789abcdef"}
    (out / "retina_model.json").write_text(json.dumps(info))
    return out


@pytest.fixture(scope="session")
def planted_folder(tmp_path_factory) -> Path:
    """A raw image folder: planted-lesion PNGs with masks/<id>.png, one real fundus image, one broken
    file and one whose name contains HTML."""
    import cv2
    from skimage import data

    root = tmp_path_factory.mktemp("planted-images")
    (root / "masks").mkdir()
    images, labels, masks = planted_lesions(6, seed=7, positive_fraction=1.0)
    for i, (img, mask) in enumerate(zip(images, masks, strict=True)):
        name = f"lesion_{i}"
        cv2.imwrite(str(root / f"{name}.png"), cv2.cvtColor((img * 255).astype(np.uint8), cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(root / "masks" / f"{name}.png"), mask)
    cv2.imwrite(str(root / "retina.jpg"), cv2.cvtColor(data.retina(), cv2.COLOR_RGB2BGR))
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    evil = images[0]
    cv2.imwrite(str(root / "x.png"), cv2.cvtColor((evil * 255).astype(np.uint8), cv2.COLOR_RGB2BGR))
    (root / "x.png").rename(root / "<script>alert(1)<.png")
    return root
