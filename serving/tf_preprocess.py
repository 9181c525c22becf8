"""The training preprocessing (`components.preprocess.ops`) rewritten in TensorFlow ops, for the SavedModel.

The `predict_image` signature must give a client's raw JPEG/PNG the exact treatment the training images
got, and the real `tensorflow/serving` binary runs only TensorFlow graphs — so the OpenCV steps are
mirrored here op for op, with the same parameters (`PreprocessParams.to_dict()` from the model's
`retina_model.json`) and the same pixel-centre geometry and uint8 rounding points:

Fundus (Ben Graham): thumbnail (≤512 px, area) -> retina mask (max channel > max(background_level,
background_fraction · p99), 3×3 opening) -> circle fitted (Kåsa least squares, one round of outlier
rejection) to the mask's outer outline minus the points on the frame border; a full-frame photo gets the
frame's circle -> one sub-pixel warp of the circle's box onto an n-times
oversampled canvas (bilinear, Lanczos-4 when n = 1; separable), n×n area reduction to 2r×2r -> `4·img − 4·GaussianBlur(σ = radius·sigma_ratio) + 128` with the
blur as two depthwise 1-D convolutions (reflect-101 border, OpenCV's kernel size for uint8) -> pixels
outside `rim_fraction·radius` or outside the photo set to 128 -> resize to `image_size`.

OCT: grey (BT.601 weights) -> square crop centred on the intensity centroid (or pad) -> median filter
(replicated border) -> resize -> percentile stretch (linear interpolation, as `np.percentile`).

Known differences from the OpenCV path, measured by tests/serving/test_export.py (max |Δp| ≤ 0.02 on
model outputs, PSNR bound on images): the outline is taken from each row's and column's outermost mask
pixels instead of `cv2.findContours` of the largest connected region with holes filled (same circle on
a retina with specks removed by the opening), TF's area/bicubic resize kernels differ from OpenCV's in
the last bit, and OpenCV blurs uint8 in fixed point. Non-local-means OCT denoising has no TF op:
exporting such a model is refused.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from components.common.errors import RetinaError

THUMBNAIL_SIDE = 512

DEFAULTS: dict[str, Any] = {
    "modality": "fundus",
    "image_size": 512,
    "radius": None,
    "sigma_ratio": 1 / 30,
    "image_weight": 4.0,
    "blur_weight": -4.0,
    "offset": 128.0,
    "rim_fraction": 0.9,
    "background_level": 10.0,
    "background_fraction": 0.1,
    "min_retina_fraction": 0.02,
    "denoise": "median",
    "denoise_strength": 3.0,
    "square_mode": "crop",
    "low_percentile": 1.0,
    "high_percentile": 99.5,
}


def resolve_params(modality: str, preprocessing: dict[str, Any] | None, image_size: int) -> dict[str, Any]:
    """The model's recorded parameters over the defaults of `PreprocessParams`; the model's input size wins."""
    params = dict(DEFAULTS)
    params.update({k: v for k, v in (preprocessing or {}).items() if v is not None or k == "radius"})
    params["modality"] = modality or params["modality"]
    if int(params.get("image_size") or image_size) != int(image_size):
        raise RetinaError(
            f"preprocessing image_size {params['image_size']} does not match the model input {image_size}"
        )
    params["image_size"] = int(image_size)
    if params["modality"] == "oct" and params["denoise"] == "nlm" and params["denoise_strength"] > 0:
        raise RetinaError("OCT models preprocessed with non-local-means denoising cannot be exported: "
                          "no TensorFlow op mirrors cv2.fastNlMeansDenoising (use denoise=median)")
    return params


def make_preprocess_fn(modality: str, preprocessing: dict[str, Any] | None, image_size: int) -> Callable[[Any], Any]:
    """`encoded image bytes (scalar string) -> float32 [S, S, 3] in [0, 1]`, as TF ops (use in tf.function)."""
    params = resolve_params(modality, preprocessing, image_size)

    def preprocess(image_bytes: Any) -> Any:
        import tensorflow as tf

        image = decode(image_bytes, params)
        out = preprocess_fundus(image, params) if params["modality"] == "fundus" else preprocess_oct(image, params)
        out = tf.cast(out, tf.float32) / 255.0
        if params["modality"] == "oct":
            out = tf.repeat(out[..., tf.newaxis], 3, axis=-1)
        return tf.ensure_shape(out, [params["image_size"], params["image_size"], 3])

    return preprocess


def preprocess_uint8(image: Any, params: dict[str, Any]) -> Any:
    """Decoded uint8 RGB `[H, W, 3]` -> preprocessed uint8 (fundus `[S, S, 3]`, OCT `[S, S]`); for parity tests."""
    params = resolve_params(params.get("modality", "fundus"), params, int(params.get("image_size", 512)))
    return preprocess_fundus(image, params) if params["modality"] == "fundus" else preprocess_oct(image, params)


# ============================================================================ decoding
def _reduction_margin(params: dict[str, Any]) -> float:
    """The decode margin training used: the params' own if recorded, else components.preprocess.decode's."""
    if params.get("reduction_margin"):
        return float(params["reduction_margin"])
    from components.preprocess.decode import REDUCTION_MARGIN

    return float(REDUCTION_MARGIN)


def _reduction_index(height: Any, width: Any, params: dict[str, Any]) -> Any:
    """Index into (1, 2, 4, 8): the largest DCT factor keeping the short side >= margin · image_size."""
    import tensorflow as tf

    if not params.get("reduced_decode", True):
        return tf.constant(0)
    short = tf.cast(tf.minimum(height, width), tf.float64)
    need = _reduction_margin(params) * int(params["image_size"])
    return tf.case([(short / 8 >= need, lambda: tf.constant(3)), (short / 4 >= need, lambda: tf.constant(2)),
                    (short / 2 >= need, lambda: tf.constant(1))], default=lambda: tf.constant(0))


def decode(image_bytes: Any, params: dict[str, Any]) -> Any:
    """Encoded bytes -> uint8 RGB `[H, W, 3]` (fundus) or grey `[H, W]` (OCT), like decode.decode_image.

    JPEGs are decoded at the same reduced DCT scale the training data was (`cv2.IMREAD_REDUCED_*`:
    libjpeg's own scaling, here `decode_jpeg(ratio=...)`); other formats are decoded fully and reduced
    by a linear resize, as OpenCV does for them. Undecodable bytes raise InvalidArgumentError.
    """
    import tensorflow as tf

    grey = params["modality"] == "oct"
    channels = 1 if grey else 3
    is_jpeg = tf.equal(tf.strings.substr(image_bytes, 0, 3), b"\xff\xd8\xff")

    def jpeg() -> Any:
        shape = tf.io.extract_jpeg_shape(image_bytes)
        index = _reduction_index(shape[0], shape[1], params)
        branches = [lambda r=r: tf.io.decode_jpeg(image_bytes, channels=channels, ratio=r) for r in (1, 2, 4, 8)]
        return tf.switch_case(index, branches)

    def other() -> Any:
        image = tf.io.decode_image(image_bytes, channels=0, dtype=tf.uint8, expand_animations=False)
        image = tf.cond(tf.shape(image)[-1] >= 3, lambda: image[..., :3],
                        lambda: tf.repeat(image[..., :1], 3, axis=-1))
        if grey:
            rgb = tf.cast(image, tf.float32)
            image = tf.cast(_round_u8(rgb[..., :1] * 0.299 + rgb[..., 1:2] * 0.587 + rgb[..., 2:3] * 0.114),
                            tf.uint8)
        shape = tf.shape(image)
        factor = tf.gather(tf.constant([1, 2, 4, 8]), _reduction_index(shape[0], shape[1], params))

        def reduce() -> Any:
            size = tf.stack([shape[0] // factor, shape[1] // factor])
            return tf.cast(_round_u8(tf.image.resize(tf.cast(image, tf.float32), size, method="bilinear")), tf.uint8)

        return tf.cond(factor > 1, reduce, lambda: image)

    image = tf.cond(is_jpeg, jpeg, other)
    return image[..., 0] if grey else image


# ============================================================================ shared helpers
def _round_u8(x: Any) -> Any:
    """OpenCV's saturate_cast<uchar>: round half to even, clip to 0..255 (kept in float32)."""
    import tensorflow as tf

    return tf.clip_by_value(tf.round(x), 0.0, 255.0)


def _resize(image: Any, height: Any, width: Any, shrinking: bool) -> Any:
    """cv2.resize: INTER_AREA when shrinking, bicubic when enlarging; uint8 rounding."""
    import tensorflow as tf

    method = "area" if shrinking else "bicubic"
    squeeze = image.shape.rank == 2
    x = image[..., tf.newaxis] if squeeze else image
    out = _round_u8(tf.image.resize(x, tf.stack([height, width]), method=method))
    return out[..., 0] if squeeze else out


def _percentile(values: Any, q: float) -> Any:
    """np.percentile with linear interpolation over a flat tensor."""
    import tensorflow as tf

    flat = tf.sort(tf.reshape(tf.cast(values, tf.float32), [-1]))
    n = tf.shape(flat)[0]
    pos = (q / 100.0) * tf.cast(n - 1, tf.float32)
    lo = tf.cast(tf.floor(pos), tf.int32)
    hi = tf.minimum(lo + 1, n - 1)
    frac = pos - tf.floor(pos)
    return tf.gather(flat, lo) * (1.0 - frac) + tf.gather(flat, hi) * frac


# ============================================================================ fundus
def _find_retina(image: Any, params: dict[str, Any]) -> tuple[Any, Any, Any]:
    """(cx, cy, radius) in float64 pixel-centre coordinates of `image` (see ops.find_retina)."""
    import tensorflow as tf

    shape = tf.shape(image)
    h, w = shape[0], shape[1]
    hf, wf = tf.cast(h, tf.float64), tf.cast(w, tf.float64)
    scale = tf.minimum(tf.constant(1.0, tf.float64), THUMBNAIL_SIDE / tf.maximum(hf, wf))
    tw = tf.maximum(1, tf.cast(tf.round(wf * scale), tf.int32))
    th = tf.maximum(1, tf.cast(tf.round(hf * scale), tf.int32))
    thumb = tf.cond(scale < 1.0, lambda: _resize(tf.cast(image, tf.float32), th, tw, True),
                    lambda: tf.cast(image, tf.float32))
    sx, sy = tf.cast(tw, tf.float64) / wf, tf.cast(th, tf.float64) / hf
    gray = tf.reduce_max(thumb, axis=-1)
    threshold = tf.maximum(float(params["background_fraction"]) * _percentile(gray, 99.0),
                           float(params["background_level"]))
    mask = tf.cast(gray > threshold, tf.float32)[tf.newaxis, ..., tf.newaxis]
    eroded = -tf.nn.max_pool2d(-mask, 3, 1, "SAME")  # padding never erodes, as cv2's default border
    region = tf.nn.max_pool2d(eroded, 3, 1, "SAME")[0, ..., 0] > 0.5
    tf.debugging.assert_greater_equal(
        tf.reduce_sum(tf.cast(region, tf.float64)),
        float(params["min_retina_fraction"]) * tf.cast(th * tw, tf.float64),
        message="no retina found (frame is dark or blank)",
    )
    xs, ys = _outline_points(region, th, tw)
    fx, fy = tf.cast(tw, tf.float64), tf.cast(th, tf.float64)
    inner = (xs > 1) & (xs < fx - 2) & (ys > 1) & (ys < fy - 2)
    arc_x, arc_y = tf.boolean_mask(xs, inner), tf.boolean_mask(ys, inner)
    n_points, n_arc = tf.size(xs), tf.size(arc_x)
    full_frame = tf.cast(n_arc, tf.float64) < tf.maximum(0.05 * tf.cast(n_points, tf.float64), 12.0)

    def fitted() -> tuple[Any, Any, Any]:
        cx, cy, r = _fit_circle(arc_x, arc_y)
        residual = tf.abs(tf.sqrt((arc_x - cx) ** 2 + (arc_y - cy) ** 2) - r)
        keep = residual <= tf.maximum(3.0 * _median(residual), 1.5)
        n_keep = tf.reduce_sum(tf.cast(keep, tf.int32))
        cx, cy, r = tf.cond(
            (n_keep >= 12) & (n_keep < tf.size(keep)),
            lambda: _fit_circle(tf.boolean_mask(arc_x, keep), tf.boolean_mask(arc_y, keep)),
            lambda: (cx, cy, r),
        )
        r = r + 0.5
        tf.debugging.assert_greater(r, 0.05 * tf.minimum(fx, fy), message="no retina found (implausible outline)")
        tf.debugging.assert_less(r, 2.0 * tf.maximum(fx, fy), message="no retina found (implausible outline)")
        return (cx + 0.5) / sx - 0.5, (cy + 0.5) / sy - 0.5, r / ((sx + sy) / 2)

    def frame() -> tuple[Any, Any, Any]:
        return (wf - 1) / 2, (hf - 1) / 2, tf.maximum(hf, wf) / 2

    return tf.cond(full_frame, frame, fitted)


def _outline_points(region: Any, th: Any, tw: Any) -> tuple[Any, Any]:
    """Outermost region pixel of every row (left, right) and column (top, bottom), as float64 x, y.

    These are points of the region's external outline; holes inside the retina never contribute.
    """
    import tensorflow as tf

    def extremes(rows: Any, length: Any) -> tuple[Any, Any, Any]:
        has = tf.reduce_any(rows, axis=1)
        first = tf.argmax(tf.cast(rows, tf.int32), axis=1, output_type=tf.int32)
        last = length - 1 - tf.argmax(tf.cast(rows[:, ::-1], tf.int32), axis=1, output_type=tf.int32)
        index = tf.where(has)[:, 0]
        return tf.cast(index, tf.float64), tf.cast(tf.gather(first, index), tf.float64), tf.cast(
            tf.gather(last, index), tf.float64)

    row_y, row_first, row_last = extremes(region, tw)
    col_x, col_first, col_last = extremes(tf.transpose(region), th)
    xs = tf.concat([row_first, row_last, col_x, col_x], axis=0)
    ys = tf.concat([row_y, row_y, col_first, col_last], axis=0)
    return xs, ys


def _median(values: Any) -> Any:
    import tensorflow as tf

    s = tf.sort(values)
    n = tf.size(s)
    return (tf.gather(s, (n - 1) // 2) + tf.gather(s, n // 2)) / 2


def _fit_circle(xs: Any, ys: Any) -> tuple[Any, Any, Any]:
    """Kåsa fit: x² + y² + Dx + Ey + F = 0, least squares (float64)."""
    import tensorflow as tf

    a = tf.stack([xs, ys, tf.ones_like(xs)], axis=1)
    b = -(xs**2 + ys**2)[:, tf.newaxis]
    solution = tf.linalg.lstsq(a, b, fast=False)[:, 0]
    d, e, f = solution[0], solution[1], solution[2]
    cx, cy = -d / 2, -e / 2
    return cx, cy, tf.sqrt(tf.maximum(cx**2 + cy**2 - f, 0.0))


def _crop_and_scale(image: Any, cx: Any, cy: Any, circle_r: Any, radius: int) -> tuple[Any, Any]:
    """ops.crop_and_scale: warp the circle's box (+3 px) onto an n-times oversampled canvas (n = ⌊2r / size⌋,
    bilinear; Lanczos-4 when n = 1), then an n×n area reduction to 2·radius square."""
    import tensorflow as tf

    shape = tf.shape(image)
    h, w = shape[0], shape[1]
    size = 2 * radius
    n = tf.maximum(1, tf.cast(tf.floor(2 * circle_r / size), tf.int32))
    big = n * size
    k = tf.cast(big, tf.float64) / (2 * circle_r)
    x0 = tf.maximum(0, tf.cast(tf.floor(cx - circle_r), tf.int32) - 3)
    y0 = tf.maximum(0, tf.cast(tf.floor(cy - circle_r), tf.int32) - 3)
    x1 = tf.minimum(w, tf.cast(tf.math.ceil(cx + circle_r), tf.int32) + 4)
    y1 = tf.minimum(h, tf.cast(tf.math.ceil(cy + circle_r), tf.int32) + 4)
    tf.debugging.assert_greater(x1, x0, message="no retina found (circle outside the frame)")
    tf.debugging.assert_greater(y1, y0, message="no retina found (circle outside the frame)")
    crop = tf.cast(image[y0:y1, x0:x1], tf.float32)
    half = (tf.cast(big, tf.float64) - 1) / 2
    bx = (tf.cast(x0, tf.float64) - cx) * k + half
    by = (tf.cast(y0, tf.float64) - cy) * k + half

    def warp(kind: str) -> Any:
        return _round_u8(_warp_axis(_warp_axis(crop, k, by, big, axis=0, kind=kind), k, bx, big, axis=1, kind=kind))

    canvas = tf.cond(n > 1, lambda: warp("linear"), lambda: warp("lanczos4"))
    valid_y = _valid_axis(y1 - y0, k, by, big)
    valid_x = _valid_axis(x1 - x0, k, bx, big)

    def reduce() -> tuple[Any, Any, Any]:
        small = _round_u8(tf.image.resize(canvas, [size, size], method="area"))
        return small, valid_y[::n], valid_x[::n]  # cv2 INTER_NEAREST takes each block's first pixel

    def same() -> tuple[Any, Any, Any]:
        return canvas, valid_y, valid_x

    canvas, valid_y, valid_x = tf.cond(n > 1, reduce, same)
    canvas = tf.ensure_shape(canvas, [size, size, None])
    valid = valid_y[:size, tf.newaxis] & valid_x[tf.newaxis, :size]
    return canvas, valid


def _linear_weights(t: Any) -> Any:
    import tensorflow as tf

    return tf.maximum(1.0 - tf.abs(t), 0.0)


def _lanczos4_weights(t: Any) -> Any:
    """OpenCV's Lanczos-4 taps: sinc(t)·sinc(t/4), normalised per output pixel by the caller."""
    import tensorflow as tf

    pt = math.pi * t
    safe = tf.where(tf.abs(t) < 1e-9, tf.ones_like(t), pt)
    value = tf.sin(safe) * tf.sin(safe / 4) / (safe * safe / 4)
    value = tf.where(tf.abs(t) < 1e-9, tf.ones_like(t), value)
    return tf.where(tf.abs(t) < 4, value, tf.zeros_like(t))


def _cubic_weights(t: Any) -> Any:
    """OpenCV's bicubic kernel (a = −0.75) at distance `t`."""
    import tensorflow as tf

    a = -0.75
    t = tf.abs(t)
    near = ((a + 2) * t - (a + 3)) * t * t + 1
    far = ((a * t - 5 * a) * t + 8 * a) * t - 4 * a
    return tf.where(t <= 1, near, tf.where(t < 2, far, tf.zeros_like(t)))


_KERNELS = {"linear": (0, 2), "cubic": (-1, 4), "lanczos4": (-3, 8)}  # first tap offset, number of taps


def _warp_axis(image: Any, scale: Any, shift: Any, out_size: Any, axis: int, kind: str = "cubic") -> Any:
    """One axis of cv2.warpAffine(BORDER_CONSTANT 0) for an axis-aligned matrix `u_out = scale·u_in + shift`:
    each output row/column mixes the few input ones under the interpolation kernel, taps outside the image
    count as 0. Separable, so a scale+shift warp costs two gathers instead of a dense resampling."""
    import tensorflow as tf

    first, count = _KERNELS[kind]
    length = tf.shape(image)[axis]
    u = (tf.range(out_size, dtype=tf.float64) - shift) / scale
    taps = tf.cast(tf.floor(u), tf.int32)[:, tf.newaxis] + tf.range(first, first + count)[tf.newaxis, :]
    distance = u[:, tf.newaxis] - tf.cast(taps, tf.float64)
    if kind == "linear":
        weights = _linear_weights(distance)
    elif kind == "cubic":
        weights = _cubic_weights(distance)
    else:
        weights = _lanczos4_weights(distance)
        weights = weights / tf.reduce_sum(weights, axis=1, keepdims=True)
    inside = (taps >= 0) & (taps < length)
    weights = tf.cast(tf.where(inside, weights, tf.zeros_like(weights)), tf.float32)
    gathered = tf.gather(image, tf.clip_by_value(taps, 0, length - 1), axis=axis)  # axis -> [out, taps]
    if axis == 0:
        return tf.einsum("ot,otwc->owc", weights, gathered)
    return tf.einsum("ot,hotc->hoc", weights, gathered)


def _valid_axis(length: Any, scale: Any, shift: Any, out_size: Any) -> Any:
    """Output positions whose nearest input pixel (cv2 INTER_NEAREST: floor(u + 0.5)) lies in the image."""
    import tensorflow as tf

    u = (tf.range(out_size, dtype=tf.float64) - shift) / scale
    nearest = tf.cast(tf.floor(u + 0.5), tf.int32)
    return (nearest >= 0) & (nearest < length)


def _gaussian_kernel(sigma: float) -> list[float]:
    """cv2.getGaussianKernel for uint8 images: size cvRound(σ·3·2 + 1) | 1, weights normalised."""
    ksize = int(math.floor(sigma * 3 * 2 + 1 + 0.5)) | 1
    half = (ksize - 1) / 2
    weights = [math.exp(-((i - half) ** 2) / (2 * sigma * sigma)) for i in range(ksize)]
    total = sum(weights)
    return [wgt / total for wgt in weights]


def _gaussian_blur(image: Any, sigma: float) -> Any:
    """Separable depthwise Gaussian blur with OpenCV's default border (reflect-101 = TF `REFLECT`)."""
    import tensorflow as tf

    kernel = tf.constant(_gaussian_kernel(sigma), tf.float32)
    ksize = int(kernel.shape[0])
    pad = ksize // 2
    x = tf.pad(image[tf.newaxis], [[0, 0], [pad, pad], [pad, pad], [0, 0]], mode="REFLECT")
    channels = 3
    vertical = tf.tile(tf.reshape(kernel, [ksize, 1, 1, 1]), [1, 1, channels, 1])
    horizontal = tf.tile(tf.reshape(kernel, [1, ksize, 1, 1]), [1, 1, channels, 1])
    x = tf.nn.depthwise_conv2d(x, horizontal, [1, 1, 1, 1], "VALID")
    x = tf.nn.depthwise_conv2d(x, vertical, [1, 1, 1, 1], "VALID")
    return _round_u8(x[0])


def preprocess_fundus(image: Any, params: dict[str, Any]) -> Any:
    """uint8 RGB `[H, W, 3]` -> Ben Graham preprocessed uint8-valued float32 `[S, S, 3]`."""
    import tensorflow as tf

    size = int(params["image_size"])
    radius = int(params["radius"]) if params.get("radius") else size // 2
    sigma = radius * float(params["sigma_ratio"])
    offset = float(params["offset"])
    cx, cy, circle_r = _find_retina(image, params)
    canvas, valid = _crop_and_scale(image, cx, cy, circle_r, radius)
    blurred = _gaussian_blur(canvas, sigma)
    out = _round_u8(float(params["image_weight"]) * canvas + float(params["blur_weight"]) * blurred + offset)
    work = 2 * radius
    centre = (work - 1) / 2
    coords = tf.range(work, dtype=tf.float32) - centre
    inside = coords[tf.newaxis, :] ** 2 + coords[:, tf.newaxis] ** 2 <= (float(params["rim_fraction"]) * radius) ** 2
    keep = (inside & valid)[..., tf.newaxis]
    out = tf.where(keep, out, float(round(offset)))
    if work != size:
        out = _resize(out, size, size, work > size)
    return out


# ============================================================================ OCT
def _median_filter(image: Any, ksize: int) -> Any:
    """cv2.medianBlur: k×k median with a replicated border."""
    import tensorflow as tf

    pad = ksize // 2
    shape = tf.shape(image)
    rows = tf.clip_by_value(tf.range(-pad, shape[0] + pad), 0, shape[0] - 1)
    cols = tf.clip_by_value(tf.range(-pad, shape[1] + pad), 0, shape[1] - 1)
    padded = tf.gather(tf.gather(image, rows, axis=0), cols, axis=1)
    patches = tf.image.extract_patches(padded[tf.newaxis, ..., tf.newaxis], [1, ksize, ksize, 1], [1, 1, 1, 1],
                                       [1, 1, 1, 1], "VALID")[0]
    return tf.sort(patches, axis=-1)[..., (ksize * ksize) // 2]


def preprocess_oct(image: Any, params: dict[str, Any]) -> Any:
    """uint8 grey `[H, W]` or RGB `[H, W, 3]` -> preprocessed uint8-valued float32 `[S, S]`."""
    import tensorflow as tf

    size = int(params["image_size"])
    if image.shape.rank == 2:
        gray = tf.cast(image, tf.float32)
    else:
        rgb = tf.cast(image, tf.float32)
        gray = _round_u8(rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114)
    tf.debugging.assert_greater_equal(tf.math.reduce_std(gray), 1.0, message="blank image (no contrast)")
    shape = tf.shape(gray)
    h, w = shape[0], shape[1]
    if params["square_mode"] == "pad":
        side = tf.maximum(h, w)
        x0, y0 = (w - side) // 2, (h - side) // 2
        square = tf.pad(gray, [[-y0, side - h + y0], [-x0, side - w + x0]])
    else:
        side = tf.minimum(h, w)
        total = tf.reduce_sum(tf.cast(gray, tf.float64))

        def start(profile: Any, length: Any) -> Any:
            positions = tf.range(length, dtype=tf.float64)
            centre = tf.where(total > 0, tf.reduce_sum(profile * positions) / tf.maximum(total, 1e-12),
                              tf.cast(length, tf.float64) / 2)
            return tf.cast(tf.clip_by_value(tf.round(centre - tf.cast(side, tf.float64) / 2), 0.0,
                                            tf.cast(length - side, tf.float64)), tf.int32)

        g64 = tf.cast(gray, tf.float64)
        x0 = tf.cond(w > h, lambda: start(tf.reduce_sum(g64, axis=0), w), lambda: tf.constant(0))
        y0 = tf.cond(w > h, lambda: tf.constant(0), lambda: start(tf.reduce_sum(g64, axis=1), h))
        square = gray[y0:y0 + side, x0:x0 + side]
    strength = float(params["denoise_strength"])
    if params["denoise"] == "median" and strength > 0:
        square = _median_filter(square, max(3, int(round(strength)) | 1))
    side = tf.shape(square)[0]
    out = tf.cond(tf.equal(side, size), lambda: square,
                  lambda: tf.cond(side > size, lambda: _resize(square, size, size, True),
                                  lambda: _resize(square, size, size, False)))
    lo = _percentile(out, float(params["low_percentile"]))
    hi = _percentile(out, float(params["high_percentile"]))
    tf.debugging.assert_greater(hi - lo, 1e-6, message="blank image (no contrast)")
    stretched = (out - lo) * (255.0 / (hi - lo))
    return tf.floor(tf.clip_by_value(stretched, 0.0, 255.0))  # astype(uint8) truncates
