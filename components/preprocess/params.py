"""The one definition of the preprocessing parameters: one frozen object, one set of defaults, one name each.

Every consumer reads this object and nothing else: the Beam path (`components.preprocess.ops` /
`decode`), the serving signature (`serving.tf_preprocess`), the explain step (through
`ops.preprocess_image`) and the dataset manifest (`to_dict()` under `parameters`, copied into each trained
model's `retina_model.json` as `preprocessing`, which the export reads back with `for_model`). There is no
second table of defaults anywhere (the serving copy used to keep one, and read `reduction_margin` where
training wrote `decode_oversample`); the parity tests iterate `dataclasses.fields(PreprocessParams)` and
fail for a field they do not cover, so a parameter cannot be added to one path only.

Pure Python (no NumPy, OpenCV or TensorFlow): the serving export and the KFP component import it cheaply.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from typing import Any

from components.common.config import check_modality
from components.common.errors import RetinaError

log = logging.getLogger(__name__)

DENOISERS = ("median", "nlm", "none")
SQUARE_MODES = ("crop", "pad")
# The DCT-scaled decodes used (libjpeg's scaled IDCT: 1/4, 1/2). Its 1/8 scale keeps only each 8×8 block's
# DC coefficient, a block mean that aliases: on a 1296-px retina at 128 px output it costs 7 dB (33.9 vs
# 41.1 dB against the full-resolution reference) for no measurable time (Huffman decoding dominates).
DCT_FACTORS = (4, 2)
# The low-pass (Gaussian) step runs on a copy reduced by this factor at most, chosen so the reduced σ stays
# ≥ MIN_REDUCED_SIGMA px: a Gaussian that wide has no detail a 2-px grid cannot carry.
MAX_BLUR_REDUCTION = 8
MIN_REDUCED_SIGMA = 2.0
# Placing the retina on the work canvas (ops.crop_and_scale and its TF twin) is one bilinear warp, which
# reads 2×2 source pixels per output pixel whatever the ratio: shrinking by more than ANTIALIAS_MIN_RATIO it
# aliases (thin vessels flicker, ×4 after Graham's subtraction). The source is first low-passed by a Gaussian
# of σ = ANTIALIAS_SIGMA · ratio (best of 0.25–0.32 against the exact full-resolution reference). Ratios
# above ~3.75 warp onto an n-times canvas (n = round(ratio / CANVAS_RATIO)) and block-average it, which
# keeps the kernel at ≤ 5 taps (the serving graph builds it with 5).
ANTIALIAS_SIGMA = 0.28
ANTIALIAS_MIN_RATIO = 1.5
CANVAS_RATIO = 2.5
# Halvings (exact 2×2 means, OpenCV's fast path) a block mean is done by before any remaining odd factor
# (the retina-finding thumbnail; the Gaussian step's reduced copy): ~4x cheaper than one generic block mean.
MAX_HALVINGS = 6


@dataclass(frozen=True)
class PreprocessParams:
    """Every preprocessing parameter, recorded in the dataset manifest and in each trained model.

    Fundus names follow Graham's script: `radius` is the retina radius (px) at which the local-average
    subtraction runs (Graham: 300); `None` means `image_size // 2`, i.e. the work happens at the output
    resolution and the retina's diameter spans the output. σ = `sigma_ratio` · radius.
    Output = `image_weight`·img + `blur_weight`·blur + `offset`, and pixels further than
    `rim_fraction` · radius from the centre (or outside the photo) are set to `offset`.
    """

    modality: str = "fundus"
    image_size: int = 512
    radius: int | None = None
    sigma_ratio: float = 1 / 30
    image_weight: float = 4.0
    blur_weight: float = -4.0
    offset: float = 128.0
    rim_fraction: float = 0.9
    # Retina detection: a pixel is retina if brighter than max(background_level, background_fraction · p99).
    background_level: float = 10.0
    background_fraction: float = 0.1
    min_retina_fraction: float = 0.02  # of the frame; smaller bright regions are "no retina found"
    # Decoding: DCT-reduced decode to just above the needed size; images above max_pixels are refused
    # from their header, before a pixel is decoded (both paths, same limit, same reason).
    reduced_decode: bool = True
    # decoded short side ≥ decode_oversample · image_size. 2.0 decodes a 3888×2592 photo at 1/2 (1296 px
    # short side) for a 512 output. From 1/4 (648 px, 1.27 px per output pixel) no resampling reaches 35 dB
    # against the full-resolution reference on sharp photos (33 dB measured, exact box resampling included:
    # the band between the two grids' limits is gone); 1.8 px per output pixel measured 35.5 dB, 2.0 ≥ 37.8 dB
    # (synthetic and real photos 1700–3700 px high, benchmarks/preprocess.py).
    decode_oversample: float = 2.0
    max_pixels: int = 80_000_000
    # OCT
    denoise: str = "median"  # median | nlm | none
    denoise_strength: float = 3.0  # median kernel size (odd, px) or non-local-means h
    square_mode: str = "crop"  # crop the long side around the tissue, or pad the short side with black
    low_percentile: float = 1.0
    high_percentile: float = 99.5

    def __post_init__(self) -> None:
        check_modality(self.modality)
        if self.image_size < 8:
            raise ValueError(f"image_size must be at least 8, got {self.image_size}")
        if self.radius is not None and self.radius < 4:
            raise ValueError(f"radius must be at least 4 px, got {self.radius}")
        if not 0 < self.rim_fraction <= 1:
            raise ValueError(f"rim_fraction must be in (0, 1], got {self.rim_fraction}")
        if self.sigma_ratio <= 0:
            raise ValueError(f"sigma_ratio must be positive, got {self.sigma_ratio}")
        if self.decode_oversample <= 0:
            raise ValueError(f"decode_oversample must be positive, got {self.decode_oversample}")
        if self.max_pixels < 256:
            raise ValueError(f"max_pixels must be at least 256, got {self.max_pixels}")
        if self.denoise not in DENOISERS:
            raise ValueError(f"denoise must be one of {DENOISERS}, got {self.denoise!r}")
        if self.square_mode not in SQUARE_MODES:
            raise ValueError(f"square_mode must be one of {SQUARE_MODES}, got {self.square_mode!r}")
        if not 0 <= self.low_percentile < self.high_percentile <= 100:
            raise ValueError("need 0 <= low_percentile < high_percentile <= 100")

    # ------------------------------------------------------------------ derived values (one rule each)
    @property
    def work_radius(self) -> int:
        return int(self.radius) if self.radius else self.image_size // 2

    @property
    def sigma(self) -> float:
        return self.work_radius * self.sigma_ratio

    @property
    def blur_reduction(self) -> int:
        """Factor (1, 2, 4, 8) by which the Gaussian step's input is area-reduced: the largest that divides
        the work size and keeps the reduced σ ≥ MIN_REDUCED_SIGMA."""
        size = 2 * self.work_radius
        for factor in (8, 4, 2):
            if factor <= MAX_BLUR_REDUCTION and size % factor == 0 and self.sigma / factor >= MIN_REDUCED_SIGMA:
                return factor
        return 1

    def decode_reduction(self, width: int, height: int) -> int:
        """The DCT scale (1, 2, 4, 8) both paths decode a `width`×`height` JPEG at: the largest that keeps
        the short side ≥ decode_oversample · image_size (1 when reduced decoding is off)."""
        return reduction_factor(width, height, self.image_size if self.reduced_decode else None,
                                self.decode_oversample)

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> PreprocessParams:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreprocessParams:
        """Unknown keys (written by a newer version) are ignored with a warning, so old code reads new manifests."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            log.warning("ignoring unknown preprocessing parameters: %s", ", ".join(unknown))
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def for_model(cls, modality: str, image_size: int, recorded: dict[str, Any] | None) -> PreprocessParams:
        """The parameters a trained model was fed with: its recorded `preprocessing` (the manifest's
        `parameters`), else the defaults; the model's modality and input size must agree with them."""
        recorded = dict(recorded or {})
        recorded.setdefault("modality", modality or "fundus")
        recorded.setdefault("image_size", int(image_size))
        try:
            params = cls.from_dict(recorded)
        except (TypeError, ValueError) as exc:
            raise RetinaError(f"recorded preprocessing parameters rejected: {exc}") from None
        if modality and params.modality != modality:
            raise RetinaError(f"preprocessing modality {params.modality!r} does not match the model's {modality!r}")
        if params.image_size != int(image_size):
            raise RetinaError(f"preprocessing image_size {params.image_size} does not match the model input "
                              f"{image_size}")
        return params

    @classmethod
    def with_overrides(cls, modality: str, image_size: int, overrides: dict[str, Any] | None = None) -> PreprocessParams:
        """Parameters a user sets by name (`retina preprocess --param sigma_ratio=0.05`, the component's
        `params` JSON). Strings are converted to each field's type; an unknown name or a bad value is a
        one-line error naming it (unlike `from_dict`, which reads manifests and tolerates newer keys)."""
        fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in ("modality", "image_size")}
        values: dict[str, Any] = {}
        for name, raw in (overrides or {}).items():
            if name in ("modality", "image_size"):
                raise RetinaError(f"preprocessing parameter {name!r} has its own option; do not set it in params")
            if name not in fields:
                raise RetinaError(f"unknown preprocessing parameter {name!r}; known: {', '.join(sorted(fields))}")
            try:
                values[name] = _convert(raw, fields[name].default)
            except (TypeError, ValueError) as exc:
                raise RetinaError(f"preprocessing parameter {name}={raw!r}: {exc}") from None
        try:
            return cls(modality=modality, image_size=int(image_size), **values)
        except ValueError as exc:
            raise RetinaError(f"preprocessing parameters rejected: {exc}") from None


