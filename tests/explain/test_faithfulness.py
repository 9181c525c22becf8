"""Faithfulness metrics on a transparent stand-in model (numpy only, fast)."""

from __future__ import annotations

import numpy as np
import pytest

from components.explain import faithfulness as faith


def _region_model(region: np.ndarray):
    """P(class 1) = mean brightness inside `region`: only those pixels matter."""

    def predict(x: np.ndarray) -> np.ndarray:
        p1 = (x[..., 0] * region).sum(axis=(1, 2)) / region.sum()
        return np.stack([1 - p1, p1], axis=-1)

    return predict


def _setup():
    region = np.zeros((16, 16), np.float32)
    region[4:8, 10:14] = 1
    images = np.repeat(np.repeat(region[None, :, :, None], 3, 0), 3, -1)  # bright evidence, dark elsewhere
    good = np.repeat((region + 0.01 * np.random.default_rng(0).random((16, 16)))[None], 3, 0)
    bad = 1.0 - good
    return region, images, good, bad


@pytest.mark.parametrize("baseline", ["grey", "blur"])
def test_map_on_the_evidence_beats_the_reverse_map(baseline):
    region, images, good, bad = _setup()
    predict = _region_model(region)
    faithful = faith.deletion_insertion(predict, images, good, [1, 1, 1], steps=8, baseline=baseline)
    reverse = faith.deletion_insertion(predict, images, bad, [1, 1, 1], steps=8, baseline=baseline)
    assert (faithful["deletion_auc"] < reverse["deletion_auc"]).all()
    assert (faithful["insertion_auc"] > reverse["insertion_auc"]).all()
    # curves start at the full image / baseline and end at the other
    np.testing.assert_allclose(faithful["deletion_curve"][:, 0], 1.0)
    np.testing.assert_allclose(faithful["insertion_curve"][:, -1], 1.0)


def test_pointing_game_hits_misses_and_chance_rate():
    cams = np.zeros((3, 10, 10), np.float32)
    cams[0, 2, 2] = 1  # inside
    cams[1, 8, 8] = 1  # outside
    cams[2, 5, 5] = 1  # mask empty -> not scored
    masks = np.zeros((3, 10, 10), np.uint8)
    masks[0, 1:4, 1:4] = 255
    masks[1, 1:4, 1:4] = 255
    out = faith.pointing_game(cams, masks)
    assert out["pointing_hit"][0] == 1 and out["pointing_hit"][1] == 0 and np.isnan(out["pointing_hit"][2])
    np.testing.assert_allclose(out["mask_fraction"][:2], 0.09)
    assert out["energy_in_mask"][0] == 1 and out["energy_in_mask"][1] == 0
    np.testing.assert_allclose(out["energy_ratio"][:2], [1 / 0.09, 0.0])  # x the energy of a uniform map
    assert np.isnan(out["energy_ratio"][2])
    near_miss = np.zeros((1, 10, 10), np.float32)
    near_miss[0, 5, 3] = 1  # 2 px below the mask
    assert faith.pointing_game(near_miss, masks[1:2])["pointing_hit"][0] == 0
    assert faith.pointing_game(near_miss, masks[1:2], tolerance=2)["pointing_hit"][0] == 1


def test_masks_on_another_grid_are_resized():
    cams = np.zeros((1, 20, 20), np.float32)
    cams[0, 3, 3] = 1
    mask = np.zeros((1, 10, 10), np.uint8)
    mask[0, 1, 1] = 255
    assert faith.pointing_game(cams, mask)["pointing_hit"][0] == 1


def test_ssim_is_one_for_identical_maps_and_low_for_unrelated():
    rng = np.random.default_rng(0)
    a = rng.random((2, 32, 32)).astype(np.float32)
    np.testing.assert_allclose(faith.ssim_per_image(a, a), 1.0)
    assert (faith.ssim_per_image(a, rng.random((2, 32, 32)).astype(np.float32)) < 0.2).all()


