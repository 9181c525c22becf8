"""Occlusion and RISE from predictions only: a numpy 'model' whose evidence region is known.

The model's probability of class 1 rises with the brightness of one square region; a faithful map
must peak inside it. TF-free and fast; the served-model tests are in test_served.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from components.common.errors import RetinaError
from components.explain.perturbation import (
    PerturbationConfig,
    agreement,
    explain_with_predictions,
    occlusion_boxes,
    parse_methods,
    rise_masks,
)

SIZE = 48
REGION = (slice(30, 40), slice(8, 18))  # rows, columns


class RegionModel:
    """p(class 1) = sigmoid(12 * (mean brightness in REGION - 0.55)); counts the images it saw."""

    def __init__(self):
        self.seen = 0
        self.calls = 0

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.seen += len(batch)
        self.calls += 1
        z = 12.0 * (batch[:, REGION[0], REGION[1], :].mean(axis=(1, 2, 3)) - 0.55)
        p1 = 1.0 / (1.0 + np.exp(-z))
        return np.stack([1.0 - p1, p1], axis=-1).astype(np.float32)


def _images(n: int = 3) -> np.ndarray:
    rng = np.random.default_rng(0)
    images = np.clip(0.35 + 0.05 * rng.standard_normal((n, SIZE, SIZE, 3)), 0, 1).astype(np.float32)
    images[:, REGION[0], REGION[1], :] = 0.95  # bright evidence: class 1
    return images


@pytest.mark.parametrize("method", ["occlusion", "rise"])
def test_map_peaks_in_the_evidence_region(method):
    model = RegionModel()
    result = explain_with_predictions(model, _images(), [method], config=PerturbationConfig(masks=256))[method]
    assert (result.targets == 1).all()
    assert result.cams.shape == (3, SIZE, SIZE) and result.cams.min() >= 0 and result.cams.max() <= 1
    inside = np.zeros((SIZE, SIZE), bool)
    inside[REGION] = True
    for cam in result.cams:
        y, x = np.unravel_index(int(np.argmax(cam)), cam.shape)
        grown = np.zeros_like(inside)
        grown[REGION[0].start - 3 : REGION[0].stop + 3, REGION[1].start - 3 : REGION[1].stop + 3] = True
        assert grown[y, x], (method, y, x)
        assert cam[inside].mean() > 2 * cam[~grown].mean()


def test_every_perturbed_image_is_sent_in_batches_of_the_configured_size():
    config = PerturbationConfig(masks=50, batch_size=16)
    model = RegionModel()
    results = explain_with_predictions(model, _images(2), ["occlusion", "rise"], config=config)
    boxes = len(occlusion_boxes(SIZE, config.window, config.stride))
    assert results["occlusion"].forward_passes == 2 * boxes
    assert results["rise"].forward_passes == 2 * 50
    assert model.seen == 2 + 2 * boxes + 2 * 50
    assert model.calls == 1 + -(-2 * boxes // 16) + -(-100 // 16)


def test_batch_size_does_not_change_the_maps():
    a = explain_with_predictions(RegionModel(), _images(2), config=PerturbationConfig(masks=40, batch_size=7))
    b = explain_with_predictions(RegionModel(), _images(2), config=PerturbationConfig(masks=40, batch_size=64))
    for m in a:
        np.testing.assert_allclose(a[m].cams, b[m].cams, atol=1e-5)


def test_explicit_target_class_is_explained():
    """Class 0 is what the region argues against: RISE's map of class 0 is coldest there; occlusion, which
    keeps only drops, finds nothing that supports class 0 and returns a flat zero map."""
    res = explain_with_predictions(RegionModel(), _images(1), ["rise", "occlusion"], targets=[0])
    assert res["rise"].targets.tolist() == [0]
    assert res["rise"].cams[0][REGION].mean() < 0.5 * res["rise"].cams[0].mean()
    assert not res["occlusion"].cams.any()


def test_occlusion_boxes_cover_the_whole_image():
    boxes = occlusion_boxes(50, 0.2, 0.15)
    covered = np.zeros((50, 50), bool)
    for y, x, side in boxes:
        covered[y : y + side, x : x + side] = True
    assert covered.all()


def test_rise_masks_are_reproducible_soft_and_keep_about_the_fraction():
    config = PerturbationConfig(masks=64, cells=6, keep=0.3, seed=3)
    a, b = rise_masks(40, config), rise_masks(40, config)
    assert a.shape == (64, 40, 40) and (a == b).all()
    assert 0.2 < a.mean() < 0.4 and 0 <= a.min() and a.max() <= 1
    assert len(np.unique(a)) > 10  # bilinear upsampling: soft edges, not blocks


def test_agreement_of_identical_inverted_and_unrelated_maps():
    rng = np.random.default_rng(0)
    maps = _images(2)[..., 0]
    same = agreement(maps, maps)
    assert np.allclose(same["ssim"], 1) and np.allclose(same["spearman"], 1) and (same["peak_agreement"] == 1).all()
    inverted = agreement(maps, 1.0 - maps)
    assert (inverted["spearman"] < -0.9).all() and (inverted["peak_agreement"] == 0).all()
    noise = agreement(maps, rng.random(maps.shape).astype(np.float32))
    assert (np.abs(noise["spearman"]) < 0.2).all()
    with pytest.raises(RetinaError):
        agreement(maps, maps[:, :10])


def test_bad_methods_and_config_are_refused():
    with pytest.raises(RetinaError, match="gradcam"):
        parse_methods("rise,gradcam")
    with pytest.raises(RetinaError):
        PerturbationConfig(keep=1.0)
    with pytest.raises(RetinaError):
        PerturbationConfig(window=0)


class GradedModel:
    """Five ordered grades; the expected grade rises with the brightness of REGION (a DR-like ordinal head)."""

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        mu = 4.0 * batch[:, REGION[0], REGION[1], :].mean(axis=(1, 2, 3))
        logits = -((np.arange(5)[None, :] - mu[:, None]) ** 2)
        e = np.exp(logits - logits.max(-1, keepdims=True))
        return (e / e.sum(-1, keepdims=True)).astype(np.float32)


def test_ordinal_occlusion_is_positive_where_the_image_pushes_the_grade_up():
    images = _images(2)
    images[1, REGION[0], REGION[1], :] = 0.6  # a middle grade
    res = explain_with_predictions(GradedModel(), images, ["occlusion"], ordinal=True)["occlusion"]
    assert res.ordinal is not None and res.ordinal.shape == (2, SIZE, SIZE)
    assert res.targets.tolist()[0] >= 3
    for signed in res.ordinal:
        assert signed[REGION].mean() > 0 and np.abs(signed).max() == pytest.approx(1.0)
        y, x = np.unravel_index(int(np.argmax(signed)), signed.shape)
        assert REGION[0].start - 4 <= y < REGION[0].stop + 4 and REGION[1].start - 4 <= x < REGION[1].stop + 4
        assert np.abs(signed[:10, 30:]).max() < 0.05  # far from the region: no push either way
    two_class = explain_with_predictions(RegionModel(), images, ["occlusion"], ordinal=True)["occlusion"]
    assert two_class.ordinal is None