DEFAULTS = PreprocessParams()


def reduction_factor(width: int, height: int, target_size: int | None, margin: float | None = None) -> int:
    """Largest of 1, 2, 4, 8 that keeps the short side ≥ margin · target_size after the reduced decode
    (`margin` defaults to PreprocessParams' decode_oversample)."""
    if not target_size:
        return 1
    margin = DEFAULTS.decode_oversample if margin is None else margin
    short = min(width, height)
    for factor in DCT_FACTORS:
        if short / factor >= margin * target_size:
            return factor
    return 1


def canvas_multiple(ratio: float) -> int:
    """n: the retina warp targets an n×-the-work-size canvas, then n×n block means (`ratio`: source px per
    work px). Keeps the warp's own ratio below 3.75, so its anti-aliasing kernel stays small."""
    return max(1, math.floor(ratio / CANVAS_RATIO + 0.5))


def antialias_sigma(ratio: float) -> float:
    """σ of the Gaussian that low-passes the source of a warp shrinking by `ratio` (source px)."""
    return ANTIALIAS_SIGMA * ratio


def antialias_kernel(ratio: float) -> tuple[float, ...]:
    """1-D Gaussian taps (σ = `antialias_sigma(ratio)`, round(2σ) taps each side of the centre, at least one;
    normalised) low-passing the source of a warp that shrinks by `ratio`; `(1.0,)` below
    ANTIALIAS_MIN_RATIO. Both paths filter with these taps (reflect-101 border, uint8 result); OpenCV's
    uint8 GaussianBlur applies them in fixed point, within one grey level of the float result."""
    if ratio < ANTIALIAS_MIN_RATIO:
        return (1.0,)
    sigma = antialias_sigma(ratio)
    return gaussian_taps(sigma, max(1, math.floor(2 * sigma + 0.5)))


