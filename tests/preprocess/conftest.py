"""Fixtures for preprocessing tests: small real and synthetic images, and tiny raw datasets on disk."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest


def jpeg(rgb: np.ndarray, quality: int = 92) -> bytes:
    ok, buf = cv2.imencode(".jpg", rgb[..., ::-1] if rgb.ndim == 3 else rgb, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return buf.tobytes()


def png(image: np.ndarray) -> bytes:
    if image.ndim == 3 and image.shape[2] == 3:
        image = image[..., ::-1]
    elif image.ndim == 3 and image.shape[2] == 4:
        image = image[..., [2, 1, 0, 3]]
    ok, buf = cv2.imencode(".png", image)
    assert ok
    return buf.tobytes()


def fundus_on_black(size: tuple[int, int], centre: tuple[float, float], radius: float, seed: int = 0) -> np.ndarray:
    """An orange retina disc with a few dark vessels on black, at a chosen (possibly clipped) position."""
    h, w = size
    rng = np.random.default_rng(seed)
    img = np.zeros((h, w, 3), np.uint8)
    cv2.circle(img, (round(centre[0] * 16), round(centre[1] * 16)), round(radius * 16), (190, 90, 40), -1,
               cv2.LINE_AA, shift=4)
    for _ in range(6):
        a, b = rng.uniform(0, 2 * np.pi, 2)
        p = (int(centre[0] + 0.8 * radius * np.cos(a)), int(centre[1] + 0.8 * radius * np.sin(a)))
        q = (int(centre[0] + 0.8 * radius * np.cos(b)), int(centre[1] + 0.8 * radius * np.sin(b)))
        cv2.line(img, p, q, (120, 30, 20), max(1, int(radius / 60)))
    inside = img.max(axis=2) > 0
    noise = rng.normal(0, 4, img.shape)
    img = np.where(inside[..., None], np.clip(img + noise, 1, 255), 0).astype(np.uint8)
    return img


@pytest.fixture(scope="session")
def retina_rgb() -> np.ndarray:
    from skimage import data

    return data.retina()


@pytest.fixture(scope="session")
def fundus_raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic EyePACS-layout set (256 px, 10 images, lesion masks beside)."""
    from infra.local.synthetic import write_fundus_dataset

    root = tmp_path_factory.mktemp("fundus-raw")
    write_fundus_dataset(str(root), n=10, seed=3, size=256)
    return root


@pytest.fixture(scope="session")
def draw_fundus():
    """`draw_fundus(frame (h, w), centre (x, y), radius, seed=0)` -> RGB photo (helpers are fixtures: the
    tests run with --import-mode=importlib, where conftest cannot be imported by name)."""
    return fundus_on_black


@pytest.fixture(scope="session")
def encode():
    """`encode.jpeg(rgb)`, `encode.png(image)`."""
    from types import SimpleNamespace

    return SimpleNamespace(jpeg=jpeg, png=png)
