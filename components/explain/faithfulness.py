"""Numbers that say whether an explanation can be trusted, per image and summarised.

- Deletion / insertion AUC (Petsiuk et al. 2018, RISE): remove (or add) pixels in the order the map
  ranks them and follow the target class probability; a faithful map makes it drop fast (low
  deletion AUC) and rise fast (high insertion AUC). Every perturbed image of every image is built in
  numpy and scored in batched forward passes. Baseline: a blurred copy of the image (the default, RISE's
  insertion start: it keeps the image's own intensities, so "removed" stays inside what the model was
  trained on) or flat grey 0.5 (right for Graham-normalised fundus photos, whose background is 128; out of
  distribution for an OCT B-scan: a demo OCT model classified flat grey as CNV, so deleting the lesions a
  map found left CNV standing and its insertion − deletion came out negative on three of four classes).
- Pointing game (Zhang et al. 2016) and energy-in-mask (Wang et al. 2020, "energy-based pointing
  game") against lesion masks, when the data has them (the synthetic sets do). The chance rate of the
  pointing game is the mask's area fraction, reported beside it.
- Model-randomisation sanity check (Adebayo et al. 2018): maps of the trained model and of a clone
  with freshly initialised weights must differ; SSIM between them is reported (high SSIM = the map
  does not depend on what the model learned, e.g. an edge detector).

`gate(summary, thresholds)` turns the summary into pass/fail per metric, for a pipeline condition.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from components.common.errors import RetinaError

BASELINES = ("grey", "blur")

# metric -> (comparison, threshold). Chosen as sanity floors, not as quality targets.
DEFAULT_THRESHOLDS: dict[str, tuple[str, float]] = {
    "randomization_ssim": ("<=", 0.5),  # maps must change when the weights are randomised
    "insertion_minus_deletion": (">=", 0.0),  # ranking pixels by the map beats the reverse test
    "outside_retina_share": ("<=", 0.2),  # heat outside the FOV / in the vitreous (anatomy.py): not the camera
}


def baseline_images(images: np.ndarray, baseline: str = "blur", blur_sigma: float | None = None) -> np.ndarray:
    """What 'removed' pixels become: grey 0.5, or a strongly blurred copy (keeps colour, drops detail)."""
    import cv2

    if baseline == "grey":
        return np.full_like(images, 0.5, dtype=np.float32)
    if baseline == "blur":
        out = np.empty_like(images, dtype=np.float32)
        for i, img in enumerate(images):
            sigma = blur_sigma or max(2.0, img.shape[0] / 16)
            blurred = cv2.GaussianBlur(img.astype(np.float32), (0, 0), sigma)
            out[i] = blurred.reshape(img.shape)
        return out
    raise RetinaError(f"unknown baseline {baseline!r}: expected one of {', '.join(BASELINES)}")


def _auc(curve: np.ndarray) -> np.ndarray:
    """Area under curves [N, steps+1] sampled on [0, 1] (trapezoid)."""
    return ((curve[:, 1:] + curve[:, :-1]) / 2.0).mean(axis=1)


def deletion_insertion(
    predict: Callable[[np.ndarray], np.ndarray],
    images: np.ndarray,
    cams: np.ndarray,
    targets: Sequence[int],
    steps: int = 16,
    baseline: str = "blur",
    batch_size: int = 64,
) -> dict[str, np.ndarray]:
    """Deletion and insertion AUC per image. `predict(x) -> probabilities [N, C]`.

    Returns `deletion_auc`, `insertion_auc` [N] and the curves [N, steps+1].
    """
    images = np.asarray(images, dtype=np.float32)
    n, h, w = cams.shape
    base = baseline_images(images, baseline)
    order = np.argsort(-cams.reshape(n, -1), axis=1, kind="stable")  # most important first
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(h * w)[None].repeat(n, 0), axis=1)
    ranks = ranks.reshape(n, h, w, 1)
    fractions = np.linspace(0.0, 1.0, steps + 1)
    targets = np.asarray(targets, dtype=np.int64)
    curves = {}
    for kind in ("deletion", "insertion"):
        perturbed = np.empty((n, steps + 1, *images.shape[1:]), dtype=np.float32)
        for s, frac in enumerate(fractions):
            top = ranks < int(round(frac * h * w))  # the top `frac` pixels by the map
            if kind == "deletion":
                perturbed[:, s] = np.where(top, base, images)
            else:
                perturbed[:, s] = np.where(top, images, base)
        flat = perturbed.reshape(-1, *images.shape[1:])
        probs = np.concatenate([predict(flat[i : i + batch_size]) for i in range(0, len(flat), batch_size)])
        probs = probs.reshape(n, steps + 1, -1)
        curves[kind] = probs[np.arange(n), :, targets]
    return {
        "deletion_auc": _auc(curves["deletion"]),
        "insertion_auc": _auc(curves["insertion"]),
        "deletion_curve": curves["deletion"],
        "insertion_curve": curves["insertion"],
    }


def _binary_masks(masks: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    import cv2

    out = []
    for m in masks:
        m = np.asarray(m)
        if m.ndim == 3:
            m = m[..., 0]
        if m.shape != shape:
            m = cv2.resize(m.astype(np.uint8), (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)
        out.append(m > (127 if m.max() > 1 else 0))
    return np.stack(out)


def pointing_game(cams: np.ndarray, masks: np.ndarray, tolerance: int = 0) -> dict[str, np.ndarray]:
    """Hit = the map's maximum lies inside the lesion mask (dilated by `tolerance` px).

    Images whose mask is empty are not scored (hit = NaN): there is nothing to point at.
    Also returns the chance rate (mask area fraction), energy-in-mask (sum of map inside / total) and
    their ratio `energy_ratio` (how many times the lesion energy a uniform map would have: 1 = chance).
    """
    import cv2

    n, h, w = cams.shape
    binary = _binary_masks(masks, (h, w))
    hits = np.full(n, np.nan)
    energy = np.full(n, np.nan)
    chance = np.full(n, np.nan)
    for i in range(n):
        m = binary[i]
        if not m.any():
            continue
        if tolerance:
            kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * tolerance + 1, 2 * tolerance + 1))
            m_hit = cv2.dilate(m.astype(np.uint8), kernel) > 0
        else:
            m_hit = m
        y, x = np.unravel_index(int(np.argmax(cams[i])), (h, w))
        hits[i] = float(m_hit[y, x])
        total = float(cams[i].sum())
        energy[i] = float(cams[i][m].sum() / total) if total > 0 else 0.0
        chance[i] = float(m.mean())
    ratio = np.where(chance > 0, energy / np.where(chance > 0, chance, 1.0), np.nan)
    return {"pointing_hit": hits, "energy_in_mask": energy, "mask_fraction": chance, "energy_ratio": ratio}


def ssim_per_image(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """SSIM of each pair of [0, 1] maps (scikit-image, data_range 1)."""
    from skimage.metrics import structural_similarity

    return np.array([structural_similarity(x, y, data_range=1.0) for x, y in zip(a, b, strict=True)])


def randomized_clone(model: Any, seed: int = 0) -> Any:
    """Same architecture, freshly initialised weights (every layer: the 'cascading' test's last step)."""
    import keras

    keras.utils.set_random_seed(seed)
    return keras.models.clone_model(model)


def randomization_check(
    cam_fn: Callable[[Any, np.ndarray, np.ndarray], np.ndarray],
    model: Any,
    images: np.ndarray,
    targets: np.ndarray,
    trained_cams: np.ndarray,
    seed: int = 0,
) -> np.ndarray:
    """SSIM between `trained_cams` and `cam_fn(randomized_model, images, targets)`, per image."""
    random_cams = cam_fn(randomized_clone(model, seed), images, targets)
    return ssim_per_image(trained_cams, random_cams)


def _mean(values: np.ndarray) -> float | None:
    values = np.asarray(values, dtype=np.float64)
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else None


def summarize(per_image: Mapping[str, Sequence[float]]) -> dict[str, float | None]:
    """Mean of each metric over the images that have it (NaN = not applicable, e.g. no mask)."""
    summary = {name: _mean(np.asarray(vals, dtype=np.float64)) for name, vals in per_image.items()}
    if summary.get("insertion_auc") is not None and summary.get("deletion_auc") is not None:
        summary["insertion_minus_deletion"] = summary["insertion_auc"] - summary["deletion_auc"]
    if "pointing_hit" in summary:
        summary["pointing_game"] = summary.pop("pointing_hit")
    return summary


# Summary metrics a threshold may name (see `summarize`).
GATE_METRICS = ("deletion_auc", "insertion_auc", "insertion_minus_deletion", "pointing_game", "energy_in_mask",
                "mask_fraction", "energy_ratio", "randomization_ssim", "outside_retina_share")
_COMPARISONS = (">=", "<=", ">", "<")


def parse_thresholds(text: str) -> dict[str, tuple[str, float]] | None:
    """`"randomization_ssim<=0.5,pointing_game>=0.3"` -> {metric: (op, value)}; empty -> None (the defaults).

    One string, so the same gate travels as a KFP pipeline parameter, a component input and a CLI flag.
    `none` turns the gate off (every report passes).
    """
    text = (text or "").strip()
    if not text:
        return None
    if text.lower() == "none":
        return {}
    thresholds: dict[str, tuple[str, float]] = {}
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        op = next((c for c in _COMPARISONS if c in item), None)
        if op is None:
            raise RetinaError(f"threshold {item!r}: expected <metric><op><number> with op one of >= <= > <")
        name, _, value = (part.strip() for part in item.partition(op))
        if name not in GATE_METRICS:
            raise RetinaError(f"threshold {item!r}: unknown metric {name!r}; known: {', '.join(GATE_METRICS)}")
        try:
            thresholds[name] = (op, float(value))
        except ValueError:
            raise RetinaError(f"threshold {item!r}: {value!r} is not a number") from None
    return thresholds


def format_failures(gate_result: Mapping[str, Any]) -> str:
    """`randomization_ssim 0.91 (needs <= 0.5)` for each metric that failed, comma-separated."""
    return ", ".join(
        f"{name} {r['value']:.3f} (needs {r['op']} {r['threshold']:g})"
        for name, r in gate_result.get("metrics", {}).items()
        if r.get("passed") is False
    )


def gate(
    summary: Mapping[str, float | None], thresholds: Mapping[str, tuple[str, float]] | None = None
) -> dict[str, Any]:
    """Pass/fail per thresholded metric; a metric that could not be computed is reported, not failed."""
    thresholds = DEFAULT_THRESHOLDS if thresholds is None else thresholds
    results: dict[str, Any] = {}
    for name, (op, limit) in thresholds.items():
        if op not in (">=", "<=", ">", "<"):
            raise RetinaError(f"unknown comparison {op!r} for metric {name}")
        value = summary.get(name)
        if value is None:
            results[name] = {"value": None, "op": op, "threshold": limit, "passed": None}
            continue
        passed = {">=": value >= limit, "<=": value <= limit, ">": value > limit, "<": value < limit}[op]
        results[name] = {"value": value, "op": op, "threshold": limit, "passed": bool(passed)}
    decided = [r["passed"] for r in results.values() if r["passed"] is not None]
    return {"metrics": results, "passed": all(decided)}