def test_summary_skips_missing_values_and_gate_reports_pass_fail():
    summary = faith.summarize({
        "deletion_auc": [0.2, 0.4],
        "insertion_auc": [0.8, 0.6],
        "pointing_hit": [1.0, np.nan],
        "randomization_ssim": [0.9, 0.7],
    })
    assert summary["pointing_game"] == 1.0
    assert summary["insertion_minus_deletion"] == pytest.approx(0.4)
    result = faith.gate(summary, {"randomization_ssim": ("<=", 0.5), "pointing_game": (">=", 0.5),
                                  "energy_in_mask": (">=", 0.1)})
    assert result["metrics"]["randomization_ssim"]["passed"] is False
    assert result["metrics"]["pointing_game"]["passed"] is True
    assert result["metrics"]["energy_in_mask"]["passed"] is None  # not computed: reported, not failed
    assert result["passed"] is False
    assert faith.gate(summary, {"pointing_game": (">=", 0.5)})["passed"] is True
    with pytest.raises(Exception, match="=>"):
        faith.gate(summary, {"pointing_game": ("=>", 0.5)})


def test_thresholds_parse_from_one_string_for_pipeline_parameters():
    assert faith.parse_thresholds("") is None  # the defaults
    assert faith.parse_thresholds("none") == {}
    assert faith.parse_thresholds(" randomization_ssim<=0.4 , pointing_game>=0.3,deletion_auc<0.2") == {
        "randomization_ssim": ("<=", 0.4), "pointing_game": (">=", 0.3), "deletion_auc": ("<", 0.2)}


@pytest.mark.parametrize(("text", "problem"), [
    ("pointing_game=0.3", "expected <metric><op><number>"),
    ("pointing_gam>=0.3", "unknown metric 'pointing_gam'"),
    ("pointing_game>=high", "'high' is not a number"),
])
def test_bad_thresholds_name_the_problem(text, problem):
    from components.common.errors import RetinaError

    with pytest.raises(RetinaError, match=problem):
        faith.parse_thresholds(text)


def test_gate_reports_failures_with_what_was_needed():
    result = faith.gate({"randomization_ssim": 0.9, "pointing_game": 0.8, "insertion_minus_deletion": None},
                        faith.parse_thresholds("randomization_ssim<=0.5,pointing_game>=0.3,insertion_minus_deletion>=0"))
    assert result["passed"] is False
    assert result["metrics"]["insertion_minus_deletion"]["passed"] is None  # not computed: reported, not failed
    assert faith.format_failures(result) == "randomization_ssim 0.900 (needs <= 0.5)"


def test_the_default_baseline_keeps_a_faithful_map_positive_where_flat_grey_reads_as_the_class():
    """A model that reads flat grey as the target class (a demo OCT model read it as CNV): deleting the
    evidence with grey leaves the class standing, so a faithful map scores insertion − deletion near 0 with the
    grey baseline (below the gate's 0.02 on real OCT models). The default (a blurred copy of each image) keeps
    the image's own intensities: the same map scores far above zero, and the reverse map as far below."""
    region, images, good, bad = _setup()
    evidence = _region_model(region)

    def predict(x: np.ndarray) -> np.ndarray:
        greyness = (np.abs(x[..., 0] - 0.5) < 1e-6).mean(axis=(1, 2))
        p1 = np.clip(np.maximum(evidence(x)[:, 1], 4 * greyness), 0.0, 1.0)
        return np.stack([1 - p1, p1], axis=-1)

    def score(cams: np.ndarray, **kw) -> float:
        d = faith.deletion_insertion(predict, images, cams, [1, 1, 1], steps=8, **kw)
        return float((d["insertion_auc"] - d["deletion_auc"]).mean())

    assert score(good, baseline="grey") < 0.1
    assert score(good) == score(good, baseline="blur") > 0.4
    assert score(bad) < -0.4
