"""Pure image operations for fundus photos and OCT B-scans: numpy/OpenCV in, numpy out, no I/O.

Fundus (Ben Graham, Kaggle DR 2015): find the retina, crop to it, scale it to a common radius, subtract
the local average colour (`4·img − 4·GaussianBlur(img, σ = radius/30) + 128`) so every photo sits on
50 % grey whatever its exposure, set everything outside `rim_fraction · radius` to 128 (the blur leaves a
bright halo at the circle's edge), resize to `image_size`.

Graham measured the radius from the middle row only. Real photos are often off-centre, clipped at the
top/bottom (EyePACS) or cropped to fill the whole frame, where the middle row is wrong or meaningless;
`find_retina` fits a circle to the retina's outline instead, ignoring outline points that lie on the frame
border (where the photo, not the retina, ends). `radius_from_middle_row` keeps Graham's estimate as a
reference.

The steps run at the output scale: from a DCT-reduced decode (`decode.decode_for`: 1/2 scale for an
EyePACS frame and a 512 px output, ≈ 2.5 source px per output px) one bilinear warp places the retina with
sub-pixel accuracy directly at 2·radius (or at an integer multiple, block-averaged down), after a small
Gaussian low-pass of the crop (`params.antialias_kernel`: bilinear taps alone alias thin vessels), and the
Gaussian step runs on a copy reduced by `PreprocessParams.blur_reduction` (a σ = 8.5 px blur carries no
detail a 4x coarser grid cannot hold). Every step has an exact TF twin in `serving/tf_preprocess.py`.
`reference_fundus` is the fidelity yardstick: the steps at full resolution, exactly box-averaged.

Geometry is exact to the sub-pixel, and a lesion mask passed to `preprocess_image` goes through the same
crop/scale/resize (nearest neighbour), so masks stay aligned with the preprocessed image.

OCT: grey, speckle-aware denoise (median or non-local means), crop or pad to square, percentile stretch,
resize.
"""

from __future__ import annotations

import functools
import logging
import math
from typing import NamedTuple

import cv2
import numpy as np

from components.common.errors import RetinaError
from components.preprocess.decode import area_reduce, block_mean, block_mean_float
from components.preprocess.params import (
    DENOISERS,
    PreprocessParams,
    antialias_kernel,
    antialias_sigma,
    canvas_multiple,
    gaussian_ksize,
)

log = logging.getLogger(__name__)

# Bounds detection runs on a thumbnail this long: cheap, and the same for a full and a reduced decode,
# so both paths find the same circle.
THUMBNAIL_SIDE = 512


class NoRetinaFound(RetinaError):
    """The frame holds no bright, retina-sized region (an all-black or blank image)."""


class Preprocessed(NamedTuple):
    image: np.ndarray  # uint8, S×S×3 (fundus) or S×S (OCT)
    mask: np.ndarray | None  # uint8 S×S, same geometry as image


class RetinaCircle(NamedTuple):
    """Retina centre and radius in pixel-centre coordinates of the image it was found in."""

    cx: float
    cy: float
    radius: float
    full_frame: bool = False


# ============================================================================ fundus: bounds
def _intensity(image: np.ndarray) -> np.ndarray:
    """Per-pixel max over the colour channels (cv2.max: a strided NumPy max over axis 2 is ~10x slower)."""
    if image.ndim == 2:
        return image
    return cv2.max(cv2.max(image[..., 0], image[..., 1]), image[..., 2])


def percentile_u8(image: np.ndarray, q: float) -> float:
    """`np.percentile(image, q)` (linear interpolation) of a uint8 image from its histogram, without a sort."""
    counts = np.cumsum(cv2.calcHist([np.ascontiguousarray(image)], [0], None, [256], [0, 256]).ravel().astype(np.int64))
    pos = q / 100.0 * (counts[-1] - 1)
    lo = math.floor(pos)
    below, above = np.searchsorted(counts, [lo, min(lo + 1, counts[-1] - 1)], side="right")
    return float(below + (pos - lo) * (above - below))


