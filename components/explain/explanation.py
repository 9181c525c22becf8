"""The batch explanation job: a model + a folder of images -> a published report.

`explain_images` loads the model through `components.common.model_store.load_model` (local folder,
bare `.keras` file, `s3://`, `runs:/`, `models:/name@alias`), takes the input size and the
preprocessing from the model's metadata (so the explainer sees exactly what the model was trained on;
a bare Keras file with no metadata gets a plain resize), reads the images, computes the CAMs of every
requested method in shared batched passes, the faithfulness metrics, feature maps of every conv layer
and filter views, and publishes `<reports>/<model>/<version>/<run>/` atomically.

Inputs it understands:
- a preprocessed dataset folder (`manifest.json` present): TFRecord shards, labels, `mask` feature;
- a raw dataset in the EyePACS / Kermany layout (labels and `masks/<id>.png` via `read_dataset`);
- any folder / prefix of JPEG/PNG/TIFF/BMP files (masks at `masks/<stem>.png` when present).
An image that cannot be read is listed in the report with the reason; the run goes on.
"""

from __future__ import annotations

import datetime as _dt
import logging
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from components.common import storage
from components.common.errors import ImageRejected, RetinaError, StorageError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")
DEFAULT_METHODS = "gradcam,gradcam++,layercam"
DISPLAY_SIZE = 384  # originals are downscaled to this for the report (a 3888 px fundus is 20 MB as PNG)


@dataclass
class InputImage:
    image_id: str
    source: str
    original: np.ndarray  # uint8 as decoded (display copy)
    model_input: np.ndarray  # uint8 [S, S, 3]
    mask: np.ndarray | None  # uint8 [S, S] on the model-input grid, 255 = lesion
    label: int | None


@dataclass
class ExplainResult:
    report_uri: str
    pointing_game: float  # mean over images with masks, first method; -1.0 when no image has a mask
    summary: dict[str, Any]
    local_dir: str = ""
    problems: list[tuple[str, str]] = field(default_factory=list)

    @property
    def gate_passed(self) -> bool:
        """The faithfulness gate (thresholds on the summary metrics); a report with no images passes."""
        return bool((self.summary.get("gate") or {}).get("passed", True))


class ExplanationGateFailed(RetinaError):
    """The report is published, but its faithfulness numbers are below the thresholds the caller set."""


def require_gate(result: ExplainResult) -> ExplainResult:
    """Raise `ExplanationGateFailed` naming each failed metric and the report; else return the result."""
    from components.explain.faithfulness import format_failures

    if not result.gate_passed:
        raise ExplanationGateFailed(
            f"explanations failed the faithfulness gate: {format_failures(result.summary['gate'])}; "
            f"report: {result.report_uri}/index.html"
        )
    return result


# --------------------------------------------------------------------------- model
def load_explainable_model(model_uri: str) -> tuple[Any, Any]:
    """(keras.Model, ModelInfo) from any model URI the project knows."""
    from components.common.model_store import load_model

    return load_model(model_uri)


# Pixel range a model expects -> (scale, offset) applied to [0, 1] images. The project's models take [0, 1];
# a Keras file from elsewhere may take raw 0-255 pixels or [-1, 1].
INPUT_RANGES: dict[str, tuple[float, float]] = {"0-1": (1.0, 0.0), "0-255": (255.0, 0.0), "-1-1": (2.0, -1.0)}


def with_input_range(model: Any, input_range: str) -> Any:
    """`model` behind a Rescaling layer, so the explanation code feeds [0, 1] images to every model.

    Baselines (grey 0.5), perturbations and overlays all live in [0, 1]; only the model sees its own range.
    The original model is nested unchanged: CAM surgery and feature maps reach its layers as usual.
    """
    scale, offset = INPUT_RANGES[input_range]  # a KeyError here is a caller's bug: explain_images checks first
    if (scale, offset) == (1.0, 0.0):
        return model
    import keras

    inputs = keras.Input(model.inputs[0].shape[1:], name="image_0_1")
    scaled = keras.layers.Rescaling(scale, offset, name=f"to_{input_range.replace('-', '_')}")(inputs)
    return keras.Model(inputs, model(scaled), name=model.name)


