"""The grade must be readable from the lesions only: no global cue (brightness, colour, vessel pattern,
retinal thickness) may carry it, or a model can be right for reasons no heatmap can point at."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from infra.local.synthetic import render_fundus, render_oct


@pytest.mark.parametrize(("render", "classes"), [(render_fundus, 5), (render_oct, 4)], ids=["fundus", "oct"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_outside_its_lesion_mask_an_image_is_the_healthy_image_of_the_same_seed(render, classes, seed):
    """With the lesions painted out (their mask grown by 3 px for soft edges and blur), every grade's
    image is pixel-identical to the grade-0 image drawn from the same seed: same brightness, colour,
    vessels, layer geometry and noise, so global statistics cannot differ by grade."""
    healthy, healthy_mask = render(0, np.random.default_rng(seed), size=128)
    assert not healthy_mask.any()
    for grade in range(1, classes):
        image, mask = render(grade, np.random.default_rng(seed), size=128)
        assert mask.any()
        lesions = cv2.dilate((mask > 0).astype(np.uint8), np.ones((7, 7), np.uint8)) > 0
        outside = ~lesions
        assert outside.mean() > 0.7  # the check covers most of the image
        np.testing.assert_array_equal(image[outside], healthy[outside])
        assert np.abs(image[lesions].astype(int) - healthy[lesions].astype(int)).max() > 40  # lesions are drawn

