"""What the clinician's report adds to the explanation job's entries, computed from the job's own arrays.

The job (`explanation.py`) produces, per image, the model input, the lesion mask and a map per method;
this module adds, with plain inputs (numpy arrays, the Keras model, small dataclasses):

- `anatomy_metrics`: per image and method, the share of heat outside the retina (the gate metric
  `outside_retina_share`) and on the disc / vessels, from `anatomy.py`;
- `ordinal_maps`: for DR, a signed Grad-CAM of `score[k] - score[k-1]` (k = predicted grade, or the
  regression head's grade itself): red where the image pushes the grade up, blue where it pushes down.
  Grad-CAM is linear in the score before its ReLU, so this is exactly "CAM of k minus CAM of k-1";
- `per_image_feature_maps`: 32 maps of every conv layer for every explained image, small tiles;
- `champion_comparison`: the champion's map of the same images beside the challenger's, with SSIM;
- `enrich_entries`: puts all of it onto the report's `ImageEntry`s and returns the summary additions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

DEFAULT_OUTSIDE_LIMIT = 0.2  # the gate's default: at most a fifth of the heat outside the retina
FEATURE_TILE = 32  # px per feature map in the per-image grids (16 images x 10 layers stay a few MB)


def guess_modality(image: np.ndarray) -> str:
    """`oct` for a grey image (three equal channels), else `fundus`: for Keras files without metadata."""
    img = np.asarray(image)
    if img.ndim == 2 or (img.ndim == 3 and np.array_equal(img[..., 0], img[..., 1]) and np.array_equal(img[..., 1], img[..., 2])):
        return "oct"
    return "fundus"


def anatomy_metrics(model_inputs: Sequence[np.ndarray], cams: dict[str, np.ndarray],
                    modality: str) -> dict[str, dict[str, dict[str, float]]]:
    """[image][method] -> {"mass": {...}, "area": {...}}; an image whose anatomy cannot be found gets {}."""
    from components.common.errors import RetinaError
    from components.explain.anatomy import anatomy_shares

    out = []
    for i, image in enumerate(model_inputs):
        mod = modality or guess_modality(image)
        try:
            shares = anatomy_shares(image, {m: c[i] for m, c in cams.items()}, mod)
        except RetinaError:
            out.append({})
            continue
        out.append({m: {"mass": s.mass, "area": s.area, "outside": s.outside_share} for m, s in shares.items()})
    return out  # type: ignore[return-value]


def outside_shares(anatomy: list[dict[str, Any]], method: str) -> np.ndarray:
    """[N] share of `method`'s heat outside the retina per image (NaN where the anatomy was not found)."""
    return np.array([a[method]["outside"] if method in a else np.nan for a in anatomy], dtype=np.float64)


def summarize_anatomy(anatomy: list[dict[str, Any]], limit: float = DEFAULT_OUTSIDE_LIMIT) -> dict[str, Any]:
    """Mean shares per method over the images, and how many maps put more than `limit` outside the retina."""
    methods = sorted({m for a in anatomy for m in a})
    summary: dict[str, Any] = {}
    for m in methods:
        found = [a[m] for a in anatomy if m in a]
        regions = list(dict.fromkeys(r for f in found for r in f["mass"]))  # a mixed folder: both sets
        summary[m] = {
            kind: {r: float(np.mean([f[kind][r] for f in found if r in f[kind]])) for r in regions}
            for kind in ("mass", "area")
        } | {"flagged": int(sum(f["outside"] > limit for f in found))}
    return summary