def model_identity(model_uri: str, info: Any) -> tuple[str, str]:
    """(model name, version) for the report path.

    `models:/name@alias` resolves the alias to its version number when the registry answers;
    `runs:/<id>/…` gives `run-<id8>`; local files use the model's name and `local`.
    """
    uri = str(model_uri)
    if uri.startswith("models:/"):
        rest = uri[len("models:/") :]
        if "@" in rest:
            name, alias = rest.split("@", 1)
            try:
                from mlflow.tracking import MlflowClient

                return name, str(MlflowClient().get_model_version_by_alias(name, alias).version)
            except Exception:  # noqa: BLE001 - the alias name still identifies the report
                return name, alias
        name, _, version = rest.partition("/")
        return name, version or "latest"
    name = getattr(info, "model_name", "") or Path(uri.rstrip("/")).stem or "model"
    if uri.startswith("runs:/"):
        return name, "run-" + uri[len("runs:/") :].split("/", 1)[0][:8]
    run_id = getattr(info, "run_id", "") or ""
    return name, f"run-{run_id[:8]}" if run_id else "local"


# --------------------------------------------------------------------------- preprocessing
def make_preprocessor(info: Any, image_size: int) -> Callable[[np.ndarray, np.ndarray | None], tuple]:
    """(image, mask) -> (uint8 [S,S,3], mask [S,S] | None) with the model's own preprocessing.

    Uses `components.preprocess.ops.preprocess_image` with the parameters stored in the model's
    metadata; without metadata (any Keras file) it is a plain area resize, as the OCT seed did.
    """
    import cv2

    params = None
    preprocessing = getattr(info, "preprocessing", None) or {}
    if preprocessing:
        try:
            from components.preprocess.ops import PreprocessParams, preprocess_image

            params = PreprocessParams.from_dict(preprocessing)
        except ModuleNotFoundError:
            log.warning("components.preprocess is not installed: falling back to a plain resize")

    def to_rgb(img: np.ndarray) -> np.ndarray:
        return np.repeat(img[..., None], 3, axis=-1) if img.ndim == 2 else img[..., :3]

    def resize_mask(mask: np.ndarray | None) -> np.ndarray | None:
        if mask is None:
            return None
        m = mask[..., 0] if mask.ndim == 3 else mask
        if m.shape != (image_size, image_size):
            m = cv2.resize(m, (image_size, image_size), interpolation=cv2.INTER_NEAREST)
        return m

    def plain(img: np.ndarray, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
        img = to_rgb(img)
        if img.shape[:2] != (image_size, image_size):
            img = cv2.resize(img, (image_size, image_size), interpolation=cv2.INTER_AREA)
        return img, resize_mask(mask)

    if params is None:
        return plain

    def with_params(img: np.ndarray, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
        if getattr(params, "modality", "") == "oct" and img.ndim == 3:
            img = cv2.cvtColor(img[..., :3], cv2.COLOR_RGB2GRAY)
        out = preprocess_image(img, params, mask=mask)
        return plain(out.image, out.mask)

    return with_params


def decode(data: bytes, name: str) -> np.ndarray:
    """Encoded bytes -> uint8 RGB or grey; ImageRejected with the reason when it cannot be decoded."""
    import cv2

    if not data:
        raise ImageRejected(name, "empty file")
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ImageRejected(name, "not a decodable image (corrupt or unsupported format)")
    if img.dtype != np.uint8:
        img = cv2.convertScaleAbs(img, alpha=255.0 / max(1.0, float(img.max())))
    if img.ndim == 3:
        img = cv2.cvtColor(img[..., :3], cv2.COLOR_BGR2RGB)
    return img


def _display_copy(img: np.ndarray) -> np.ndarray:
    import cv2

    rgb = np.repeat(img[..., None], 3, axis=-1) if img.ndim == 2 else img
    scale = DISPLAY_SIZE / max(rgb.shape[:2])
    if scale < 1:
        rgb = cv2.resize(rgb, (round(rgb.shape[1] * scale), round(rgb.shape[0] * scale)), interpolation=cv2.INTER_AREA)
    return rgb


# --------------------------------------------------------------------------- inputs
@dataclass
class _Candidate:
    image_id: str
    uri: str
    label: int | None = None
    mask_uri: str | None = None


def _list_raw(images_uri: str, modality: str) -> tuple[list[_Candidate], list[tuple[str, str]]]:
    """Candidates from a recognised dataset layout, else every image file under the folder."""
    problems: list[tuple[str, str]] = []
    if modality:
        try:
            from components.common.datasets import read_dataset

            listing = read_dataset(images_uri, modality)
            if listing.records:
                problems += [(p.name, p.reason) for p in listing.problems]
                return [_Candidate(r.image_id, r.uri, r.label, r.mask_uri) for r in listing.records], problems
        except ModuleNotFoundError:
            pass
        except Exception as exc:  # noqa: BLE001 - not that layout: fall back to a plain listing
            log.debug("not a %s dataset layout (%s); listing image files", modality, exc)
    uris = storage.list_uris(images_uri)
    masks = {storage.basename(u): u for u in uris if "/masks/" in u.replace("\\", "/")}
    out = []
    for u in uris:
        if "/masks/" in u.replace("\\", "/"):
            continue
        name = storage.basename(u)
        if not name.lower().endswith(IMAGE_SUFFIXES):
            continue
        stem = name.rsplit(".", 1)[0]
        out.append(_Candidate(stem, u, None, masks.get(f"{stem}.png")))
    return out, problems


def _read_raw(
    candidates: list[_Candidate], preprocess: Callable, max_images: int, progress: bool
) -> tuple[list[InputImage], list[tuple[str, str]]]:
    """Read candidates in order until `max_images` could be used; the unusable ones are listed."""
    from tqdm import tqdm

    images: list[InputImage] = []
    problems: list[tuple[str, str]] = []
    bar = tqdm(total=min(max_images, len(candidates)), desc="read images", unit="img", disable=not progress)
    for c in candidates:
        if len(images) >= max_images:
            break
        name = storage.basename(c.uri)
        try:
            img = decode(storage.read_bytes(c.uri), name)
            mask = None
            if c.mask_uri:
                try:
                    mask = decode(storage.read_bytes(c.mask_uri), storage.basename(c.mask_uri))
                    mask = mask[..., 0] if mask.ndim == 3 else mask
                except (ImageRejected, StorageError) as exc:
                    log.warning("mask of %s unusable: %s", name, exc)
            model_input, model_mask = preprocess(img, mask)
        except ImageRejected as exc:
            problems.append((name, exc.reason))
            continue
        except StorageError as exc:
            problems.append((name, str(exc)))
            continue
        except Exception as exc:  # noqa: BLE001 - one bad image must not stop the batch
            problems.append((name, f"preprocessing failed: {type(exc).__name__}: {exc}"))
            continue
        images.append(InputImage(c.image_id, c.uri, _display_copy(img), model_input, model_mask, c.label))
        bar.update(1)
    bar.close()
    return images, problems


def _read_tfrecords(images_uri: str, image_size: int, max_images: int) -> tuple[list[InputImage], list[tuple[str, str]]]:
    """Already-preprocessed images from the dataset's shards (test split first)."""
    import tensorflow as tf

    from components.common.shards import read_manifest, split_shards, stage_dataset

    manifest = read_manifest(images_uri)
    root = stage_dataset(images_uri)
    splits = list(manifest.get("splits", {}))
    ordered = [s for s in ("test", "val", "train") if s in splits] + [s for s in splits if s not in ("test", "val", "train")]
    images: list[InputImage] = []
    problems: list[tuple[str, str]] = []
    for split in ordered:
        for shard in split_shards(root, split, manifest):
            for n, raw in enumerate(tf.data.TFRecordDataset(str(shard), compression_type="GZIP")):
                if len(images) >= max_images:
                    return images, problems
                ex = tf.train.Example.FromString(raw.numpy()).features.feature
                image_id = ex["image_id"].bytes_list.value[0].decode() if "image_id" in ex else f"{shard.name}#{n}"
                try:
                    img = decode(ex["image"].bytes_list.value[0], image_id)
                    mask = None
                    if "mask" in ex and ex["mask"].bytes_list.value:
                        mask = decode(ex["mask"].bytes_list.value[0], image_id + " mask")
                        mask = mask[..., 0] if mask.ndim == 3 else mask
                    label = int(ex["label"].int64_list.value[0]) if "label" in ex else None
                    rgb = np.repeat(img[..., None], 3, axis=-1) if img.ndim == 2 else img
                    model_input, model_mask = _resize_only(rgb, mask, image_size)
                except (ImageRejected, IndexError, KeyError) as exc:
                    problems.append((image_id, getattr(exc, "reason", f"bad record: {exc}")))
                    continue
                images.append(InputImage(image_id, f"{split}/{shard.name}", rgb, model_input, model_mask, label))
    return images, problems


def _resize_only(img: np.ndarray, mask: np.ndarray | None, size: int) -> tuple[np.ndarray, np.ndarray | None]:
    import cv2

    if img.shape[:2] != (size, size):
        img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
    if mask is not None and mask.shape[:2] != (size, size):
        mask = cv2.resize(mask, (size, size), interpolation=cv2.INTER_NEAREST)
    return img, mask


def read_inputs(
    images_uri: str, info: Any, image_size: int, max_images: int, progress: bool = True
) -> tuple[list[InputImage], list[tuple[str, str]]]:
    """Images (with labels/masks when the source has them) ready for the model, plus unreadable ones."""
    if not storage.exists(images_uri):
        raise StorageError(f"no such image folder or prefix: {images_uri}")
    if storage.exists(storage.join(images_uri, "manifest.json")):
        return _read_tfrecords(images_uri, image_size, max_images)
    candidates, problems = _list_raw(images_uri, getattr(info, "modality", "") or "")
    if not candidates and not problems:
        raise RetinaError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {images_uri}")
    images, bad = _read_raw(candidates, make_preprocessor(info, image_size), max_images, progress)
    return images, problems + bad


# --------------------------------------------------------------------------- the job
def explain_images(
    model_uri: str,
    images_uri: str,
    reports_uri: str,
    methods: str | Sequence[str] = DEFAULT_METHODS,
    max_images: int = 16,
    run_name: str = "",
    batch_size: int = 16,
    cam_layer: str | None = None,
    layers: Sequence[str] | None = None,
    maps_per_layer: int = 32,
    map_selection: str = "first",
    feature_map_images: int = 1,
    filter_count: int = 8,
    filter_steps: int = 32,
    faithfulness_steps: int = 16,
    baseline: str = "grey",
    thresholds: str | dict[str, tuple[str, float]] | None = None,
    input_range: str = "0-1",
    html_path: str | None = None,
    markdown_path: str | None = None,
    progress: bool = True,
) -> ExplainResult:
    """Explain up to `max_images` images with each CAM method and publish the report.

    Returns the report URI and the pointing game of the first method (-1.0 when there are no masks).
    `layers` restricts the feature-map grids and names the layers whose filters are visualised
    (default: every conv layer for maps, the last conv layer for activation maximisation).
    `thresholds` (`faithfulness.parse_thresholds` text or a dict; None = the defaults) set the
    faithfulness gate recorded in `summary.json`; `require_gate(result)` turns a failed gate into an error.
    `input_range` is the pixel range the model expects (`with_input_range`).
    """
    from tqdm import tqdm

    from components.explain import faithfulness as faith
    from components.explain import filters as filt
    from components.explain.cam import CamProbe, compute_cams, parse_methods
    from components.explain.feature_maps import feature_maps, render_maps_grid
    from components.explain.report import (
        Grid,
        ImageEntry,
        Report,
        overlay,
    )
    from components.explain.surgery import conv_layers

    method_names = parse_methods(methods)
    if isinstance(thresholds, str):  # checked before any work, so a typo costs nothing
        thresholds = faith.parse_thresholds(thresholds)
    if input_range not in INPUT_RANGES:
        raise RetinaError(f"unknown input range {input_range!r}: expected one of {', '.join(INPUT_RANGES)}")
    if max_images < 1:
        raise RetinaError(f"max_images must be at least 1, got {max_images}")
    model, info = load_explainable_model(model_uri)
    model = with_input_range(model, input_range)
    image_size = int(model.inputs[0].shape[1] or info.image_size)
    class_names = list(info.class_names)
    model_name, model_version = model_identity(model_uri, info)
    run_name = run_name or _dt.datetime.now(_dt.UTC).strftime("%Y%m%dT%H%M%SZ")

    inputs, problems = read_inputs(images_uri, info, image_size, max_images, progress)
    probe = CamProbe(model, cam_layer)
    if not inputs:
        # Unreadable images are listed, never fatal: a shard of only rejected images still gets its report.
        log.warning("none of the images under %s could be read (%d unreadable)", images_uri, len(problems))
        empty = Report(
            model_name=model_name, model_version=model_version, run_name=run_name, model_uri=str(model_uri),
            images_uri=str(images_uri), class_names=class_names, methods=method_names, cam_layer=probe.layer,
            score_kind=probe.score_kind, entries=[], problems=problems,
            summary={"metrics": {}, "gate": {}, "pointing_game": None, "class_names": class_names},
        )
        return _publish(empty, reports_uri, html_path, markdown_path)
    x = np.stack([im.model_input for im in inputs]).astype(np.float32) / 255.0

    cams: dict[str, list[np.ndarray]] = {m: [] for m in method_names}
    targets, probs = [], []
    for start in tqdm(range(0, len(x), batch_size), desc="CAMs", unit="batch", disable=not progress):
        part = compute_cams(model, x[start : start + batch_size], method_names, probe=probe, batch_size=batch_size)
        for m in method_names:
            cams[m].append(part[m].cams)
        first = part[method_names[0]]
        targets.append(first.targets)
        probs.append(first.probabilities)
    cam_arrays = {m: np.concatenate(v) for m, v in cams.items()}
    target_arr = np.concatenate(targets)
    prob_arr = np.concatenate(probs)
    is_regression = getattr(info, "head", "softmax") == "regression"
    if is_regression:
        from components.common.model_store import outputs_to_classes

        predicted = outputs_to_classes(prob_arr, info)
    else:
        predicted = prob_arr.argmax(-1)

    # Faithfulness per method.
    def predict(batch: np.ndarray) -> np.ndarray:
        return np.asarray(model(batch, training=False), dtype=np.float32)

    per_image: dict[str, dict[str, np.ndarray]] = {}
    masks = [im.mask for im in inputs]
    has_masks = [m is not None for m in masks]
    for m in tqdm(method_names, desc="faithfulness", unit="method", disable=not progress):
        metrics: dict[str, np.ndarray] = {}
        if faithfulness_steps > 0:
            di = faith.deletion_insertion(predict, x, cam_arrays[m], target_arr, steps=faithfulness_steps,
                                          baseline=baseline, batch_size=max(batch_size, 32))
            metrics["deletion_auc"] = di["deletion_auc"]
            metrics["insertion_auc"] = di["insertion_auc"]
        if any(has_masks):
            idx = [i for i, h in enumerate(has_masks) if h]
            pg = faith.pointing_game(cam_arrays[m][idx], np.stack([masks[i] for i in idx]))
            for key, vals in pg.items():
                full = np.full(len(inputs), np.nan)
                full[idx] = vals
                metrics[key] = full
        per_image[m] = metrics
    primary = method_names[0]
    probe_method = primary if primary != "scorecam" else "gradcam"

    def cam_fn(rand_model: Any, images: np.ndarray, tgts: np.ndarray) -> np.ndarray:
        rand_probe = CamProbe(rand_model, probe.layer)
        return compute_cams(rand_model, images, [probe_method], targets=tgts, probe=rand_probe,
                            batch_size=batch_size)[probe_method].cams

    ssim = faith.randomization_check(cam_fn, model, x, target_arr, cam_arrays[probe_method])
    per_image.setdefault(probe_method, {})["randomization_ssim"] = ssim

    metric_summary = {m: faith.summarize(v) for m, v in per_image.items()}
    gate = faith.gate(metric_summary.get(primary, {}) | metric_summary.get(probe_method, {}), thresholds)

    entries = []
    for i, im in enumerate(inputs):
        entries.append(ImageEntry(
            image_id=im.image_id,
            source=im.source,
            original=im.original,
            model_input=im.model_input,
            predicted=int(predicted[i]),
            probabilities=[float(p) for p in prob_arr[i]] if not is_regression else [float(prob_arr[i].reshape(-1)[0])],
            true_label=im.label,
            overlays={m: overlay(im.model_input, cam_arrays[m][i]) for m in method_names},
            metrics={m: {k: float(v[i]) for k, v in per_image[m].items()} for m in per_image},
        ))

    # Feature maps (every conv layer, one forward pass) and filters.
    grids: list[Grid] = []
    n_maps = min(feature_map_images, len(inputs))
    if n_maps > 0:
        layer_maps = feature_maps(model, x[:n_maps], layers=layers or None, maps_per_layer=maps_per_layer,
                                  selection=map_selection)
        for lm in layer_maps:
            for i in range(n_maps):
                grids.append(Grid(
                    f"{lm.layer} · {inputs[i].image_id}",
                    render_maps_grid(lm.maps[i]),
                    f"{lm.maps.shape[-1]} of {lm.num_channels} channels ({map_selection}); output {lm.maps.shape[1]}x{lm.maps.shape[2]}",
                ))
    filter_grids: list[Grid] = []
    first_path, kernel = filt.first_conv_kernels(model)
    filter_grids.append(Grid(f"{first_path} kernels", filt.kernel_tiles(kernel),
                             f"{kernel.shape[0]}x{kernel.shape[1]} kernels, {kernel.shape[-1]} filters"))
    if filter_count > 0 and filter_steps > 0:
        am_layers = list(layers) if layers else [conv_layers(model)[-1].path]
        for layer in am_layers:
            images_am = filt.maximize_activations(model, layer, filter_count, steps=filter_steps)
            filter_grids.append(Grid(f"{layer} activation maximisation", filt.images_grid(images_am),
                                     f"{len(images_am)} filters, {filter_steps} gradient-ascent steps from grey noise"))

    pointing = metric_summary.get(primary, {}).get("pointing_game")
    summary = {
        "metrics": metric_summary,
        "gate": gate,
        "pointing_game": pointing,
        "class_names": class_names,
    }
    report = Report(
        model_name=model_name, model_version=model_version, run_name=run_name, model_uri=str(model_uri),
        images_uri=str(images_uri), class_names=class_names, methods=method_names, cam_layer=probe.layer,
        score_kind=probe.score_kind, entries=entries, problems=problems, feature_maps=grids,
        filters=filter_grids, summary=summary,
    )
    return _publish(report, reports_uri, html_path, markdown_path)


def _publish(report: Any, reports_uri: str, html_path: str | None, markdown_path: str | None) -> ExplainResult:
    """Render the report, write the KFP HTML/Markdown files, publish it atomically under its final URI."""
    from components.explain.report import (
        markdown_summary,
        publish_report,
        report_uri,
        self_contained_html,
        summary_json,
        write_report,
    )

    target_uri = report_uri(reports_uri, report.model_name, report.model_version, report.run_name)
    with tempfile.TemporaryDirectory(prefix="retina-report-") as tmp:
        write_report(report, tmp)
        if html_path:
            Path(html_path).parent.mkdir(parents=True, exist_ok=True)
            Path(html_path).write_text(self_contained_html(report, tmp), encoding="utf-8")
        if markdown_path:
            Path(markdown_path).parent.mkdir(parents=True, exist_ok=True)
            Path(markdown_path).write_text(markdown_summary(report, target_uri), encoding="utf-8")
        publish_report(tmp, target_uri)
    pointing = report.summary.get("pointing_game")
    return ExplainResult(
        report_uri=target_uri,
        pointing_game=float(pointing) if pointing is not None else -1.0,
        summary=summary_json(report),
        problems=report.problems,
    )
