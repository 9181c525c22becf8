"""The training preprocessing (`components.preprocess`) as TensorFlow ops, for the SavedModel's raw-image
signatures: the real `tensorflow/serving` binary runs only TF graphs, so each step of the Beam path is
mirrored here, step for step, from the one parameter object (`components.preprocess.params.PreprocessParams`,
read from the model's recorded `preprocessing`); no parameter, default or rule is written here twice.

Input policy (`components.preprocess.header`, same order, same reasons): the JPEG marker walk / PNG IHDR
read the header in-graph; empty, unknown, corrupt, > `max_pixels` (checked before any pixel is decoded),
< 16 px, not 8-bit, alpha, CMYK, grey-for-fundus and truncated files fail the request with the reason text
the Beam path writes to its dead letter. EXIF orientation is applied by the same table; ICC profiles are
ignored by both decoders. JPEGs decode at the DCT scale `PreprocessParams.decode_reduction` picks
(`decode_jpeg(ratio=…)`, the same libjpeg scaling as `cv2.IMREAD_REDUCED_*`); PNGs decode fully and are
reduced by the same exact block mean.

Fundus: thumbnail by integer block means (2×2 first; OpenCV's uint8 rounding: half up for 2×2, half even
else) -> retina mask -> circle (Kåsa fit, one outlier round) -> Gaussian anti-aliasing of the crop (ratio
≥ 1.5) -> bilinear sub-pixel warp at n× the work size, n×n block mean -> `image_weight·img + blur_weight·blur + offset` with the blur on a `blur_reduction`-times
reduced float copy (exact block mean, Gaussian of OpenCV's float kernel size, reflect-101 border, bilinear back up) ->
rim and outside-the-photo pixels set to `offset` -> resize to `image_size` when `radius` is set.
OCT: grey (JPEG: the decoder's luma; PNG: OpenCV's fixed-point BT.601) -> square crop on the intensity
centroid (or pad) -> median filter -> resize -> percentile stretch.

Known differences, bounded by tests/preprocess/test_parity.py (bound documented there): the outline is
each row's and column's outermost mask pixel instead of `cv2.findContours` (same circle to a fraction of
a pixel), OpenCV's warp quantises sub-pixel positions to 1/32 px, non-integer area/bicubic resizes
(only with a non-default `radius`) differ in the last bit. Non-local-means OCT denoising has no TF op:
exporting such a model is refused.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from components.common.errors import RetinaError
from components.preprocess import header as policy
from components.preprocess.params import (
    ANTIALIAS_MIN_RATIO,
    ANTIALIAS_SIGMA,
    CANVAS_RATIO,
    DCT_FACTORS,
    MAX_HALVINGS,
    PreprocessParams,
    gaussian_ksize,
    gaussian_taps,
)

THUMBNAIL_SIDE = 512  # components.preprocess.ops.THUMBNAIL_SIDE (ops imports OpenCV; checked by a test)


def check_exportable(params: PreprocessParams) -> PreprocessParams:
    if params.modality == "oct" and params.denoise == "nlm" and params.denoise_strength > 0:
        raise RetinaError("OCT models preprocessed with non-local-means denoising cannot be exported: "
                          "no TensorFlow op mirrors cv2.fastNlMeansDenoising (use denoise=median)")
    return params


def make_preprocess_fn(params: PreprocessParams | str, recorded: dict[str, Any] | None = None,
                       image_size: int | None = None) -> Callable[[Any], Any]:
    """`encoded image bytes (scalar string) -> float32 [S, S, 3] in [0, 1]`, as TF ops (use in tf.function).

    Takes the parameter object, or (modality, a model's recorded `preprocessing`, its input size), which
    `PreprocessParams.for_model` turns into one."""
    if not isinstance(params, PreprocessParams):
        params = PreprocessParams.for_model(params, int(image_size or 0), recorded)
    check_exportable(params)
    size = params.image_size

    def preprocess(image_bytes: Any) -> Any:
        import tensorflow as tf

        out = preprocess_bytes_uint8(image_bytes, params)
        out = tf.cast(out, tf.float32) / 255.0
        if params.modality == "oct":
            out = tf.repeat(out[..., tf.newaxis], 3, axis=-1)
        return tf.ensure_shape(out, [size, size, 3])

    return preprocess


def preprocess_bytes_uint8(image_bytes: Any, params: PreprocessParams) -> Any:
    """Encoded bytes -> preprocessed uint8-valued float32 (fundus `[S, S, 3]`, OCT `[S, S]`)."""
    image = decode(image_bytes, params)
    return preprocess_fundus(image, params) if params.modality == "fundus" else preprocess_oct(image, params)


# ============================================================================ header (components.preprocess.header)
def _bytes_at(data: Any, pos: Any, n: int) -> Any:
    """int64 `[n]`: the bytes of `data` at `pos`, zero past the end (like header._u16 reading nothing)."""
    import tensorflow as tf

    length = tf.cast(tf.strings.length(data), tf.int64)
    pos = tf.clip_by_value(tf.cast(pos, tf.int64), 0, length)
    chunk = tf.io.decode_raw(tf.strings.substr(data, pos, tf.constant(n, tf.int64)), tf.uint8)
    return tf.ensure_shape(tf.cast(tf.pad(chunk, [[0, n - tf.shape(chunk)[0]]]), tf.int64), [n])


def _uint(b: Any, little: Any) -> Any:
    """Unsigned integer of the byte vector `b` (int64), little- or big-endian."""
    import tensorflow as tf

    n = int(b.shape[0])
    weights = tf.constant([256**i for i in range(n)], tf.int64)
    return tf.where(little, tf.reduce_sum(b * weights), tf.reduce_sum(b * weights[::-1]))


def _exif_orientation(data: Any, tiff: Any) -> Any:
    """header.exif_orientation: IFD0's orientation tag, 1 if absent or out of 1..8."""
    import tensorflow as tf

    head = _bytes_at(data, tiff, 8)
    little = (head[0] == 0x49) & (head[1] == 0x49)
    ifd = tiff + _uint(head[4:8], little)
    count = tf.minimum(_uint(_bytes_at(data, ifd, 2), little), policy.MAX_IFD_ENTRIES)
    entries = tf.reshape(_bytes_at(data, ifd + 2, 12 * policy.MAX_IFD_ENTRIES), [policy.MAX_IFD_ENTRIES, 12])
    lo = tf.where(little, entries[:, 0] + 256 * entries[:, 1], 256 * entries[:, 0] + entries[:, 1])
    value = tf.where(little, entries[:, 8] + 256 * entries[:, 9], 256 * entries[:, 8] + entries[:, 9])
    hit = (lo == policy.ORIENTATION_TAG) & (tf.range(policy.MAX_IFD_ENTRIES, dtype=tf.int64) < count)
    first = tf.gather(value, tf.argmax(tf.cast(hit, tf.int32), output_type=tf.int64))
    found = tf.reduce_any(hit) & (first >= 1) & (first <= 8)
    return tf.where(found, first, tf.constant(1, tf.int64))


def _jpeg_header(data: Any) -> dict[str, Any]:
    """header._jpeg_header as a tf.while_loop over the marker segments."""
    import tensorflow as tf

    n = tf.minimum(tf.cast(tf.strings.length(data), tf.int64), policy.HEADER_SCAN_BYTES)
    sof = tf.constant(policy.SOF_MARKERS, tf.int64)
    standalone = tf.constant(policy.STANDALONE_MARKERS, tf.int64)
    exif = tf.constant(list(policy.EXIF_MAGIC), tf.int64)

    def body(pos: Any, done: Any, found: Any, orientation: Any, frame: Any) -> tuple:
        b = _bytes_at(data, pos, 10)
        marker, length = b[1], b[2] * 256 + b[3]
        stop = (b[0] != 0xFF) | (marker == 0xD9) | (marker == 0xDA)
        skip = (marker == 0xFF) | tf.reduce_any(tf.equal(standalone, marker))
        segment = ~stop & ~skip
        is_exif = segment & (marker == 0xE1) & tf.reduce_all(tf.equal(b[4:10], exif))
        orientation = tf.cond(is_exif, lambda: _exif_orientation(data, pos + 10), lambda: orientation)
        is_frame = segment & tf.reduce_any(tf.equal(sof, marker)) & (pos + 10 <= n)
        frame = tf.where(is_frame, tf.stack([b[4], b[5] * 256 + b[6], b[7] * 256 + b[8], b[9]]), frame)
        step = tf.where(marker == 0xFF, tf.constant(1, tf.int64), tf.where(skip, tf.constant(2, tf.int64), 2 + length))
        return pos + step, stop | is_frame, found | is_frame, orientation, frame

    def cond(pos: Any, done: Any, *_: Any) -> Any:
        return ~done & (pos + 4 <= n)

    start = (tf.constant(2, tf.int64), tf.constant(False), tf.constant(False), tf.constant(1, tf.int64),
             tf.zeros([4], tf.int64))
    _, _, found, orientation, frame = tf.while_loop(cond, body, start)
    return {"ok": found, "bit_depth": frame[0], "height": frame[1], "width": frame[2], "channels": frame[3],
            "alpha": tf.constant(False), "orientation": orientation}


def _png_header(data: Any) -> dict[str, Any]:
    import tensorflow as tf

    b = _bytes_at(data, 0, 33)
    ihdr = tf.reduce_all(tf.equal(b[12:16], tf.constant(list(b"IHDR"), tf.int64)))
    colour = b[25]
    channels = tf.gather(tf.constant([1, 0, 3, 3, 2, 0, 4], tf.int64), tf.clip_by_value(colour, 0, 6))
    ok = (tf.strings.length(data) >= 33) & ihdr & (colour <= 6) & (channels > 0)
    big = tf.constant(False)
    return {"ok": ok, "width": _uint(b[16:20], big), "height": _uint(b[20:24], big), "bit_depth": b[24],
            "channels": channels, "alpha": (colour == 4) | (colour == 6), "orientation": tf.constant(1, tf.int64)}


def _complete(data: Any, is_jpeg: Any) -> Any:
    """header.is_complete: after trailing NUL/whitespace, a JPEG ends with FFD9; a PNG's tail holds IEND."""
    import tensorflow as tf

    n = tf.cast(tf.strings.length(data), tf.int64)
    tail = _bytes_at(data, tf.maximum(n - 64, 0), 64)[: tf.minimum(n, 64)]
    pad = tf.reduce_any(tf.equal(tail[:, tf.newaxis], tf.constant([0, 13, 10, 9, 32], tf.int64)), axis=1)
    # trailing padding bytes = index of the first kept byte from the end (a sentinel: all padding -> all of it)
    trailing = tf.argmax(tf.concat([tf.cast(~pad[::-1], tf.int32), [1]], 0), output_type=tf.int64)
    keep = tf.size(tail, out_type=tf.int64) - trailing
    tail = tail[:keep]
    padded = tf.concat([tf.zeros([4], tf.int64), tail], 0)
    eoi = (padded[-2] == 0xFF) & (padded[-1] == 0xD9)
    windows = tf.stack([padded[i : tf.size(padded) - 3 + i] for i in range(4)], axis=1)
    iend = tf.reduce_any(tf.reduce_all(tf.equal(windows, tf.constant(list(b"IEND"), tf.int64)), axis=1))
    return tf.where(is_jpeg, eoi, iend)


def _reasons(data: Any, params: PreprocessParams) -> tuple[Any, Any, dict[str, Any]]:
    """(first failing rule's reason or "", is_jpeg, header): header.read_header + check_header + is_complete."""
    import tensorflow as tf

    is_jpeg = tf.strings.substr(data, 0, 3) == policy.JPEG_MAGIC
    is_png = tf.strings.substr(data, 0, 8) == policy.PNG_MAGIC
    known = is_jpeg | is_png
    head = tf.cond(is_jpeg, lambda: _jpeg_header(data),
                   lambda: tf.cond(is_png, lambda: _png_header(data), lambda: _no_header()))
    w, h, channels = head["width"], head["height"], head["channels"]
    rules = [
        (tf.strings.length(data) == 0, policy.EMPTY),
        (~known, policy.NOT_AN_IMAGE),
        (is_jpeg & ~head["ok"], policy.CORRUPT_JPEG_HEADER),
        (is_png & ~head["ok"], policy.CORRUPT_PNG_HEADER),
        (w * h > params.max_pixels, policy.too_large(params.max_pixels)),
        (tf.minimum(w, h) < policy.MIN_SIDE, policy.TOO_SMALL),
        (head["bit_depth"] != 8, policy.NOT_8_BIT),
        (head["alpha"], policy.ALPHA),
        ((channels != 1) & (channels != 3), policy.NOT_RGB_JPEG),
        (tf.constant(params.modality == "fundus") & (channels == 1), policy.GRAYSCALE),
        (is_jpeg & ~_complete(data, True), policy.TRUNCATED_JPEG),
        (is_png & ~_complete(data, False), policy.TRUNCATED_PNG),
    ]
    failed = tf.stack([bad for bad, _ in rules] + [tf.constant(True)])
    texts = tf.constant([reason for _, reason in rules] + [""])
    return tf.gather(texts, tf.argmax(tf.cast(failed, tf.int32))), is_jpeg, head


def _no_header() -> dict[str, Any]:
    import tensorflow as tf

    zero = tf.constant(0, tf.int64)
    return {"ok": tf.constant(False), "width": zero, "height": zero, "bit_depth": zero, "channels": zero,
            "alpha": tf.constant(False), "orientation": tf.constant(1, tf.int64)}


# ============================================================================ decoding (components.preprocess.decode)
def _round_u8(x: Any) -> Any:
    """OpenCV's saturate_cast<uchar>: round half to even, clip to 0..255 (kept in float32)."""
    import tensorflow as tf

    return tf.clip_by_value(tf.round(x), 0.0, 255.0)


def area_reduce(image: Any, factor: Any, uint8: bool = True) -> Any:
    """decode.area_reduce: mean over factor×factor blocks (trailing partial blocks dropped), float32 in and
    out; `uint8` rounds as OpenCV's INTER_AREA does for an integer ratio (half up for 2, half even else)."""
    import tensorflow as tf

    def reduce() -> Any:
        shape = tf.shape(image)
        h, w = shape[0] // factor, shape[1] // factor
        x = image if image.shape.rank == 3 else image[..., tf.newaxis]
        blocks = tf.reshape(x[: h * factor, : w * factor], [h, factor, w, factor, tf.shape(x)[-1]])
        mean = tf.reduce_mean(blocks, axis=[1, 3])
        if uint8:
            mean = tf.where(tf.equal(factor, 2), tf.floor(mean + 0.5), tf.round(mean))
        return mean if image.shape.rank == 3 else mean[..., 0]

    return tf.cond(factor > 1, reduce, lambda: tf.identity(image))


def _orient(image: Any, orientation: Any) -> Any:
    """decode.orient with header.ORIENTATION_STEPS."""
    import tensorflow as tf

    steps = [policy.ORIENTATION_STEPS.get(i, policy.ORIENTATION_STEPS[1]) for i in range(9)]
    transpose, flip_rows, flip_cols = (tf.gather(tf.constant([s[j] for s in steps]), orientation) for j in range(3))
    perm = [1, 0, 2] if image.shape.rank == 3 else [1, 0]
    image = tf.cond(transpose, lambda: tf.transpose(image, perm), lambda: image)
    image = tf.cond(flip_rows, lambda: image[::-1], lambda: image)
    return tf.cond(flip_cols, lambda: image[:, ::-1], lambda: image)


def _reduction_index(height: Any, width: Any, params: PreprocessParams) -> Any:
    """Index into (1, 2, 4, 8) of PreprocessParams.decode_reduction."""
    import tensorflow as tf

    if not params.reduced_decode:
        return tf.constant(0)
    short = tf.cast(tf.minimum(height, width), tf.float64)
    need = params.decode_oversample * params.image_size
    cases = [(short / f >= need, lambda f=f: tf.constant(int(math.log2(f)))) for f in DCT_FACTORS]
    return tf.case(cases, default=lambda: tf.constant(0))


def _gray_bt601(rgb: Any) -> Any:
    """cv2.cvtColor(RGB2GRAY) for uint8: (4899·R + 9617·G + 1868·B + 2¹³) >> 14."""
    import tensorflow as tf

    x = tf.cast(rgb, tf.int32)
    return tf.bitwise.right_shift(x[..., 0] * 4899 + x[..., 1] * 9617 + x[..., 2] * 1868 + 8192, 14)


def decode(image_bytes: Any, params: PreprocessParams) -> Any:
    """decode.decode_for: uint8 RGB `[H, W, 3]` (fundus) or grey `[H, W]` (OCT), as float32.

    Every header rule is checked before a pixel is decoded; a refused image fails with its reason."""
    import tensorflow as tf

    reason, is_jpeg, head = _reasons(image_bytes, params)
    check = tf.debugging.Assert(tf.equal(reason, ""), [reason])
    grey = params.modality == "oct"
    index = _reduction_index(head["height"], head["width"], params)

    def jpeg() -> Any:
        # INTEGER_ACCURATE is libjpeg's ISLOW IDCT, what OpenCV decodes with; TF's default (IFAST) is off by
        # up to 3 grey levels at full scale (the scaled decodes are the same either way). OCT B-scans decode
        # at full scale, so the default made the served OCT model see other pixels than training did.
        branches = [lambda r=r: tf.io.decode_jpeg(image_bytes, channels=1 if grey else 3, ratio=r,
                                                  dct_method="INTEGER_ACCURATE")
                    for r in (1, 2, 4, 8)]
        image = tf.cast(tf.switch_case(index, branches), tf.float32)
        return image[..., 0] if grey else image

    def png() -> Any:
        image = tf.io.decode_png(image_bytes, channels=0 if grey else 3, dtype=tf.uint8)
        if grey:
            image = tf.cond(tf.shape(image)[-1] == 1, lambda: tf.cast(image[..., 0], tf.int32),
                            lambda: _gray_bt601(image))
        factor = tf.gather(tf.constant([1, 2, 4, 8]), index)
        return area_reduce(tf.cast(image, tf.float32), factor)

    with tf.control_dependencies([check]):
        image = tf.cond(is_jpeg, jpeg, png)
    return _orient(image, head["orientation"])


# ============================================================================ shared helpers
def _resize(image: Any, height: Any, width: Any, shrinking: bool) -> Any:
    """ops.resize_to: area when shrinking, bicubic when enlarging; uint8 rounding."""
    import tensorflow as tf

    squeeze = image.shape.rank == 2
    x = image[..., tf.newaxis] if squeeze else image
    out = _round_u8(tf.image.resize(x, tf.stack([height, width]), method="area" if shrinking else "bicubic"))
    return out[..., 0] if squeeze else out


def _percentile(values: Any, q: float) -> Any:
    """np.percentile with linear interpolation over a flat tensor (ops.percentile_u8 for uint8 values)."""
    import tensorflow as tf

    flat = tf.sort(tf.reshape(tf.cast(values, tf.float32), [-1]))
    n = tf.shape(flat)[0]
    pos = (q / 100.0) * tf.cast(n - 1, tf.float32)
    lo = tf.cast(tf.floor(pos), tf.int32)
    hi = tf.minimum(lo + 1, n - 1)
    frac = pos - tf.floor(pos)
    return tf.gather(flat, lo) * (1.0 - frac) + tf.gather(flat, hi) * frac


# ============================================================================ fundus (components.preprocess.ops)
def _retina_mask(thumb: Any, params: PreprocessParams) -> Any:
    """ops._largest_outline's mask: max channel > max(background_level, background_fraction · p99), 3×3 opening."""
    import tensorflow as tf

    gray = tf.reduce_max(thumb, axis=-1)
    threshold = tf.maximum(params.background_fraction * _percentile(gray, 99.0), params.background_level)
    mask = tf.cast(gray > threshold, tf.float32)[tf.newaxis, ..., tf.newaxis]
    eroded = -tf.nn.max_pool2d(-mask, 3, 1, "SAME")  # padding never erodes, as cv2's default border
    return tf.nn.max_pool2d(eroded, 3, 1, "SAME")[0, ..., 0] > 0.5


def _find_retina(image: Any, params: PreprocessParams) -> tuple[Any, Any, Any]:
    """ops.find_retina: (cx, cy, radius) in float64 pixel-centre coordinates of `image`."""
    import tensorflow as tf

    shape = tf.shape(image)
    hf, wf = tf.cast(shape[0], tf.float64), tf.cast(shape[1], tf.float64)
    factor = tf.maximum(1, tf.cast(tf.math.ceil(tf.maximum(hf, wf) / THUMBNAIL_SIDE), tf.int32))
    thumb = block_mean(image, factor)
    region = _retina_mask(thumb, params)
    th, tw = tf.shape(region)[0], tf.shape(region)[1]
    tf.debugging.assert_greater_equal(
        tf.reduce_sum(tf.cast(region, tf.float64)), params.min_retina_fraction * tf.cast(th * tw, tf.float64),
        message="no retina found (frame is dark or blank)")
    xs, ys = _outline_points(region, th, tw)
    fx, fy = tf.cast(tw, tf.float64), tf.cast(th, tf.float64)
    inner = (xs > 1) & (xs < fx - 2) & (ys > 1) & (ys < fy - 2)
    arc_x, arc_y = tf.boolean_mask(xs, inner), tf.boolean_mask(ys, inner)
    full_frame = tf.cast(tf.size(arc_x), tf.float64) < tf.maximum(0.05 * tf.cast(tf.size(xs), tf.float64), 12.0)
    f = tf.cast(factor, tf.float64)

    def fitted() -> tuple[Any, Any, Any]:
        cx, cy, r = _fit_circle(arc_x, arc_y)
        residual = tf.abs(tf.sqrt((arc_x - cx) ** 2 + (arc_y - cy) ** 2) - r)
        keep = residual <= tf.maximum(3.0 * _median(residual), 1.5)
        n_keep = tf.reduce_sum(tf.cast(keep, tf.int32))
        cx, cy, r = tf.cond((n_keep >= 12) & (n_keep < tf.size(keep)),
                            lambda: _fit_circle(tf.boolean_mask(arc_x, keep), tf.boolean_mask(arc_y, keep)),
                            lambda: (cx, cy, r))
        r = r + 0.5
        tf.debugging.assert_greater(r, 0.05 * tf.minimum(fx, fy), message="no retina found (implausible outline)")
        tf.debugging.assert_less(r, 2.0 * tf.maximum(fx, fy), message="no retina found (implausible outline)")
        return (cx + 0.5) * f - 0.5, (cy + 0.5) * f - 0.5, r * f

    def frame() -> tuple[Any, Any, Any]:
        return (wf - 1) / 2, (hf - 1) / 2, tf.maximum(hf, wf) / 2

    return tf.cond(full_frame, frame, fitted)


def block_mean(image: Any, factor: Any) -> Any:
    """decode.block_mean: exact 2×2 means while the factor is even (params.halving_steps), then the rest."""
    import tensorflow as tf

    rest = tf.convert_to_tensor(factor)
    for _ in range(MAX_HALVINGS):
        even = tf.equal(rest % 2, 0)
        image = tf.cond(even, lambda image=image: area_reduce(image, tf.constant(2)), lambda image=image: image)
        rest = tf.where(even, rest // 2, rest)
    return area_reduce(image, rest)


def _outline_points(region: Any, th: Any, tw: Any) -> tuple[Any, Any]:
    """Outermost region pixel of every row (left, right) and column (top, bottom), as float64 x, y:
    points of the region's external outline; holes inside the retina never contribute."""
    import tensorflow as tf

    def extremes(rows: Any, length: Any) -> tuple[Any, Any, Any]:
        has = tf.reduce_any(rows, axis=1)
        first = tf.argmax(tf.cast(rows, tf.int32), axis=1, output_type=tf.int32)
        last = length - 1 - tf.argmax(tf.cast(rows[:, ::-1], tf.int32), axis=1, output_type=tf.int32)
        index = tf.where(has)[:, 0]
        return (tf.cast(index, tf.float64), tf.cast(tf.gather(first, index), tf.float64),
                tf.cast(tf.gather(last, index), tf.float64))

    row_y, row_first, row_last = extremes(region, tw)
    col_x, col_first, col_last = extremes(tf.transpose(region), th)
    return (tf.concat([row_first, row_last, col_x, col_x], axis=0),
            tf.concat([row_y, row_y, col_first, col_last], axis=0))


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
    cx, cy = -solution[0] / 2, -solution[1] / 2
    return cx, cy, tf.sqrt(tf.maximum(cx**2 + cy**2 - solution[2], 0.0))


def _warp_axis(image: Any, scale: Any, shift: Any, out_size: Any, axis: int) -> Any:
    """One axis of cv2.warpAffine(INTER_LINEAR, BORDER_CONSTANT 0) for `u_out = scale·u_in + shift`: each output
    row/column mixes the two nearest input ones (taps outside count as 0); sub-pixel positions quantised to
    1/32 px as OpenCV's interpolation table does. Separable: two gathers instead of a dense resampling."""
    import tensorflow as tf

    length = tf.shape(image)[axis]
    u = (tf.range(out_size, dtype=tf.float64) - shift) / scale
    u = tf.floor(u * 32.0 + 0.5) / 32.0
    taps = tf.cast(tf.floor(u), tf.int32)[:, tf.newaxis] + tf.range(0, 2)[tf.newaxis, :]
    weights = tf.maximum(1.0 - tf.abs(u[:, tf.newaxis] - tf.cast(taps, tf.float64)), 0.0)
    inside = (taps >= 0) & (taps < length)
    weights = tf.cast(tf.where(inside, weights, tf.zeros_like(weights)), tf.float32)
    gathered = tf.gather(image, tf.clip_by_value(taps, 0, length - 1), axis=axis)  # axis -> [out, taps]
    if axis == 0:
        return tf.einsum("ot,otwc->owc", weights, gathered)
    return tf.einsum("ot,hotc->hoc", weights, gathered)


def _valid_axis(length: Any, scale: Any, shift: Any, out_size: Any) -> Any:
    """ops._inside: output positions whose nearest input pixel (floor(u + 0.5)) lies in the crop."""
    import tensorflow as tf

    nearest = tf.floor((tf.range(out_size, dtype=tf.float64) - shift) / scale + 0.5)
    return (nearest >= 0) & (nearest < tf.cast(length, tf.float64))


def _antialias(crop: Any, ratio: Any) -> Any:
    """params.antialias_kernel applied as ops.crop_and_scale does (cv2.GaussianBlur with those taps,
    reflect-101, uint8 result): a Gaussian of σ = ANTIALIAS_SIGMA · ratio with round(2σ) taps a side, as
    5 taps with zeros outside (the ratio stays < 3.75, so σ < 1.05 and at most 2 taps a side); none below the threshold."""
    import tensorflow as tf

    def filtered() -> Any:
        sigma = ANTIALIAS_SIGMA * ratio
        half = tf.maximum(tf.constant(1.0, tf.float64), tf.floor(2 * sigma + 0.5))
        offsets = tf.range(-2, 3, dtype=tf.float64)
        weights = tf.where(tf.abs(offsets) <= half, tf.exp(-(offsets**2) / (2 * sigma * sigma)), 0.0)
        kernel = tf.cast(weights / tf.reduce_sum(weights), tf.float32)
        x = tf.pad(crop[tf.newaxis], [[0, 0], [2, 2], [2, 2], [0, 0]], mode="REFLECT")
        horizontal = tf.tile(tf.reshape(kernel, [1, 5, 1, 1]), [1, 1, 3, 1])
        vertical = tf.tile(tf.reshape(kernel, [5, 1, 1, 1]), [1, 1, 3, 1])
        x = tf.nn.depthwise_conv2d(x, horizontal, [1, 1, 1, 1], "VALID")
        return _round_u8(tf.nn.depthwise_conv2d(x, vertical, [1, 1, 1, 1], "VALID")[0])

    return tf.cond(ratio >= ANTIALIAS_MIN_RATIO, filtered, lambda: tf.identity(crop))


def _crop_and_scale(image: Any, cx: Any, cy: Any, circle_r: Any, radius: int) -> tuple[Any, Any]:
    """ops.crop_and_scale: the circle's box (+3 px), low-passed when the warp shrinks by ≥ 1.5, bilinear warp
    onto an n-times canvas (n = params.canvas_multiple), uint8 rounding, then the n×n block mean down to the
    2·radius square; `valid` marks the photo's own pixels."""
    import tensorflow as tf

    shape = tf.shape(image)
    size = 2 * radius
    n = tf.maximum(1, tf.cast(tf.floor(2 * circle_r / size / CANVAS_RATIO + 0.5), tf.int32))
    big = n * size
    k = tf.cast(big, tf.float64) / (2 * circle_r)
    x0 = tf.maximum(0, tf.cast(tf.floor(cx - circle_r), tf.int32) - 3)
    y0 = tf.maximum(0, tf.cast(tf.floor(cy - circle_r), tf.int32) - 3)
    x1 = tf.minimum(shape[1], tf.cast(tf.math.ceil(cx + circle_r), tf.int32) + 4)
    y1 = tf.minimum(shape[0], tf.cast(tf.math.ceil(cy + circle_r), tf.int32) + 4)
    tf.debugging.assert_greater(x1, x0, message="no retina found (circle outside the frame)")
    tf.debugging.assert_greater(y1, y0, message="no retina found (circle outside the frame)")
    crop = _antialias(image[y0:y1, x0:x1], 1 / k)
    half = (tf.cast(big, tf.float64) - 1) / 2
    bx = (tf.cast(x0, tf.float64) - cx) * k + half
    by = (tf.cast(y0, tf.float64) - cy) * k + half
    canvas = _round_u8(_warp_axis(_warp_axis(crop, k, by, big, axis=0), k, bx, big, axis=1))
    canvas = tf.ensure_shape(area_reduce(canvas, n), [size, size, 3])
    valid_y = _valid_axis(y1 - y0, k, by, big)[::n][:size]
    valid_x = _valid_axis(x1 - x0, k, bx, big)[::n][:size]
    return canvas, valid_y[:, tf.newaxis] & valid_x[tf.newaxis, :]


def _gaussian_kernel(sigma: float) -> tuple[float, ...]:
    """cv2.getGaussianKernel(gaussian_ksize(σ), σ) for float images."""
    return gaussian_taps(sigma, gaussian_ksize(sigma) // 2)


def _gaussian_blur(image: Any, sigma: float) -> Any:
    """Separable depthwise Gaussian blur (float) with OpenCV's default border (reflect-101 = TF `REFLECT`)."""
    import tensorflow as tf

    kernel = tf.constant(_gaussian_kernel(sigma), tf.float32)
    ksize = int(kernel.shape[0])
    pad = ksize // 2
    x = image[tf.newaxis]
    # reflect-101 padding needs pad < side; a huge σ on a small canvas repeats the reflection as OpenCV does
    while pad > 0:
        step = min(pad, int(image.shape[0]) - 1)
        x = tf.pad(x, [[0, 0], [step, step], [step, step], [0, 0]], mode="REFLECT")
        pad -= step
    vertical = tf.tile(tf.reshape(kernel, [ksize, 1, 1, 1]), [1, 1, 3, 1])
    horizontal = tf.tile(tf.reshape(kernel, [1, ksize, 1, 1]), [1, 1, 3, 1])
    x = tf.nn.depthwise_conv2d(x, horizontal, [1, 1, 1, 1], "VALID")
    return tf.nn.depthwise_conv2d(x, vertical, [1, 1, 1, 1], "VALID")[0]


def _local_average(canvas: Any, params: PreprocessParams) -> Any:
    """ops.local_average: exact float block mean by `blur_reduction`, Gaussian σ/reduction, bilinear back up."""
    import tensorflow as tf

    reduction = params.blur_reduction
    size = 2 * params.work_radius
    small = area_reduce(canvas, tf.constant(reduction), uint8=False) if reduction > 1 else canvas
    small = tf.ensure_shape(small, [size // reduction, size // reduction, 3])
    blurred = _gaussian_blur(small, params.sigma / reduction)
    if reduction > 1:
        blurred = tf.image.resize(blurred, [size, size], method="bilinear")
    return blurred


def preprocess_fundus(image: Any, params: PreprocessParams) -> Any:
    """uint8-valued RGB `[H, W, 3]` -> Ben Graham preprocessed uint8-valued float32 `[S, S, 3]`."""
    import tensorflow as tf

    radius = params.work_radius
    cx, cy, circle_r = _find_retina(image, params)
    canvas, valid = _crop_and_scale(image, cx, cy, circle_r, radius)
    blurred = _local_average(canvas, params)
    out = _round_u8(params.image_weight * canvas + params.blur_weight * blurred + params.offset)
    work = 2 * radius
    coords = tf.range(work, dtype=tf.float64) - (work - 1) / 2
    inside = coords[tf.newaxis, :] ** 2 + coords[:, tf.newaxis] ** 2 <= (params.rim_fraction * radius) ** 2
    out = tf.ensure_shape(tf.where((inside & valid)[..., tf.newaxis], out, float(round(params.offset))), [work, work, 3])
    if work != params.image_size:
        out = _resize(out, params.image_size, params.image_size, work > params.image_size)
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


def _square(gray: Any, mode: str) -> Any:
    """ops.square_box + take_square: pad the short side, or crop the long one centred on the intensity centroid."""
    import tensorflow as tf

    shape = tf.shape(gray)
    h, w = shape[0], shape[1]
    if mode == "pad":
        side = tf.maximum(h, w)
        x0, y0 = (w - side) // 2, (h - side) // 2
        return tf.pad(gray, [[-y0, side - h + y0], [-x0, side - w + x0]])
    side = tf.minimum(h, w)
    g64 = tf.cast(gray, tf.float64)
    total = tf.reduce_sum(g64)

    def start(profile: Any, length: Any) -> Any:
        positions = tf.range(length, dtype=tf.float64)
        centre = tf.where(total > 0, tf.reduce_sum(profile * positions) / tf.maximum(total, 1e-12),
                          tf.cast(length, tf.float64) / 2)
        return tf.cast(tf.clip_by_value(tf.round(centre - tf.cast(side, tf.float64) / 2), 0.0,
                                        tf.cast(length - side, tf.float64)), tf.int32)

    x0 = tf.cond(w > h, lambda: start(tf.reduce_sum(g64, axis=0), w), lambda: tf.constant(0))
    y0 = tf.cond(w > h, lambda: tf.constant(0), lambda: start(tf.reduce_sum(g64, axis=1), h))
    return gray[y0 : y0 + side, x0 : x0 + side]


def preprocess_oct(image: Any, params: PreprocessParams) -> Any:
    """uint8-valued grey `[H, W]` -> preprocessed uint8-valued float32 `[S, S]` (ops.preprocess_oct)."""
    import tensorflow as tf

    size = params.image_size
    gray = tf.cast(image, tf.float32)
    tf.debugging.assert_greater_equal(tf.math.reduce_std(gray), 1.0, message="blank image (no contrast)")
    square = _square(gray, params.square_mode)
    if params.denoise == "median" and params.denoise_strength > 0:
        square = _median_filter(square, max(3, int(round(params.denoise_strength)) | 1))
    side = tf.shape(square)[0]
    out = tf.cond(tf.equal(side, size), lambda: square,
                  lambda: tf.cond(side > size, lambda: _resize(square, size, size, True),
                                  lambda: _resize(square, size, size, False)))
    lo = _percentile(out, params.low_percentile)
    hi = _percentile(out, params.high_percentile)
    tf.debugging.assert_greater(hi - lo, 1e-6, message="blank image (no contrast)")
    stretched = (out - lo) * (255.0 / (hi - lo))
    return tf.floor(tf.clip_by_value(stretched, 0.0, 255.0))  # astype(uint8) truncates
