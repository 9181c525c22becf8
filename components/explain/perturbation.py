"""Heatmaps from forward passes only: occlusion and RISE, for models whose gradients are out of reach.

A model behind TF Serving answers Predict and nothing else: no layer outputs, no gradients. These
methods need only `predict(images) -> probabilities`, so the same code explains a Keras model in this
process and a model on the real `tensorflow/serving` (each batch one Predict request):

- occlusion (Zeiler & Fergus 2014): slide a square of the image's mean colour over the image; the heat of a pixel is the mean
  drop of the target probability over the squares that covered it;
- RISE (Petsiuk et al. 2018): random low-resolution binary masks, bilinearly upsampled with a random
  sub-cell shift, keep a fraction `keep` of the image each; the heat is the probability-weighted mean
  of the masks (Score-CAM's idea with random masks instead of channel maps, so no layer is needed).

All perturbed images of all images are built in numpy and sent in batches of `batch_size`; the masks
are drawn once per call from `seed` (the same masks for every image: maps are comparable, runs repeat).
`agreement` compares two sets of maps (e.g. RISE through gRPC vs Grad-CAM in process): SSIM, Spearman
rank correlation, and whether each map's peak lies in the other's top 10 %.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from components.common.errors import RetinaError

Predict = Callable[[np.ndarray], np.ndarray]  # float32 [N, S, S, 3] in [0, 1] -> probabilities [N, C]
METHODS = ("occlusion", "rise")


@dataclass(frozen=True)
class PerturbationConfig:
    """Defaults in one place: the CLI, the served-model job and the benchmark take this object."""

    window: float = 0.125  # occlusion square side, fraction of the image side
    stride: float = 0.0625  # occlusion step, fraction of the image side
    masks: int = 384  # RISE masks per image
    cells: int = 8  # RISE mask grid (cells x cells before upsampling)
    keep: float = 0.5  # RISE: probability that a cell is kept
    fill: float | None = None  # what occluded / masked-out pixels become; None = the image's mean colour
    batch_size: int = 64  # images per predict call (one Predict request)
    seed: int = 0

    def __post_init__(self) -> None:
        if not (0 < self.window <= 1 and 0 < self.stride <= 1):
            raise RetinaError(f"occlusion window/stride must be in (0, 1], got {self.window}/{self.stride}")
        if self.masks < 1 or self.cells < 2 or not 0 < self.keep < 1 or self.batch_size < 1:
            raise RetinaError("RISE needs masks >= 1, cells >= 2, 0 < keep < 1 and batch_size >= 1")


@dataclass
class PerturbationResult:
    cams: np.ndarray  # [N, H, W] float32 in [0, 1]
    targets: np.ndarray  # [N]
    probabilities: np.ndarray  # [N, C] of the unperturbed images
    method: str
    forward_passes: int  # images sent through the model for this method
    ordinal: np.ndarray | None = None  # [N, H, W] in [-1, 1], occlusion with `ordinal=True`: pushes grade up (+)


def parse_methods(methods: str | Sequence[str]) -> list[str]:
    names = [m.strip().lower() for m in (methods.split(",") if isinstance(methods, str) else methods)]
    names = [n for n in dict.fromkeys(names) if n]
    unknown = [n for n in names if n not in METHODS]
    if unknown or not names:
        raise RetinaError(f"unknown perturbation method(s) {', '.join(unknown) or '(none)'}: expected {', '.join(METHODS)}")
    return names


def fill_values(images: np.ndarray, fill: float | None) -> np.ndarray:
    """[N, 1, 1, C] colour that replaces hidden pixels. The image's own mean colour by default: a fixed grey
    is itself a bright or dark patch on many images (brighter than a dark fundus), which the model may
    read as a lesion, so hiding the real lesion would not look like hiding anything."""
    if fill is None:
        return images.mean(axis=(1, 2), keepdims=True)
    return np.full((len(images), 1, 1, images.shape[-1]), fill, np.float32)


def _normalize(maps: np.ndarray) -> np.ndarray:
    lo = maps.min(axis=(1, 2), keepdims=True)
    span = maps.max(axis=(1, 2), keepdims=True) - lo
    return np.where(span > 1e-12, (maps - lo) / np.maximum(span, 1e-12), 0.0).astype(np.float32)


def _batched(predict: Predict, batches: Iterator[np.ndarray]) -> np.ndarray:
    return np.concatenate([np.asarray(predict(b), dtype=np.float32) for b in batches])


def _chunks(total: int, make: Callable[[int, int], np.ndarray], batch_size: int) -> Iterator[np.ndarray]:
    for start in range(0, total, batch_size):
        yield make(start, min(total, start + batch_size))


def occlusion_boxes(size: int, window: float, stride: float) -> list[tuple[int, int, int]]:
    """(y, x, side) of every occluding square; the last row/column is flush with the edge."""
    side = max(1, round(window * size))
    step = max(1, round(stride * size))
    starts = list(range(0, max(1, size - side + 1), step))
    if starts[-1] != size - side:
        starts.append(max(0, size - side))
    return [(y, x, side) for y in starts for x in starts]


def _occluded_probs(predict: Predict, images: np.ndarray, config: PerturbationConfig) -> tuple[np.ndarray, list]:
    """(probabilities [N, boxes, C] with each square hidden, the squares)."""
    n, h, w = images.shape[:3]
    if h != w:
        raise RetinaError(f"occlusion expects square images, got {h}x{w}")
    boxes = occlusion_boxes(h, config.window, config.stride)
    per_image = len(boxes)
    fills = fill_values(images, config.fill)

    def make(start: int, stop: int) -> np.ndarray:
        out = np.empty((stop - start, *images.shape[1:]), np.float32)
        for j, k in enumerate(range(start, stop)):
            i, b = divmod(k, per_image)
            y, x, side = boxes[b]
            out[j] = images[i]
            out[j, y : y + side, x : x + side] = fills[i, 0]
        return out

    return _batched(predict, _chunks(n * per_image, make, config.batch_size)).reshape(n, per_image, -1), boxes


def _box_average(values: np.ndarray, boxes: list, size: int) -> np.ndarray:
    """[N, boxes] -> [N, S, S]: each pixel the mean of the values of the squares covering it."""
    heat = np.zeros((len(values), size, size), np.float64)
    count = np.zeros((size, size), np.float64)
    for b, (y, x, side) in enumerate(boxes):
        heat[:, y : y + side, x : x + side] += values[:, b, None, None]
        count[y : y + side, x : x + side] += 1
    return heat / np.maximum(count, 1)


def occlusion(
    predict: Predict, images: np.ndarray, targets: np.ndarray, base_probs: np.ndarray, config: PerturbationConfig,
    ordinal: bool = False,
) -> tuple[np.ndarray, int, np.ndarray | None]:
    """([N, H, W] maps, forward passes, signed ordinal maps | None): mean drop of the target probability
    under each covering square. With `ordinal` (graded classes, C > 2) also the mean drop of
    p[k] - p[k-1] (k = target, at least 1) in [-1, 1]: positive where hiding the region lowers the grade,
    i.e. the region pushes the grade up; the same Predict calls serve both."""
    n, size = images.shape[:2]
    probs, boxes = _occluded_probs(predict, images, config)
    rows = np.arange(n)
    drops = base_probs[rows, targets][:, None] - probs[rows, :, targets]  # [N, boxes]
    maps = _normalize(np.maximum(_box_average(drops, boxes, size), 0.0))
    signed = None
    if ordinal and probs.shape[-1] > 2:
        upper = np.maximum(targets, 1)
        margin = lambda p: p[rows, ..., upper] - p[rows, ..., upper - 1]  # noqa: E731 - [N] or [N, boxes]
        signed = _box_average(margin(base_probs)[:, None] - margin(probs), boxes, size)
        scale = np.abs(signed).max(axis=(1, 2), keepdims=True)
        signed = np.where(scale > 1e-12, signed / np.maximum(scale, 1e-12), 0.0).astype(np.float32)
    return maps, n * len(boxes), signed


def rise_masks(size: int, config: PerturbationConfig) -> np.ndarray:
    """[M, S, S] float32 soft masks in [0, 1]: random cell grids, upsampled, randomly shifted (RISE)."""
    import cv2

    rng = np.random.default_rng(config.seed)
    cell = int(np.ceil(size / config.cells))
    up = (config.cells + 1) * cell
    grids = (rng.random((config.masks, config.cells, config.cells)) < config.keep).astype(np.float32)
    out = np.empty((config.masks, size, size), np.float32)
    shifts = rng.integers(0, cell, size=(config.masks, 2))
    for m in range(config.masks):
        big = cv2.resize(grids[m], (up, up), interpolation=cv2.INTER_LINEAR)
        dy, dx = shifts[m]
        out[m] = big[dy : dy + size, dx : dx + size]
    return out


def rise(
    predict: Predict, images: np.ndarray, targets: np.ndarray, config: PerturbationConfig
) -> tuple[np.ndarray, int]:
    """([N, H, W] maps, forward passes): sum_m p_target(image * M_m) * M_m / (M * keep)."""
    n, h = images.shape[:2]
    masks = rise_masks(h, config)
    count = len(masks)
    fills = fill_values(images, config.fill)

    def make(start: int, stop: int) -> np.ndarray:
        idx = np.arange(start, stop)
        i, m = np.divmod(idx, count)
        keep = masks[m][..., None]
        return (images[i] * keep + fills[i] * (1.0 - keep)).astype(np.float32)

    probs = _batched(predict, _chunks(n * count, make, config.batch_size)).reshape(n, count, -1)
    weights = probs[np.arange(n)[:, None], np.arange(count)[None, :], targets[:, None]]  # [N, M]
    heat = np.tensordot(weights, masks, axes=([1], [0])) / (count * config.keep)
    return _normalize(heat), n * count


def explain_with_predictions(
    predict: Predict,
    images: np.ndarray,
    methods: str | Sequence[str] = METHODS,
    targets: Sequence[int] | None = None,
    config: PerturbationConfig | None = None,
    ordinal: bool = False,
) -> dict[str, PerturbationResult]:
    """Maps of every method for `images` (float32 [N, S, S, 3] in [0, 1]); targets default to the prediction.
    `ordinal` (graded classes): occlusion also gives the signed grade-up / grade-down map."""
    config = config or PerturbationConfig()
    names = parse_methods(methods)
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4:
        raise RetinaError(f"expected images [N, H, W, C], got shape {images.shape}")
    base = _batched(predict, _chunks(len(images), lambda a, b: images[a:b], config.batch_size))
    target_arr = base.argmax(-1) if targets is None else np.asarray(targets, dtype=np.int64).reshape(-1)
    results = {}
    for name in names:
        signed = None
        if name == "occlusion":
            maps, passes, signed = occlusion(predict, images, target_arr, base, config, ordinal=ordinal)
        else:
            maps, passes = rise(predict, images, target_arr, config)
        results[name] = PerturbationResult(maps, target_arr, base, name, passes, signed)
    return results


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra = np.argsort(np.argsort(a.ravel(), kind="stable"), kind="stable").astype(np.float64)
    rb = np.argsort(np.argsort(b.ravel(), kind="stable"), kind="stable").astype(np.float64)
    ra -= ra.mean()
    rb -= rb.mean()
    denom = float(np.sqrt((ra**2).sum() * (rb**2).sum()))
    return float((ra * rb).sum() / denom) if denom > 0 else 0.0


def _peak_in_top(a: np.ndarray, b: np.ndarray, top: float) -> float:
    y, x = np.unravel_index(int(np.argmax(a)), a.shape)
    return float(b[y, x] >= np.quantile(b, 1.0 - top))


def agreement(maps_a: np.ndarray, maps_b: np.ndarray, top: float = 0.1) -> dict[str, np.ndarray]:
    """Per-image agreement of two sets of [0, 1] maps on one grid: `ssim`, `spearman` (rank correlation of
    the pixel orders), `peak_agreement` (share of the two peaks that fall in the other map's top `top`)."""
    from skimage.metrics import structural_similarity

    a, b = np.asarray(maps_a, np.float32), np.asarray(maps_b, np.float32)
    if a.shape != b.shape:
        raise RetinaError(f"maps to compare differ in shape: {a.shape} vs {b.shape}")
    return {
        "ssim": np.array([structural_similarity(x, y, data_range=1.0) for x, y in zip(a, b, strict=True)]),
        "spearman": np.array([_spearman(x, y) for x, y in zip(a, b, strict=True)]),
        "peak_agreement": np.array([(_peak_in_top(x, y, top) + _peak_in_top(y, x, top)) / 2
                                    for x, y in zip(a, b, strict=True)]),
    }
