"""Fundus and OCT image operations on the real skimage retina and on synthetic images."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from components.preprocess.ops import (
    NoRetinaFound,
    PreprocessParams,
    circle_mask,
    find_retina,
    preprocess_image,
    psnr,
    radius_from_middle_row,
    reference_fundus,
)


def test_real_retina_is_found_and_background_is_grey(retina_rgb):
    params = PreprocessParams(image_size=128)
    circle = find_retina(retina_rgb, params)
    h, w = retina_rgb.shape[:2]
    assert abs(circle.cx - w / 2) < 0.05 * w and abs(circle.cy - h / 2) < 0.05 * h
    assert abs(circle.radius - radius_from_middle_row(retina_rgb)) < 0.02 * w  # Graham's estimate agrees

    out = preprocess_image(retina_rgb, params).image
    assert out.shape == (128, 128, 3) and out.dtype == np.uint8
    outside = ~circle_mask(128, 0.9 * 64 + 1)
    assert np.all(out[outside] == 128)
    inside = circle_mask(128, 0.8 * 64)
    assert abs(float(out[inside].mean()) - 128) < 12  # local average removed: mean colour maps to grey
    assert out[inside].std() > 5  # but the vessels are still there


@pytest.mark.parametrize(
    "frame, centre, radius",
    [
        ((300, 400), (200, 150), 120),  # centred, whole circle
        ((300, 400), (130, 170), 100),  # off-centre
        ((300, 450), (225, 150), 180),  # clipped at top and bottom (EyePACS style)
        ((300, 400), (60, 150), 110),  # clipped at the left edge
    ],
)
def test_bounds_of_off_centre_and_clipped_retinas(frame, centre, radius, draw_fundus):
    img = draw_fundus(frame, centre, radius)
    circle = find_retina(img)
    assert not circle.full_frame
    assert abs(circle.cx - centre[0]) < 2.5 and abs(circle.cy - centre[1]) < 2.5
    assert abs(circle.radius - radius) < 2.5


def test_middle_row_estimate_fails_where_the_fit_does_not(draw_fundus):
    """Off-centre vertically, the middle row cuts a chord: Graham's radius is too small, the fit is right."""
    img = draw_fundus((400, 400), (200, 120), 110)
    assert radius_from_middle_row(img) < 0.9 * 110
    assert abs(find_retina(img).radius - 110) < 2.5


def test_full_frame_photo_uses_the_frame(retina_rgb):
    crop = np.ascontiguousarray(retina_rgb[500:800, 450:850])  # no background at all
    circle = find_retina(crop)
    assert circle.full_frame
    assert circle.radius == pytest.approx(200)
    out = preprocess_image(crop, PreprocessParams(image_size=64)).image
    assert out.shape == (64, 64, 3)


def test_all_black_frame_has_no_retina():
    with pytest.raises(NoRetinaFound, match="no retina"):
        preprocess_image(np.zeros((200, 300, 3), np.uint8), PreprocessParams(image_size=64))
    noisy = np.random.default_rng(0).integers(0, 6, (200, 300, 3)).astype(np.uint8)  # sensor noise only
    with pytest.raises(NoRetinaFound):
        preprocess_image(noisy, PreprocessParams(image_size=64))


def test_mask_follows_the_image_geometry(draw_fundus):
    """A lesion planted at a known spot of an off-centre, clipped photo lands on the same output pixels."""
    img = draw_fundus((300, 450), (200, 140), 170, seed=1)
    lesion = (250, 120)
    cv2.circle(img, lesion, 6, (255, 255, 120), -1)  # bright exudate
    mask = np.zeros(img.shape[:2], np.uint8)
    cv2.circle(mask, lesion, 6, 255, -1)
    out = preprocess_image(img, PreprocessParams(image_size=96), mask)
    assert out.mask is not None and out.mask.shape == (96, 96) and set(np.unique(out.mask)) <= {0, 255}
    ys, xs = np.nonzero(out.mask)
    # expected position: (lesion − centre) · scale + output centre
    scale = 48 / 170
    assert abs(xs.mean() - ((250 - 200) * scale + 47.5)) < 1.0
    assert abs(ys.mean() - ((120 - 140) * scale + 47.5)) < 1.0
    # and the image is bright exactly there (the exudate survived the local-average subtraction)
    assert out.image[out.mask > 0].mean() > out.image[circle_mask(96, 40)].mean() + 30


