"""Explanation drift: how differently the challenger and the champion look at the same images.

Measured as the mean SSIM of their Grad-CAMs on the first held-out images of this run's dataset, both
maps computed for the *challenger's* predicted class (so a change of prediction does not pass for a change
of explanation). 1.0 = the same evidence; near 0 = unrelated maps. Recorded with every promotion so a
retrained model that is "as accurate" but looks somewhere else is visible before it takes traffic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Drift:
    mean_ssim: float
    per_image: tuple[float, ...]
    count: int


def held_out_images(data_uri: str, modality: str, image_size: int, count: int, split: str = "test") -> np.ndarray:
    """The first `count` images of `split` as the model sees them ([N, S, S, 3] float32 in [0, 1])."""
    from components.common import shards as data

    root = data.stage_dataset(data_uri)
    dataset = data.make_dataset(data.split_shards(root, split, data.read_manifest(data_uri)), modality,
                                image_size, batch_size=max(1, count))
    for images, _labels, *_ in dataset.take(1):
        return np.asarray(images, dtype=np.float32)[:count]
    return np.zeros((0, image_size, image_size, 3), np.float32)


def _resize(cams: np.ndarray, size: int) -> np.ndarray:
    import cv2

    if cams.shape[1] == size:
        return cams
    return np.stack([cv2.resize(c, (size, size), interpolation=cv2.INTER_LINEAR) for c in cams])


def gradcam_drift(challenger: tuple[Any, Any], champion: tuple[Any, Any], data_uri: str, count: int = 8,
                  split: str = "test") -> Drift:
    """Mean SSIM between the two models' Grad-CAMs; each `(keras model, ModelInfo)` gets its own input size."""
    from components.explain.cam import compute_cams
    from components.explain.faithfulness import ssim_per_image

    (model_a, info_a), (model_b, info_b) = challenger, champion
    x_a = held_out_images(data_uri, info_a.modality, int(info_a.image_size), count, split)
    if len(x_a) == 0:
        return Drift(float("nan"), (), 0)
    x_b = x_a if int(info_b.image_size) == int(info_a.image_size) else held_out_images(
        data_uri, info_b.modality, int(info_b.image_size), count, split)
    cam_a = compute_cams(model_a, x_a, ["gradcam"])["gradcam"]
    cam_b = compute_cams(model_b, x_b, ["gradcam"], targets=cam_a.targets)["gradcam"]
    maps_b = _resize(np.asarray(cam_b.cams, np.float32), cam_a.cams.shape[1])
    ssim = ssim_per_image(np.asarray(cam_a.cams, np.float32), maps_b)
    return Drift(float(np.mean(ssim)), tuple(float(s) for s in ssim), len(ssim))