def ordinal_maps(model: Any, x: np.ndarray, predicted: np.ndarray, layer: str, regression: bool,
                 batch_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """(signed maps [N, S, S] in [-1, 1], lower grade [N]): Grad-CAM of score[k] - score[k-1], no ReLU.

    For grade 0 the view is 1 vs 0 (what would push the image up to grade 1). For a regression head the
    score is the grade itself. Each map is scaled by its largest magnitude, so the sign survives.
    """
    import tensorflow as tf

    from components.explain.cam import CamProbe

    probe = CamProbe(model, layer)
    upper = np.maximum(np.asarray(predicted, np.int64), 1)
    maps = []
    for start in range(0, len(x), batch_size):
        xb = tf.convert_to_tensor(x[start : start + batch_size], tf.float32)
        k = tf.convert_to_tensor(upper[start : start + batch_size], tf.int32)
        with tf.GradientTape() as tape:
            acts, scores = probe.probe(xb)
            a = acts[0]
            scores = tf.cast(scores, tf.float32)
            if regression:
                diff = scores[:, 0]
            else:
                diff = tf.gather(scores, k, axis=1, batch_dims=1) - tf.gather(scores, k - 1, axis=1, batch_dims=1)
            total = tf.reduce_sum(diff)
        grads = tape.gradient(total, a)
        weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
        cam = tf.reduce_sum(weights * a, axis=-1)[..., None]
        maps.append(tf.image.resize(cam, x.shape[1:3], method="bilinear")[..., 0].numpy())
    signed = np.concatenate(maps)
    scale = np.abs(signed).max(axis=(1, 2), keepdims=True)
    return np.where(scale > 1e-12, signed / np.maximum(scale, 1e-12), 0.0).astype(np.float32), upper - 1


def per_image_feature_maps(model: Any, x: np.ndarray, layers: Sequence[str] | None, maps_per_layer: int,
                           selection: str) -> list[list[Any]]:
    """[image] -> one `Figure` per conv layer: `maps_per_layer` maps as a grid of small tiles."""
    from components.explain.feature_maps import feature_maps, render_maps_grid
    from components.explain.report import Figure

    layer_maps = feature_maps(model, x, layers=list(layers) if layers else None, maps_per_layer=maps_per_layer,
                              selection=selection)
    return [[Figure(lm.layer, render_maps_grid(lm.maps[i], tile_size=FEATURE_TILE),
                    f"{lm.maps.shape[-1]} of {lm.num_channels} channels, {lm.maps.shape[1]}x{lm.maps.shape[2]}")
             for lm in layer_maps] for i in range(len(x))]


@dataclass
class ChampionMaps:
    uri: str
    method: str
    cams: np.ndarray  # [N, S, S] on the challenger's grid
    predicted: np.ndarray  # [N]
    ssim: np.ndarray  # [N] SSIM(champion map, challenger map)


def champion_comparison(champion_uri: str, x: np.ndarray, challenger_cams: np.ndarray, method: str,
                        batch_size: int = 16) -> ChampionMaps:
    """The champion's `method` map of the same images (resized to its input size, maps back), with SSIM.

    Each model explains its own prediction: the question is where each looks for its answer.
    """
    import tensorflow as tf

    from components.common.model_store import load_model
    from components.explain.cam import compute_cams
    from components.explain.faithfulness import ssim_per_image

    model, info = load_model(champion_uri)
    size = int(model.inputs[0].shape[1] or x.shape[1])
    xc = x if size == x.shape[1] else tf.image.resize(x, (size, size), method="area").numpy()
    result = compute_cams(model, xc, [method if method != "scorecam" else "gradcam"], batch_size=batch_size)
    res = next(iter(result.values()))
    cams = res.cams
    if size != x.shape[1]:
        cams = tf.image.resize(cams[..., None], x.shape[1:3], method="bilinear")[..., 0].numpy()
    if getattr(info, "head", "softmax") == "regression":
        from components.common.model_store import outputs_to_classes

        predicted = np.asarray(outputs_to_classes(res.probabilities, info))
    else:
        predicted = res.probabilities.argmax(-1)
    return ChampionMaps(champion_uri, method, cams, predicted, ssim_per_image(cams, challenger_cams))


@dataclass(frozen=True)
class ClinicalOptions:
    """What `enrich_entries` adds; the job fills it from its own config."""

    modality: str = ""  # "" = guessed per image
    ordinal: bool = True  # DR only: the grade-up / grade-down view
    feature_maps: bool = True
    layers: tuple[str, ...] = ()
    maps_per_layer: int = 32
    map_selection: str = "first"
    champion_uri: str = ""
    outside_limit: float = DEFAULT_OUTSIDE_LIMIT
    batch_size: int = 16


def enrich_entries(entries: list[Any], model: Any, x: np.ndarray, masks: Sequence[np.ndarray | None],
                   cams: dict[str, np.ndarray], predicted: np.ndarray, layer: str, regression: bool,
                   class_names: Sequence[str], anatomy: list[dict[str, Any]] | None,
                   options: ClinicalOptions) -> dict[str, Any]:
    """Fill lesion masks, anatomy, the ordinal view, per-image feature maps and the champion's maps into
    `entries` (one per row of `x`, in order); return the report-summary additions."""
    from components.explain.anatomy import anatomy_view
    from components.explain.report import Figure, overlay, signed_overlay

    images = [e.model_input for e in entries]
    anatomy = anatomy if anatomy is not None else anatomy_metrics(images, cams, options.modality)
    modality = options.modality or (guess_modality(images[0]) if images else "fundus")
    for e, mask, a in zip(entries, masks, anatomy, strict=True):
        e.mask = mask if mask is not None and np.any(mask) else None
        e.anatomy = {m: {"mass": v["mass"], "area": v["area"]} for m, v in a.items()}
        if a:
            e.anatomy_view = anatomy_view(e.model_input, options.modality or guess_modality(e.model_input))
    summary: dict[str, Any] = {"anatomy": summarize_anatomy(anatomy, options.outside_limit),
                               "anatomy_limit": options.outside_limit, "modality": modality}
    if options.ordinal and modality == "fundus" and (regression or len(class_names) > 2):
        signed, lower = ordinal_maps(model, x, predicted, layer, regression, options.batch_size)
        for e, s, k in zip(entries, signed, lower, strict=True):
            title = "grade up / down" if regression else f"{_name(class_names, k + 1)} vs {_name(class_names, k)}"
            e.ordinal = [Figure(title, signed_overlay(e.model_input, s), "red: pushes up, blue: down")]
    if options.feature_maps:
        grids = per_image_feature_maps(model, x, options.layers, options.maps_per_layer, options.map_selection)
        for e, g in zip(entries, grids, strict=True):
            e.feature_maps = g
    if options.champion_uri:
        method = next(iter(cams))
        champ = champion_comparison(options.champion_uri, x, cams[method], method, options.batch_size)
        for e, c, ssim, pred in zip(entries, champ.cams, champ.ssim, champ.predicted, strict=True):
            e.champion_overlays = {method: overlay(e.model_input, c)}
            e.champion_ssim = {method: float(ssim)}
            e.champion_predicted = int(pred)
        summary["champion_ssim"] = float(np.mean(champ.ssim))
        summary["champion_uri"] = options.champion_uri
    return summary


def _name(names: Sequence[str], idx: int) -> str:
    return names[idx] if 0 <= idx < len(names) else f"grade {idx}"
