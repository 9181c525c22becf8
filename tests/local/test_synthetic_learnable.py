"""The synthetic sets must be learnable at small sizes, or every training/explanation test downstream is moot."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from infra.local.synthetic import render_fundus, render_oct


def _dataset(modality: str, n: int, px: int) -> tuple[np.ndarray, np.ndarray]:
    classes = 5 if modality == "fundus" else 4
    images, labels = [], []
    for i in range(n):
        label = i % classes
        rng = np.random.default_rng([99, i])
        if modality == "fundus":
            img, _ = render_fundus(label, rng, size=192)
            off = (img.shape[1] - img.shape[0]) // 2
            img = img[:, off : off + img.shape[0]]
        else:
            gray, _ = render_oct(label, rng, size=192)
            img = np.repeat(gray[..., None], 3, axis=2)
        images.append(cv2.resize(img, (px, px), interpolation=cv2.INTER_AREA))
        labels.append(label)
    return np.asarray(images, np.float32) / 255.0, np.asarray(labels)


def _fit_small_cnn(x: np.ndarray, y: np.ndarray, classes: int, epochs: int):
    import keras

    keras.utils.set_random_seed(0)
    layers = [keras.Input(x.shape[1:])]
    for filters in (16, 32, 64):
        layers += [
            keras.layers.Conv2D(filters, 3, padding="same", activation="relu"),
            keras.layers.MaxPool2D(),
        ]
    layers += [keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(classes, activation="softmax")]
    model = keras.Sequential(layers)
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(x, y, epochs=epochs, batch_size=32, verbose=0)
    return model


@pytest.mark.slow
@pytest.mark.parametrize(("modality", "px", "epochs"), [("fundus", 96, 15), ("oct", 64, 40)])
def test_small_cnn_learns_the_class_from_synthetic_images(modality, px, epochs):
    from sklearn.metrics import cohen_kappa_score

    x, y = _dataset(modality, 400, px)
    classes = int(y.max()) + 1
    model = _fit_small_cnn(x[:320], y[:320], classes, epochs)
    pred = model.predict(x[320:], verbose=0).argmax(axis=1)
    if modality == "fundus":
        assert cohen_kappa_score(y[320:], pred, weights="quadratic") >= 0.6
    else:
        assert (pred == y[320:]).mean() >= 0.8
