"""The clinical additions' TF-free parts: anatomy per image and method, the gate metric, the summary."""

from __future__ import annotations

import numpy as np

from components.explain.clinical import anatomy_metrics, guess_modality, outside_shares, summarize_anatomy


def test_anatomy_per_image_feeds_the_gate_metric_and_the_summary():
    from infra.local.synthetic import render_fundus, render_oct

    fundus, _ = render_fundus(2, np.random.default_rng(0), 96, eye="left")
    fundus = fundus[:, 16:112]  # square, as the model sees it
    oct_img, _ = render_oct(0, np.random.default_rng(0), 96)
    oct_rgb = np.repeat(oct_img[..., None], 3, -1)
    flat_grey = np.full((96, 96, 3), 128, np.uint8)  # no anatomy to find
    corner = np.zeros((3, 96, 96), np.float32)
    corner[:, :6, :6] = 1.0
    centre = np.zeros((3, 96, 96), np.float32)
    centre[:, 44:52, 44:52] = 1.0
    anatomy = anatomy_metrics([fundus, oct_rgb, flat_grey], {"corner": corner, "centre": centre}, "")
    assert guess_modality(oct_rgb) == "oct" and guess_modality(fundus) == "fundus"
    assert anatomy[2] == {}  # a uniform image: not fundus-like, refused, left out (not a crash, not a zero)
    shares = outside_shares(anatomy, "corner")
    assert shares[0] == 1.0 and shares[1] == 1.0 and np.isnan(shares[2])  # corner: outside FOV / in the vitreous
    assert outside_shares(anatomy, "centre")[0] == 0.0
    summary = summarize_anatomy(anatomy, limit=0.2)
    assert summary["corner"]["flagged"] == 2 and summary["centre"]["flagged"] == 0