def test_mask_given_at_another_size_is_resampled(draw_fundus):
    img = draw_fundus((200, 200), (100, 100), 90)
    mask = np.zeros((100, 100), np.uint8)
    mask[40:60, 40:60] = 255
    out = preprocess_image(img, PreprocessParams(image_size=64), mask)
    assert out.mask[32, 32] == 255 and out.mask[5, 5] == 0


def test_reference_parity_on_the_real_retina(retina_rgb):
    """The project path (work at output resolution) matches Graham's steps at full resolution."""
    params = PreprocessParams(image_size=128)
    ours = preprocess_image(retina_rgb, params).image
    ref = reference_fundus(retina_rgb, params)
    assert psnr(ours, ref) >= 35
    assert psnr(ours, ref, circle_mask(128, 0.9 * 64)) >= 35


def test_params_round_trip_and_validation():
    params = PreprocessParams(modality="oct", image_size=96, denoise="nlm", denoise_strength=7)
    assert PreprocessParams.from_dict(params.to_dict()) == params
    assert PreprocessParams.from_dict({**params.to_dict(), "from_the_future": 1}) == params
    assert params.sigma == pytest.approx(48 / 30)
    with pytest.raises(ValueError, match="denoise"):
        PreprocessParams(denoise="gaussian")
    with pytest.raises(ValueError, match="modality"):
        PreprocessParams(modality="xray")


# ----------------------------------------------------------------------------------- OCT
def _bscan(h: int = 120, w: int = 200, seed: int = 0) -> np.ndarray:
    from infra.local.synthetic import render_oct

    scan, _ = render_oct(1, np.random.default_rng(seed), size=h)
    return cv2.resize(scan, (w, h)) if scan.shape != (h, w) else scan


@pytest.mark.parametrize("denoise", ["median", "nlm", "none"])
def test_oct_output_is_square_grey_and_stretched(denoise):
    scan = (_bscan() * 0.5 + 20).astype(np.uint8)  # low gain
    out = preprocess_image(scan, PreprocessParams(modality="oct", image_size=64, denoise=denoise)).image
    assert out.shape == (64, 64) and out.dtype == np.uint8
    assert out.max() == 255 and out.min() == 0  # percentile stretch uses the full range


