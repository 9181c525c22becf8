"""Decode only what is needed, and turn every kind of bad file into a readable `ImageRejected`.

Decoding dominates preprocessing: a 3888×2592 EyePACS JPEG takes ~40 ms to decode fully, ~13 ms with the
decoder's own DCT scaling (`cv2.IMREAD_REDUCED_*_2/4/8`), which skips the inverse transform of the
detail we would throw away when resizing to 512 px. The width/height come from the JPEG SOF / PNG IHDR
header (`header.read_header`, no pixel decode), so the reduction (`PreprocessParams.decode_reduction`)
is chosen and the input policy (`header.check_header`) applied before decoding.

PNGs have no scaled decode: they are decoded fully and reduced by an exact box filter (area average over
factor×factor blocks), which the serving graph reproduces bit for bit (`avg_pool`). EXIF orientation is
applied here by `header.ORIENTATION_STEPS` (OpenCV's own handling is switched off), as in serving.
"""

from __future__ import annotations

import cv2
import numpy as np

from components.common.errors import ImageRejected
from components.preprocess.header import (
    ORIENTATION_STEPS,
    ImageHeader,
    check_complete,
    check_header,
    read_header,
)
from components.preprocess.params import DEFAULTS, PreprocessParams, halving_steps, reduction_factor

_KEEP_ORIENTATION = cv2.IMREAD_IGNORE_ORIENTATION
# RGB straight from the decoder (libjpeg's own output order): no BGR pass and no cvtColor over the decoded
# image (1 ms at the 1/2 scale, 5 ms at full size on an EyePACS frame). The DCT-scale bits combine with it.
_REDUCED_COLOR = {f: (flag & ~cv2.IMREAD_COLOR) | cv2.IMREAD_COLOR_RGB
                  for f, flag in ((1, cv2.IMREAD_COLOR), (2, cv2.IMREAD_REDUCED_COLOR_2),
                                  (4, cv2.IMREAD_REDUCED_COLOR_4), (8, cv2.IMREAD_REDUCED_COLOR_8))}
_REDUCED_GRAY = {1: cv2.IMREAD_GRAYSCALE, 2: cv2.IMREAD_REDUCED_GRAYSCALE_2, 4: cv2.IMREAD_REDUCED_GRAYSCALE_4,
                 8: cv2.IMREAD_REDUCED_GRAYSCALE_8}


def area_reduce(image: np.ndarray, factor: int) -> np.ndarray:
    """Mean over factor×factor blocks (the trailing rows/columns that do not fill a block are dropped):
    cv2's INTER_AREA for an exact integer ratio, i.e. TF's `avg_pool` with window = stride = factor."""
    if factor == 1:
        return image
    h, w = image.shape[0] // factor, image.shape[1] // factor
    return cv2.resize(image[: h * factor, : w * factor], (w, h), interpolation=cv2.INTER_AREA)


def block_mean(image: np.ndarray, factor: int) -> np.ndarray:
    """Block mean by `factor` as exact 2×2 means first, then one mean by the odd rest (`params.halving_steps`),
    uint8 rounding after each step: OpenCV's fast path, bit-identical in the serving graph (`block_mean`)."""
    halvings, rest = halving_steps(factor)
    for _ in range(halvings):
        image = area_reduce(image, 2)
    return area_reduce(image, rest)


def block_mean_float(image: np.ndarray, factor: int) -> np.ndarray:
    """uint8 image → float32 block mean by `factor`, no uint8 rounding. For a power of two ≤ 8 (the blur
    reductions) it is exact to the last bit: the values are scaled by 4^h into uint16 (≤ 255·64), so each of
    OpenCV's fast 2×2 means is an exact integer (the sum of the 4^k pixels below it, times 4^(h−k)), and one
    power-of-two scale ends it; a little faster than one uint8 4×4 mean, without its rounding. The serving
    graph's float `area_reduce` computes the same values."""
    halvings, rest = halving_steps(factor)
    if rest != 1 or halvings > 3:
        return area_reduce(image.astype(np.float32), factor)
    scaled = np.left_shift(image, 2 * halvings, dtype=np.uint16)
    for _ in range(halvings):
        scaled = area_reduce(scaled, 2)
    return scaled.astype(np.float32) * np.float32(0.25**halvings)


def orient(image: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation (1..8) to a decoded image as stored."""
    transpose, flip_rows, flip_cols = ORIENTATION_STEPS.get(orientation, ORIENTATION_STEPS[1])
    if transpose:
        image = np.swapaxes(image, 0, 1)
    if flip_rows:
        image = image[::-1]
    if flip_cols:
        image = image[:, ::-1]
    return np.ascontiguousarray(image) if orientation != 1 else image


def _decode_pixels(data: bytes, header: ImageHeader, factor: int, color: bool) -> np.ndarray | None:
    table = _REDUCED_COLOR if color else _REDUCED_GRAY
    if header.format == "jpeg":
        return cv2.imdecode(np.frombuffer(data, np.uint8), table[factor] | _KEEP_ORIENTATION)
    # a colour PNG for a grey target: decoded in colour, then OpenCV's BT.601 (what the serving graph mirrors)
    flags = _REDUCED_COLOR[1] if header.channels == 3 else table[1]
    image = cv2.imdecode(np.frombuffer(data, np.uint8), flags | _KEEP_ORIENTATION)
    if image is not None and not color and image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    return None if image is None else area_reduce(image, factor)


def decode_image(
    data: bytes,
    image_id: str,
    target_size: int | None = None,
    color: bool = True,
    max_pixels: int = DEFAULTS.max_pixels,
    margin: float = DEFAULTS.decode_oversample,
) -> np.ndarray:
    """Encoded bytes → uint8 RGB H×W×3 (`color=True`) or grey H×W, decoded at the smallest DCT scale
    that keeps the short side ≥ margin·`target_size` (None: full resolution), EXIF orientation applied.
    Raises ImageRejected. Use `decode_for` with a parameter object where one is at hand."""
    header = read_header(data, image_id)
    check_header(header, image_id, color, max_pixels)
    check_complete(data, header, image_id)
    factor = reduction_factor(header.width, header.height, target_size, margin)
    image = _decode_pixels(data, header, factor, color)
    if image is None or image.size == 0:
        raise ImageRejected(image_id, f"undecodable {header.format.upper()} data")
    if image.dtype != np.uint8:
        raise ImageRejected(image_id, f"unsupported sample type {image.dtype} (8-bit expected)")
    return orient(image, header.orientation)


def decode_for(data: bytes, image_id: str, params: PreprocessParams) -> np.ndarray:
    """Decode exactly as `params` says (reduction, colour, pixel cap): what the Beam path feeds the ops."""
    return decode_image(data, image_id, target_size=params.image_size if params.reduced_decode else None,
                        color=params.modality == "fundus", max_pixels=params.max_pixels,
                        margin=params.decode_oversample)


def decode_mask(data: bytes, image_id: str, shape: tuple[int, ...]) -> np.ndarray:
    """A lesion mask (single channel, 255 = lesion) brought to the decoded image's grid by nearest neighbour."""
    mask = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE) if data else None
    if mask is None:
        raise ImageRejected(image_id, "undecodable lesion mask")
    if mask.shape[:2] != tuple(shape[:2]):
        mask = cv2.resize(mask, (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)
    return mask


def encode_png(image: np.ndarray) -> bytes:
    """RGB or grey uint8 → PNG bytes (the TFRecord `image` / `mask` feature)."""
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image
    ok, buf = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:  # pragma: no cover - OpenCV encodes any uint8 array
        raise ValueError("PNG encoding failed")
    return buf.tobytes()