def thumbnail(image: np.ndarray) -> tuple[np.ndarray, int]:
    """(image reduced by the smallest integer factor that brings its long side to ≤ THUMBNAIL_SIDE, factor).

    An integer factor makes the reduction a block mean (bit-identical in the serving graph), done as exact
    2×2 means first (`decode.block_mean`: OpenCV's fast path, ~4x cheaper than one 4×4 mean)."""
    factor = max(1, math.ceil(max(image.shape[:2]) / THUMBNAIL_SIDE))
    return block_mean(image, factor), factor


def radius_from_middle_row(image: np.ndarray) -> float:
    """Graham's estimate: half the number of middle-row pixels brighter than a tenth of the row's mean."""
    row = image[image.shape[0] // 2].astype(np.float32)
    row = row.sum(axis=1) if row.ndim == 2 else row
    return float((row > row.mean() / 10).sum() / 2)


def _fit_circle(xs: np.ndarray, ys: np.ndarray) -> tuple[float, float, float]:
    """Algebraic least-squares circle (Kåsa): x² + y² + Dx + Ey + F = 0."""
    a = np.column_stack([xs, ys, np.ones_like(xs)])
    b = -(xs**2 + ys**2)
    (d, e, f), *_ = np.linalg.lstsq(a, b, rcond=None)
    cx, cy = -d / 2, -e / 2
    return float(cx), float(cy), float(math.sqrt(max(cx**2 + cy**2 - f, 0.0)))


def _largest_outline(image: np.ndarray, params: PreprocessParams) -> tuple[list[np.ndarray], int]:
    """(external outline of the largest bright region, the number of mask pixels inside it)."""
    gray = _intensity(image)
    threshold = max(params.background_level, params.background_fraction * percentile_u8(gray, 99))
    mask = (gray > threshold).astype(np.uint8)
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    if not contours:
        return [], 0
    largest = max(contours, key=cv2.contourArea)
    x, y, w, h = cv2.boundingRect(largest)
    inside = np.zeros((h, w), np.uint8)
    cv2.drawContours(inside, [largest], -1, 1, thickness=cv2.FILLED, offset=(-x, -y))
    return [largest], int(cv2.countNonZero(cv2.bitwise_and(inside, mask[y : y + h, x : x + w])))


def retina_region(image: np.ndarray, params: PreprocessParams | None = None) -> np.ndarray:
    """Boolean mask of retina pixels (the largest bright connected region, holes filled)."""
    contours, _ = _largest_outline(image, params or PreprocessParams())
    filled = np.zeros(image.shape[:2], np.uint8)
    cv2.drawContours(filled, contours, -1, 1, thickness=cv2.FILLED)
    return filled.astype(bool)


def find_retina(image: np.ndarray, params: PreprocessParams | None = None) -> RetinaCircle:
    """Centre and radius of the retina, robust to off-centre, clipped and full-frame photos.

    Runs on a ≤512 px thumbnail. The retina is the largest bright region; a circle is fitted to its outline
    points that do not lie on the frame border (there the photo is clipped, the retina goes on), with one
    round of outlier rejection (notches, reflections). When almost the whole outline is frame border the
    photo is full-frame: the circle is the frame's own (centre, half the longer side).
    Raises NoRetinaFound for frames without a retina-sized bright region.
    """
    params = params or PreprocessParams()
    h, w = image.shape[:2]
    thumb, factor = thumbnail(image)
    th, tw = thumb.shape[:2]
    contours, area = _largest_outline(thumb, params)
    if area < params.min_retina_fraction * th * tw:
        raise NoRetinaFound("no retina found (frame is dark or blank)")
    points = np.concatenate([c.reshape(-1, 2) for c in contours]).astype(np.float64)
    inner = (points[:, 0] > 1) & (points[:, 0] < tw - 2) & (points[:, 1] > 1) & (points[:, 1] < th - 2)
    arc = points[inner]
    if len(arc) < max(12, 0.05 * len(points)):
        return RetinaCircle((w - 1) / 2, (h - 1) / 2, max(h, w) / 2, full_frame=True)
    # outline pixels are the region's outermost pixels: their centres sit half a pixel inside the edge
    xs, ys = arc[:, 0], arc[:, 1]
    cx, cy, r = _fit_circle(xs, ys)
    residual = np.abs(np.hypot(xs - cx, ys - cy) - r)
    keep = residual <= max(1.5, 3 * float(np.median(residual)))
    if keep.sum() >= 12 and not keep.all():
        cx, cy, r = _fit_circle(xs[keep], ys[keep])
    r += 0.5
    if not (0.05 * min(th, tw) < r < 2 * max(th, tw)):
        raise NoRetinaFound(f"no retina found (implausible outline radius {r * factor:.0f} px)")
    # thumbnail pixel centres -> image pixel centres: a block of `factor` pixels has its centre at (u + 0.5)·f − 0.5
    return RetinaCircle((cx + 0.5) * factor - 0.5, (cy + 0.5) * factor - 0.5, r * factor)


# ============================================================================ fundus: geometry
def _crop_box(circle: RetinaCircle, h: int, w: int, margin: int) -> tuple[int, int, int, int]:
    x0 = max(0, math.floor(circle.cx - circle.radius) - margin)
    y0 = max(0, math.floor(circle.cy - circle.radius) - margin)
    x1 = min(w, math.ceil(circle.cx + circle.radius) + margin + 1)
    y1 = min(h, math.ceil(circle.cy + circle.radius) + margin + 1)
    return x0, y0, x1, y1


def crop_and_scale(
    image: np.ndarray, circle: RetinaCircle, radius: int, nearest: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Crop the retina's bounding square and scale it so the retina has `radius`; pad where clipped.

    Returns (canvas 2r×2r, valid) where `valid` marks canvas pixels that came from the photo (not padding).
    The sub-pixel placement is one bilinear warp onto a canvas n = `canvas_multiple(ratio)` times the output
    (ratio: source px per output px; n = 1 up to 3.75), then an exact n×n block mean. A warp that shrinks
    by ≥ 1.5 first low-passes the crop (`antialias_kernel`): bilinear taps alone alias thin vessels.
    `nearest=True` (masks) uses nearest neighbour and no filter.
    """
    h, w = image.shape[:2]
    size = 2 * radius
    n = canvas_multiple(2 * circle.radius / size)
    big = n * size
    k = big / (2 * circle.radius)  # source -> intermediate scale
    x0, y0, x1, y1 = _crop_box(circle, h, w, margin=3)
    crop = image[y0:y1, x0:x1]
    if crop.shape[0] == 0 or crop.shape[1] == 0:
        raise NoRetinaFound("no retina found (circle outside the frame)")
    taps = antialias_kernel(1 / k)
    if len(taps) > 1 and not nearest:
        # OpenCV's Gaussian of the same size and σ has exactly these taps; on uint8 its fixed-point path is
        # ~1.4x faster than sepFilter2D with float taps (benchmarks/preprocess.py), within 1 grey level
        crop = cv2.GaussianBlur(crop, (len(taps), len(taps)), antialias_sigma(1 / k),
                                borderType=cv2.BORDER_REFLECT_101)
    # pixel-centre coordinates: u_big = (u_img − c)·k + (big − 1)/2, with u_img = u_crop + x0
    matrix = np.array(
        [[k, 0.0, (x0 - circle.cx) * k + (big - 1) / 2], [0.0, k, (y0 - circle.cy) * k + (big - 1) / 2]]
    )
    interp = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
    canvas = cv2.warpAffine(crop, matrix, (big, big), flags=interp, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    # canvas pixels whose nearest source pixel (floor(u + 0.5)) lies in the crop: one test per row and column
    valid_y = _inside(matrix[1, 2], k, big, y1 - y0)
    valid_x = _inside(matrix[0, 2], k, big, x1 - x0)
    if n > 1:
        canvas = canvas[::n, ::n] if nearest else area_reduce(canvas, n)
        valid_y, valid_x = valid_y[::n], valid_x[::n]
    # the photo outside the crop box is background beyond the retina circle, so `valid` stays a superset
    return canvas, valid_y[:, None] & valid_x[None, :]


def _inside(shift: float, scale: float, out_size: int, length: int) -> np.ndarray:
    nearest = np.floor((np.arange(out_size) - shift) / scale + 0.5)
    return (nearest >= 0) & (nearest < length)


def local_average(image: np.ndarray, sigma: float, reduction: int = 1) -> np.ndarray:
    """GaussianBlur(image, σ) as float32, computed on a copy block-averaged by `reduction` (σ/reduction there;
    the exact float mean, `decode.block_mean_float`) and brought back by bilinear interpolation: the blur
    keeps nothing finer than σ, so a σ ≥ 2 px grid carries it (`PreprocessParams.blur_reduction` picks the
    factor); 1/16 of the work at the default."""
    small = block_mean_float(image, reduction)
    small_sigma = sigma / reduction
    k = gaussian_ksize(small_sigma)
    blurred = cv2.GaussianBlur(small, (k, k), small_sigma, borderType=cv2.BORDER_REFLECT_101)
    if reduction > 1:
        blurred = cv2.resize(blurred, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_LINEAR)
    return blurred


def subtract_local_average(
    image: np.ndarray, sigma: float, image_weight: float = 4.0, blur_weight: float = -4.0, offset: float = 128.0,
    reduction: int = 1,
) -> np.ndarray:
    """Graham's colour normalisation: `image_weight·img + blur_weight·GaussianBlur(img, σ) + offset`.

    Subtracting the local average maps every photo's mean colour to 50 % grey, removing exposure and
    pigmentation differences while amplifying vessels and lesions. Computed in float, rounded half to
    even and clipped to uint8 once.
    """
    blurred = local_average(image, sigma, reduction)
    return cv2.addWeighted(image, image_weight, blurred, blur_weight, offset, dtype=cv2.CV_8U)


@functools.lru_cache(maxsize=32)
def _disc(size: int, radius: float) -> np.ndarray:
    c = (size - 1) / 2
    yy, xx = np.ogrid[:size, :size]
    disc = (xx - c) ** 2 + (yy - c) ** 2 <= radius**2
    disc.setflags(write=False)
    return disc


def circle_mask(size: int, radius: float) -> np.ndarray:
    """Boolean disc of `radius` px centred in a size×size frame (pixel-centre geometry)."""
    return _disc(size, float(radius)).copy()


def remove_rim(image: np.ndarray, radius: float, fill: float = 128.0, valid: np.ndarray | None = None) -> np.ndarray:
    """Set pixels outside the circle of `radius` (and outside `valid`, the photo's own pixels) to `fill`.

    The blur in `subtract_local_average` mixes the black background into the edge of the retina, leaving
    a bright ring; cutting at 0.9 of the radius removes it.
    """
    keep = _disc(image.shape[0], float(radius))
    if valid is not None:
        keep = keep & valid
    out = np.full_like(image, np.uint8(round(fill)))
    return cv2.copyTo(image, keep.view(np.uint8), out)


def resize_to(image: np.ndarray, size: int, nearest: bool = False) -> np.ndarray:
    if image.shape[0] == size and image.shape[1] == size:
        return image
    if nearest:
        interp = cv2.INTER_NEAREST
    else:
        interp = cv2.INTER_AREA if image.shape[0] > size else cv2.INTER_CUBIC
    return cv2.resize(image, (size, size), interpolation=interp)


def preprocess_fundus(image: np.ndarray, params: PreprocessParams, mask: np.ndarray | None = None) -> Preprocessed:
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"fundus preprocessing needs an RGB image H×W×3, got shape {image.shape}")
    circle = find_retina(image, params)
    radius = params.work_radius
    canvas, valid = crop_and_scale(image, circle, radius)
    out = subtract_local_average(canvas, params.sigma, params.image_weight, params.blur_weight, params.offset,
                                 params.blur_reduction)
    out = remove_rim(out, params.rim_fraction * radius, params.offset, valid)
    out = resize_to(out, params.image_size)
    out_mask = None
    if mask is not None:
        out_mask = resize_to(crop_and_scale(_mask_on(image, mask), circle, radius, nearest=True)[0],
                             params.image_size, nearest=True)
    return Preprocessed(out, out_mask)


def reference_fundus(image: np.ndarray, params: PreprocessParams) -> np.ndarray:
    """The fidelity reference: Graham's steps at the photo's full resolution, in float, then each output pixel
    the exact mean of the full-resolution result over its square (box integration with the retina's
    sub-pixel centre and radius: no rounded crop, no resampling kernel of its own).

    Used by the benchmark and the tests; the project path (`preprocess_fundus` on a reduced decode) must
    match it within PSNR ≥ 35 dB while doing the work on a far smaller image. (The former reference cropped
    at whole pixels and resized with INTER_AREA: its own geometry was up to half a full-resolution pixel
    off, which alone held a perfect full-resolution path to ~36 dB on sharp photos.)
    """
    circle = find_retina(image, params)
    h, w = image.shape[:2]
    r = circle.radius
    margin = math.ceil(4 * params.sigma_ratio * r) + 2  # the blur's reach: the crop edge never shows inside
    x0, y0 = math.floor(circle.cx - r) - margin, math.floor(circle.cy - r) - margin
    x1, y1 = math.ceil(circle.cx + r) + margin + 1, math.ceil(circle.cy + r) + margin + 1
    canvas = np.zeros((y1 - y0, x1 - x0, 3), np.float32)
    photo = np.zeros((y1 - y0, x1 - x0), np.float32)
    sx0, sy0, sx1, sy1 = max(0, x0), max(0, y0), min(w, x1), min(h, y1)
    canvas[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = image[sy0:sy1, sx0:sx1]
    photo[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = 1.0
    blurred = cv2.GaussianBlur(canvas, (0, 0), params.sigma_ratio * r)
    graham = cv2.addWeighted(canvas, params.image_weight, blurred, params.blur_weight, params.offset)
    size = 2 * params.work_radius
    # output pixel j covers [left + j·step, left + (j + 1)·step) in edge coordinates (pixel i spans [i, i+1))
    step = 2 * r / size
    left_x, left_y = circle.cx + 0.5 - r - x0, circle.cy + 0.5 - r - y0

    def box(a: np.ndarray) -> np.ndarray:
        rows = _box_resample(a, left_y, step, size)
        return np.moveaxis(_box_resample(np.moveaxis(rows, 1, 0), left_x, step, size), 0, 1)

    out = np.ascontiguousarray(np.clip(np.rint(box(graham)), 0, 255).astype(np.uint8))
    valid = box(photo) >= 0.5  # at least half the output pixel lies on the photo
    out = remove_rim(out, params.rim_fraction * params.work_radius, params.offset, valid)
    return resize_to(out, params.image_size)


def _box_resample(a: np.ndarray, start: float, step: float, count: int) -> np.ndarray:
    """Along axis 0: the mean of `a` (piecewise constant, zero outside) over [start + j·step, start + (j+1)·step)
    for j < count, exactly, from the running sum (float64)."""
    length = a.shape[0]
    running = np.concatenate([np.zeros((1, *a.shape[1:])), np.cumsum(a, axis=0, dtype=np.float64)])

    def integral(edges: np.ndarray) -> np.ndarray:
        edges = np.clip(edges, 0, length)
        index = np.minimum(np.floor(edges).astype(np.int64), length - 1)
        frac = (edges - index).reshape(-1, *([1] * (a.ndim - 1)))
        return running[index] + frac * a[index]

    edges = start + step * np.arange(count + 1)
    return (integral(edges[1:]) - integral(edges[:-1])) / step


def _mask_on(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """A mask brought onto the image's pixel grid (nearest neighbour) if it was given at another size."""
    if mask.ndim == 3:
        mask = mask[..., 0]
    if mask.shape[:2] != image.shape[:2]:
        mask = cv2.resize(mask, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_NEAREST)
    return mask


# ============================================================================ OCT
def to_gray(image: np.ndarray) -> np.ndarray:
    if image.ndim == 2:
        return image
    return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)


def denoise_speckle(image: np.ndarray, method: str = "median", strength: float = 3.0) -> np.ndarray:
    """Speckle is multiplicative, salt-and-pepper-like noise: a median keeps layer edges sharp where a
    Gaussian would smear them; non-local means (h = strength) averages similar patches along the layers."""
    if method == "none" or strength <= 0:
        return image
    if method == "median":
        k = max(3, int(round(strength)) | 1)
        return cv2.medianBlur(image, k)
    if method == "nlm":
        return cv2.fastNlMeansDenoising(image, None, h=float(strength), templateWindowSize=7, searchWindowSize=21)
    raise ValueError(f"unknown denoise method {method!r}: expected one of {DENOISERS}")


def square_box(image: np.ndarray, mode: str = "crop") -> tuple[int, int, int]:
    """(x0, y0, side) of the square taken from the image; may reach outside it (padding) in "pad" mode.

    "crop" keeps the short side and centres the long side on the tissue (intensity centroid), since a
    B-scan's interesting part is where the retina is, not the frame's middle.
    """
    h, w = image.shape[:2]
    if mode == "pad":
        side = max(h, w)
        return (w - side) // 2, (h - side) // 2, side
    side = min(h, w)
    weights = image.astype(np.float64)
    total = weights.sum()
    if w > h:
        centre = (weights.sum(axis=0) * np.arange(w)).sum() / total if total > 0 else w / 2
        x0 = int(np.clip(round(centre - side / 2), 0, w - side))
        return x0, 0, side
    centre = (weights.sum(axis=1) * np.arange(h)).sum() / total if total > 0 else h / 2
    y0 = int(np.clip(round(centre - side / 2), 0, h - side))
    return 0, y0, side


def take_square(image: np.ndarray, box: tuple[int, int, int]) -> np.ndarray:
    """Cut the square `box` out of `image`, padding with zeros where it reaches outside."""
    x0, y0, side = box
    h, w = image.shape[:2]
    out = np.zeros((side, side, *image.shape[2:]), image.dtype)
    sx0, sy0, sx1, sy1 = max(0, x0), max(0, y0), min(w, x0 + side), min(h, y0 + side)
    out[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = image[sy0:sy1, sx0:sx1]
    return out


def normalise_intensity(image: np.ndarray, low_percentile: float = 1.0, high_percentile: float = 99.5) -> np.ndarray:
    """Percentile stretch to 0..255: devices differ in gain; clipping the top/bottom tail ignores speckle."""
    lo, hi = np.percentile(image, [low_percentile, high_percentile])
    if hi - lo < 1e-6:
        raise NoRetinaFound("blank image (no contrast)")
    out = (image.astype(np.float32) - lo) * (255.0 / (hi - lo))
    return np.clip(out, 0, 255).astype(np.uint8)


def preprocess_oct(image: np.ndarray, params: PreprocessParams, mask: np.ndarray | None = None) -> Preprocessed:
    gray = to_gray(image)
    if gray.std() < 1.0:
        raise NoRetinaFound("blank image (no contrast)")
    box = square_box(gray, params.square_mode)
    square = take_square(gray, box)
    out = denoise_speckle(square, params.denoise, params.denoise_strength)
    out = resize_to(out, params.image_size)
    out = normalise_intensity(out, params.low_percentile, params.high_percentile)
    out_mask = None
    if mask is not None:
        out_mask = resize_to(take_square(_mask_on(gray, mask), box), params.image_size, nearest=True)
    return Preprocessed(out, out_mask)


# ============================================================================ entry point
def preprocess_image(image: np.ndarray, params: PreprocessParams, mask: np.ndarray | None = None) -> Preprocessed:
    """Fundus: RGB uint8 → S×S×3; OCT: grey or RGB uint8 → S×S. `mask` (lesions, single channel) follows
    the same geometry. Raises NoRetinaFound for frames without retina/tissue."""
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got {image.dtype}")
    if params.modality == "fundus":
        return preprocess_fundus(image, params, mask)
    return preprocess_oct(image, params, mask)


def psnr(a: np.ndarray, b: np.ndarray, region: np.ndarray | None = None) -> float:
    """Peak signal-to-noise ratio in dB between two uint8 images, optionally only over `region` pixels."""
    diff = a.astype(np.float64) - b.astype(np.float64)
    if region is not None:
        diff = diff[region]
    mse = float(np.mean(diff**2))
    return float("inf") if mse == 0 else 10 * math.log10(255.0**2 / mse)