def gaussian_taps(sigma: float, half: int) -> tuple[float, ...]:
    """The 2·half + 1 normalised taps exp(−i²/2σ²), i = −half..half (OpenCV's getGaussianKernel for σ > 0)."""
    weights = [math.exp(-(i * i) / (2 * sigma * sigma)) for i in range(-half, half + 1)]
    total = sum(weights)
    return tuple(w / total for w in weights)


def halving_steps(factor: int) -> tuple[int, int]:
    """(halvings, remaining factor): a block mean by `factor` done as exact 2×2 means first (at most
    MAX_HALVINGS), then one block mean by what is left. OpenCV's 2×2 INTER_AREA is its fast path: two
    halvings cost a quarter of one 4×4 mean. Used by the thumbnail and the Gaussian step's reduction."""
    halvings = 0
    while factor % 2 == 0 and halvings < MAX_HALVINGS:
        factor //= 2
        halvings += 1
    return halvings, factor


def gaussian_ksize(sigma: float) -> int:
    """OpenCV's kernel size for a float32 Gaussian (`cv2.getGaussianKernel` via GaussianBlur, ksize=(0, 0)):
    cvRound(σ·4·2 + 1) | 1. Both paths build the same kernel from this."""
    return int(math.floor(sigma * 4 * 2 + 1 + 0.5)) | 1


def _convert(raw: Any, default: Any) -> Any:
    """A user's value (often a string from a command line) as the type of the field's default."""
    if not isinstance(raw, str):
        return raw
    text = raw.strip()
    if default is None:  # radius: an int, or none for "half the output size"
        return None if text.lower() in ("", "none", "null") else int(text)
    if isinstance(default, bool):
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError("expected true or false")
    if isinstance(default, int):
        return int(text)
    if isinstance(default, float):
        return float(text)
    return text