def test_oct_median_reduces_speckle():
    rng = np.random.default_rng(1)
    clean = np.tile(np.linspace(40, 200, 128, dtype=np.float32)[:, None], (1, 128))
    speckled = np.clip(clean * rng.gamma(4.0, 1 / 4.0, clean.shape), 0, 255).astype(np.uint8)
    params = PreprocessParams(modality="oct", image_size=128, denoise="median", denoise_strength=5,
                              low_percentile=0, high_percentile=100)
    raw = PreprocessParams(modality="oct", image_size=128, denoise="none", low_percentile=0, high_percentile=100)
    target = cv2.normalize(clean, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    assert psnr(preprocess_image(speckled, params).image, target) > psnr(preprocess_image(speckled, raw).image, target)


def test_oct_square_modes_and_mask():
    scan = _bscan(100, 300)
    mask = np.zeros_like(scan)
    mask[40:60, 140:160] = 255
    cropped = preprocess_image(scan, PreprocessParams(modality="oct", image_size=50, square_mode="crop"), mask)
    padded = preprocess_image(scan, PreprocessParams(modality="oct", image_size=60, square_mode="pad"), mask)
    assert cropped.mask.shape == (50, 50) and cropped.mask.any()
    # pad: 300×300 canvas, scan rows 100..199 -> output rows 20..39; the lesion at rows 40..60 -> 28..32
    ys, xs = np.nonzero(padded.mask)
    assert 27 <= ys.min() and ys.max() <= 32 and 27 <= xs.min() and xs.max() <= 32
    assert (padded.image[:18] == padded.image[0, 0]).all()  # padding is flat


def test_blank_oct_is_rejected():
    with pytest.raises(NoRetinaFound, match="blank"):
        preprocess_image(np.full((64, 64), 90, np.uint8), PreprocessParams(modality="oct", image_size=32))


def test_every_parameter_can_be_set_by_name_from_strings():
    params = PreprocessParams.with_overrides("fundus", 256, {"sigma_ratio": "0.05", "radius": "200",
                                                             "reduced_decode": "false", "rim_fraction": 0.85})
    assert (params.sigma_ratio, params.radius, params.reduced_decode, params.rim_fraction) == (0.05, 200, False, 0.85)
    assert params.image_size == 256 and params.sigma == pytest.approx(10.0)
    oct_params = PreprocessParams.with_overrides("oct", 64, {"denoise": "nlm", "radius": "none"})
    assert oct_params.denoise == "nlm" and oct_params.radius is None


@pytest.mark.parametrize(("overrides", "problem"), [
    ({"sigma": "3"}, "unknown preprocessing parameter 'sigma'"),
    ({"sigma_ratio": "wide"}, "sigma_ratio='wide'"),
    ({"reduced_decode": "maybe"}, "expected true or false"),
    ({"rim_fraction": "1.5"}, r"rim_fraction must be in \(0, 1\]"),
    ({"image_size": "64"}, "has its own option"),
])
def test_bad_parameter_overrides_name_the_problem(overrides, problem):
    from components.common.errors import RetinaError

    with pytest.raises(RetinaError, match=problem):
        PreprocessParams.with_overrides("fundus", 128, overrides)


def test_the_reference_box_resampling_is_exact_area_averaging():
    """`reference_fundus` averages each output pixel's exact square: OpenCV's INTER_AREA where the grid is
    aligned, the hand-computed coverage where it is not (sub-pixel start), zeros outside the image."""
    from components.preprocess.ops import _box_resample

    a = np.random.default_rng(3).random((100, 7))
    aligned = cv2.resize(a, (7, 40), interpolation=cv2.INTER_AREA)  # 2.5 rows per output row
    np.testing.assert_allclose(_box_resample(a, 0.0, 2.5, 40), aligned, atol=1e-6)
    shifted = _box_resample(a, 0.5, 2.0, 3)
    np.testing.assert_allclose(shifted[0], (0.5 * a[0] + a[1] + 0.5 * a[2]) / 2)
    np.testing.assert_allclose(shifted[2], (0.5 * a[4] + a[5] + 0.5 * a[6]) / 2)
    outside = _box_resample(a, -1.0, 2.0, 1)  # half of the square lies above the image: counts as zero
    np.testing.assert_allclose(outside[0], a[0] / 2)


def test_the_warp_s_antialiasing_kernel_fits_the_serving_graph_s_five_taps():
    """serving/tf_preprocess._antialias builds the kernel with 5 taps: whatever the source/output ratio, the
    canvas multiple keeps the warp's own ratio where `antialias_kernel` needs no more, and it is normalised."""
    from components.preprocess.params import ANTIALIAS_MIN_RATIO, antialias_kernel, canvas_multiple

    for ratio in np.linspace(0.2, 40.0, 4000):
        n = canvas_multiple(ratio)
        taps = antialias_kernel(ratio / n)
        assert len(taps) <= 5 and len(taps) % 2 == 1 and abs(sum(taps) - 1) < 1e-12
        assert (len(taps) == 1) == (ratio / n < ANTIALIAS_MIN_RATIO)


def test_opencv_s_gaussian_blur_applies_the_antialiasing_taps():
    """ops.crop_and_scale filters with cv2.GaussianBlur(size, σ) (its fast uint8 path) while the serving graph
    convolves `antialias_kernel`'s taps: OpenCV's kernel is those taps, and the uint8 results agree within one
    grey level of the float convolution."""
    from components.preprocess.params import antialias_kernel, antialias_sigma

    image = cv2.GaussianBlur(np.random.default_rng(4).integers(0, 256, (60, 50, 3), np.uint8), (0, 0), 1.0)
    for ratio in (1.5, 1.9, 2.5, 3.0, 3.7):
        taps = np.asarray(antialias_kernel(ratio))
        opencv = cv2.getGaussianKernel(len(taps), antialias_sigma(ratio), cv2.CV_64F).ravel()
        np.testing.assert_allclose(opencv, taps, atol=1e-12)
        fast = cv2.GaussianBlur(image, (len(taps), len(taps)), antialias_sigma(ratio),
                                borderType=cv2.BORDER_REFLECT_101)
        exact = cv2.sepFilter2D(image.astype(np.float64), -1, taps, taps, borderType=cv2.BORDER_REFLECT_101)
        assert np.abs(fast - exact).max() <= 1.0
