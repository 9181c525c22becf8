"""Anatomy check: FOV, optic disc, vessels and OCT depth bands found on images whose anatomy is known.

The synthetic fundus generator places the disc and the retina circle from its seed (`_FundusGeometry`
draws them first, so the same seed gives the same geometry); the real `skimage.data.retina()` photo has
its disc at the left, a fifth of the way in, at mid-height (looked up by eye). TF-free and fast.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from components.explain.anatomy import (
    OCT_BANDS,
    anatomy_shares,
    anatomy_view,
    field_of_view,
    fundus_anatomy,
    fundus_shares,
    oct_anatomy,
)


def _synthetic(seed: int, grade: int, eye: str, size: int = 160):
    from infra.local.synthetic import _FundusGeometry, render_fundus

    image, mask = render_fundus(grade, np.random.default_rng(seed), size, eye=eye)
    geo = _FundusGeometry(np.random.default_rng(seed), size, eye)
    return image, mask, geo


@pytest.mark.parametrize("seed,grade,eye", [(0, 0, "left"), (1, 3, "right"), (2, 4, "left"), (3, 2, "right")])
def test_synthetic_disc_and_fov_found_where_drawn(seed, grade, eye):
    image, _, geo = _synthetic(seed, grade, eye)
    a = fundus_anatomy(image)
    x, y = a.disc_centre
    assert math.hypot(x - geo.disc[0], y - geo.disc[1]) < geo.disc_radius, (a.disc_centre, geo.disc)
    assert 0.6 * geo.disc_radius < a.disc_radius < 1.6 * geo.disc_radius
    yy, xx = np.mgrid[: image.shape[0], : image.shape[1]]
    truth = np.hypot(xx - geo.centre[0], yy - geo.centre[1]) < geo.radius
    iou = (a.fov & truth).sum() / (a.fov | truth).sum()
    assert iou > 0.93, iou


def test_real_retina_disc_fov_and_vessels():
    import cv2
    from skimage import data

    image = cv2.resize(data.retina(), (256, 256), interpolation=cv2.INTER_AREA)
    a = fundus_anatomy(image)
    x, y = a.disc_centre
    assert abs(x / 256 - 0.175) < 0.05 and abs(y / 256 - 0.465) < 0.05, a.disc_centre
    assert 0.7 < a.fov.mean() < 0.85  # a circle filling most of the square frame
    assert 0.01 < a.vessels.mean() < 0.12
    green = image[..., 1].astype(np.float32)
    local = cv2.GaussianBlur(green, (0, 0), 6)
    assert (green[a.vessels] < local[a.vessels]).mean() > 0.9  # vessels are darker than their surroundings


def test_graham_normalised_input_gives_the_same_disc():
    """The model sees Graham's output (grey surround, local contrast); the check runs on that too."""
    import cv2
    from skimage import data

    from components.preprocess.ops import PreprocessParams, preprocess_image

    pre = preprocess_image(data.retina(), PreprocessParams(modality="fundus", image_size=192)).image
    a = fundus_anatomy(pre)
    assert a.disc_centre[0] < 192 * 0.3  # the disc sits at the left, as in the photo
    raw = fundus_anatomy(cv2.resize(data.retina(), (192, 192), interpolation=cv2.INTER_AREA))
    assert abs(a.disc_centre[1] - raw.disc_centre[1]) < 0.05 * 192
    assert a.fov.mean() > 0.5 and not a.fov[0, 0]


def test_vessels_of_a_lesion_free_synthetic_eye_are_dark_thin_lines():
    import cv2

    image, _, geo = _synthetic(5, 0, "left")
    a = fundus_anatomy(image)
    assert 0.005 < a.vessels.sum() / a.fov.sum() < 0.2
    green = image[..., 1].astype(np.float32)
    assert (green[a.vessels] < cv2.GaussianBlur(green, (0, 0), 5)[a.vessels]).mean() > 0.85
    assert not (a.vessels & a.disc).any()


def test_shares_of_maps_on_the_disc_and_off_the_retina():
    image, _, geo = _synthetic(0, 2, "left")
    a = fundus_anatomy(image)
    h, w = image.shape[:2]
    yy, xx = np.mgrid[:h, :w]
    on_disc = np.exp(-((xx - geo.disc[0]) ** 2 + (yy - geo.disc[1]) ** 2) / (2 * (geo.disc_radius / 2) ** 2))
    corner = np.zeros((h, w))
    corner[:10, :10] = 1.0
    shares = {k: fundus_shares(v, a) for k, v in {"disc": on_disc, "corner": corner}.items()}
    assert shares["disc"].mass["optic_disc"] > 0.8 and shares["disc"].area["optic_disc"] < 0.1
    assert shares["disc"].outside_share < 0.01 and not shares["disc"].flagged(0.2)
    assert shares["corner"].mass["outside_fov"] == pytest.approx(1.0) and shares["corner"].flagged(0.2)
    flat = fundus_shares(np.ones((h, w)), a)
    assert flat.mass["outside_fov"] == pytest.approx(flat.area["outside_fov"])


def test_oct_bands_follow_the_layers():
    from infra.local.synthetic import render_oct

    for label, name in enumerate(("NORMAL", "CNV", "DME", "DRUSEN")):
        image, mask = render_oct(label, np.random.default_rng(label), 192)
        a = oct_anatomy(image)
        assert (a.bands[:5] == 0).all(), name  # top rows: vitreous
        assert (a.bands[-5:] == 3).all(), name  # bottom rows: choroid
        assert (np.diff(a.bands.astype(int), axis=0) >= 0).all()  # bands go downwards in order
        thickness = a.rpe - a.ilm
        assert (thickness > 0.1 * 192).mean() > 0.9, name
        if mask.any():  # the lesions lie in the retina / RPE, not the vitreous or deep choroid
            in_retina = np.isin(a.bands[mask > 0], (1, 2)).mean()
            assert in_retina > 0.7, (name, in_retina)
    vitreous_map = np.zeros((192, 192))
    vitreous_map[:8] = 1.0
    shares = anatomy_shares(image, {"top": vitreous_map}, "oct")["top"]
    assert set(shares.mass) == set(OCT_BANDS)
    assert shares.mass["vitreous"] == pytest.approx(1.0) and shares.flagged(0.2)


def test_full_frame_photo_is_all_field_of_view_and_uniform_image_is_refused():
    from components.common.errors import RetinaError

    rng = np.random.default_rng(0)
    textured = (rng.random((64, 64, 3)) * 255).astype(np.uint8)
    assert field_of_view(textured).all()
    with pytest.raises(RetinaError):
        field_of_view(np.zeros((64, 64, 3), np.uint8))


def test_anatomy_view_draws_on_a_copy():
    image, _, _ = _synthetic(0, 1, "left", size=96)
    before = image.copy()
    view = anatomy_view(image, "fundus")
    assert view.shape == image.shape and (image == before).all() and (view != image).any()
