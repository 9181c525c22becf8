"""The batch explanation job: a model + a folder of images -> a published report, in four stages.

    inputs        `read_inputs`: images (labels, lesion masks when the source has them) at the model's size
    attributions  `compute_attributions`: CAMs of every method in shared batched passes, faithfulness
                  metrics (pointing game with Zhang et al.'s tolerance, energy-in-mask,
                  deletion/insertion, model-randomisation SSIM) and the gate
    visuals       `build_visuals`: overlays per image, feature maps of every conv layer, filter views
    report        `assemble_report` + `publish`: `<reports>/<model>/<version>/<run>/`, atomically

`explain_images` composes them. Every knob lives in one frozen `ExplainConfig` (defaults in one place);
the CLI and the KFP component build one. The model comes through `components.common.model_store`
(local folder, `.keras` file, `s3://`, `runs:/`, `models:/name@alias`) with its input size and
preprocessing from its metadata, so the explainer sees exactly what the model was trained on.
"""

from __future__ import annotations

import datetime as _dt
import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from components.common.errors import RetinaError
from components.explain.config import (  # noqa: F401 - re-exported: callers import the config from here
    DEFAULT_METHODS,
    INPUT_RANGES,
    ExplainConfig,
)
from components.explain.inputs import (  # noqa: F401 - re-exported: the job's first stage
    DISPLAY_SIZE,
    IMAGE_SUFFIXES,
    InputImage,
    decode,
    make_preprocessor,
    read_inputs,
)

log = logging.getLogger(__name__)

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


def with_input_range(model: Any, input_range: str) -> Any:
    """`model` behind a Rescaling layer, so the explanation code feeds [0, 1] images to every model.

    Baselines (a blurred copy, or grey 0.5), perturbations and overlays all live in [0, 1]; only the model sees
    its own range.
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

    `models:/name@alias` resolves the alias to its version number when the registry answers (else the
    alias names the report); `runs:/<id>/…` gives `run-<id8>`; local files use the model's name and
    `local` (or `run-<id8>` when its metadata names the run that trained it).
    """
    from components.common.model_ref import ModelRef, ModelRefError

    ref = ModelRef.parse(str(model_uri))
    if ref.kind == "registry":
        try:
            return ref.name, ref.pinned().version
        except ModelRefError:  # the registry did not answer: the alias still identifies the report
            return ref.name, ref.alias
    name = getattr(info, "model_name", "") or Path(ref.path.rstrip("/")).stem or "model"
    run_id = ref.run_id if ref.kind == "run" else getattr(info, "run_id", "") or ""
    return name, f"run-{run_id[:8]}" if run_id else "local"


@dataclass
class Subject:
    """The model under explanation, behind its input-range adapter, and how the report names it."""

    model: Any
    info: Any
    uri: str
    image_size: int
    class_names: list[str]
    name: str
    version: str

    @property
    def is_regression(self) -> bool:
        return getattr(self.info, "head", "softmax") == "regression"


def load_subject(model_uri: str, config: ExplainConfig) -> Subject:
    model, info = load_explainable_model(model_uri)
    model = with_input_range(model, config.input_range)
    name, version = model_identity(model_uri, info)
    return Subject(model=model, info=info, uri=str(model_uri), image_size=int(model.inputs[0].shape[1] or info.image_size),
                   class_names=list(info.class_names), name=name, version=version)


# --------------------------------------------------------------------------- attributions
@dataclass
class Attributions:
    """Stage 2's output: a map per method and image, what each map explains, and how faithful it is."""

    methods: list[str]
    cams: dict[str, np.ndarray]  # method -> [N, S, S] in [0, 1]
    targets: np.ndarray  # [N] class each map explains
    outputs: np.ndarray  # [N, C] probabilities (or [N, 1] regression grades)
    predicted: np.ndarray  # [N] predicted class ids
    cam_layer: str
    score_kind: str
    per_image: dict[str, dict[str, np.ndarray]]  # method -> metric -> [N] (NaN = not applicable)
    summary: dict[str, Any]  # metrics per method, gate, pointing game with its tolerance


def as_batch(inputs: Sequence[InputImage]) -> np.ndarray:
    """float32 [N, S, S, 3] in [0, 1]: what every stage feeds the model."""
    return np.stack([im.model_input for im in inputs]).astype(np.float32) / 255.0


def run_cams(model: Any, x: np.ndarray, config: ExplainConfig, probe: Any) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """(method -> cams [N,S,S], targets [N], model outputs [N,C]) in batches sharing one probe."""
    from tqdm import tqdm

    from components.explain.cam import compute_cams

    names = config.method_names
    cams: dict[str, list[np.ndarray]] = {m: [] for m in names}
    targets, outputs = [], []
    for start in tqdm(range(0, len(x), config.batch_size), desc="CAMs", unit="batch", disable=not config.progress):
        part = compute_cams(model, x[start : start + config.batch_size], names, probe=probe, batch_size=config.batch_size)
        for m in names:
            cams[m].append(part[m].cams)
        targets.append(part[names[0]].targets)
        outputs.append(part[names[0]].probabilities)
    return {m: np.concatenate(v) for m, v in cams.items()}, np.concatenate(targets), np.concatenate(outputs)


def predicted_classes(subject: Subject, outputs: np.ndarray) -> np.ndarray:
    if subject.is_regression:
        from components.common.model_store import outputs_to_classes

        return outputs_to_classes(outputs, subject.info)
    return outputs.argmax(-1)


def faithfulness_metrics(model: Any, x: np.ndarray, cams: np.ndarray, targets: np.ndarray,
                         masks: Sequence[np.ndarray | None], config: ExplainConfig) -> dict[str, np.ndarray]:
    """Per-image deletion/insertion AUC and, for the images with a non-empty lesion mask, the pointing
    game (hit within `config.tolerance_px`), energy-in-mask, the mask fraction and their ratio."""
    from components.explain import faithfulness as faith

    metrics: dict[str, np.ndarray] = {}
    if config.faithfulness_steps > 0:
        def predict(batch: np.ndarray) -> np.ndarray:
            return np.asarray(model(batch, training=False), dtype=np.float32)

        di = faith.deletion_insertion(predict, x, cams, targets, steps=config.faithfulness_steps,
                                      baseline=config.baseline, batch_size=max(config.batch_size, 32))
        metrics["deletion_auc"], metrics["insertion_auc"] = di["deletion_auc"], di["insertion_auc"]
    idx = [i for i, m in enumerate(masks) if m is not None]
    if idx:
        pg = faith.pointing_game(cams[idx], np.stack([masks[i] for i in idx]),
                                 tolerance=config.tolerance_px(cams.shape[1]))
        for key, vals in pg.items():
            metrics[key] = np.full(len(x), np.nan)
            metrics[key][idx] = vals
    return metrics


def randomization_ssim(model: Any, x: np.ndarray, targets: np.ndarray, trained: dict[str, np.ndarray],
                       layer: str, config: ExplainConfig) -> dict[str, np.ndarray]:
    """Adebayo et al.'s check for each gradient method: SSIM per image between the trained model's maps
    and those of one re-initialised clone (same targets, same layer). Score-CAM is skipped: its K
    masked forward passes per image would double the report's cost for a check the others already make."""
    from components.explain import faithfulness as faith
    from components.explain.cam import CamProbe, compute_cams

    methods = [m for m in trained if m != "scorecam"]
    if not methods:
        return {}
    clone = faith.randomized_clone(model)
    random = compute_cams(clone, x, methods, targets=targets, probe=CamProbe(clone, layer), batch_size=config.batch_size)
    return {m: faith.ssim_per_image(trained[m], random[m].cams) for m in methods}


def summarize_attributions(per_image: dict[str, dict[str, np.ndarray]], methods: list[str], probe_method: str,
                           tolerance_px: int, config: ExplainConfig) -> dict[str, Any]:
    """Means per method, the gate on the primary method (+ the randomisation check), and the pointing
    game of the primary method with the tolerance it was scored at."""
    from components.explain import faithfulness as faith

    metric_summary = {m: faith.summarize(v) for m, v in per_image.items()}
    primary = methods[0]
    gate = faith.gate(metric_summary.get(primary, {}) | metric_summary.get(probe_method, {}), config.gate_thresholds)
    scored = [m for m in methods if metric_summary.get(m, {}).get("pointing_game") is not None]
    best = max(scored, key=lambda m: metric_summary[m]["pointing_game"]) if scored else None
    return {
        "metrics": metric_summary,
        "gate": gate,
        "pointing_game": metric_summary.get(primary, {}).get("pointing_game"),
        "pointing_game_tolerance": {"px": tolerance_px, "px_at_224": config.pointing_tolerance,
                                    "rule": "hit if the map's maximum lies within px of the lesion mask "
                                            "(Zhang et al. 2016); images without lesions are not scored"},
        "best_pointing_method": best,
    }


def compute_attributions(subject: Subject, inputs: Sequence[InputImage], config: ExplainConfig) -> Attributions:
    """Stage 2: CAMs of every method (shared batched passes), faithfulness per image, summary and gate."""
    from tqdm import tqdm

    from components.explain.cam import CamProbe

    x = as_batch(inputs)
    probe = CamProbe(subject.model, config.cam_layer or None)
    methods = config.method_names
    cams, targets, outputs = run_cams(subject.model, x, config, probe)
    masks = [im.mask if im.mask is not None and np.any(im.mask) else None for im in inputs]
    per_image = {m: faithfulness_metrics(subject.model, x, cams[m], targets, masks, config)
                 for m in tqdm(methods, desc="faithfulness", unit="method", disable=not config.progress)}
    probe_method = methods[0] if methods[0] != "scorecam" else "gradcam"
    trained = dict(cams)
    if probe_method not in trained:
        trained[probe_method] = run_cams(subject.model, x, config.replace(methods=probe_method, progress=False),
                                         probe)[0][probe_method]
    for m, ssim in randomization_ssim(subject.model, x, targets, trained, probe.layer, config).items():
        per_image.setdefault(m, {})["randomization_ssim"] = ssim
    from components.explain import clinical  # the anatomy check's gate metric (h15)

    anatomy = clinical.anatomy_metrics([im.model_input for im in inputs], cams, getattr(subject.info, "modality", ""))
    per_image[methods[0]]["outside_retina_share"] = clinical.outside_shares(anatomy, methods[0])
    summary = summarize_attributions(per_image, methods, probe_method, config.tolerance_px(x.shape[1]), config)
    return Attributions(methods=methods, cams=cams, targets=targets, outputs=outputs,
                        predicted=predicted_classes(subject, outputs), cam_layer=probe.layer,
                        score_kind=probe.score_kind, per_image=per_image, summary=summary)


# --------------------------------------------------------------------------- visuals
@dataclass
class Visuals:
    """Stage 3's output: one report entry per image (overlays, metrics) and the layer-level grids."""

    entries: list[Any]
    feature_maps: list[Any]
    filters: list[Any]


def image_entries(subject: Subject, inputs: Sequence[InputImage], att: Attributions) -> list[Any]:
    from components.explain.report import ImageEntry, overlay

    entries = []
    for i, im in enumerate(inputs):
        out = att.outputs[i]
        entries.append(ImageEntry(
            image_id=im.image_id, source=im.source, original=im.original, model_input=im.model_input,
            predicted=int(att.predicted[i]),
            probabilities=[float(out.reshape(-1)[0])] if subject.is_regression else [float(p) for p in out],
            true_label=im.label,
            overlays={m: overlay(im.model_input, att.cams[m][i]) for m in att.methods},
            metrics={m: {k: float(v[i]) for k, v in att.per_image[m].items()} for m in att.per_image},
        ))
    return entries


def feature_map_grids(model: Any, inputs: Sequence[InputImage], config: ExplainConfig) -> list[Any]:
    """Feature maps of every conv layer (one forward pass) for the first `feature_map_images` images."""
    from components.explain.feature_maps import feature_maps, render_maps_grid
    from components.explain.report import Grid

    n = min(config.feature_map_images, len(inputs))
    if n <= 0:
        return []
    layer_maps = feature_maps(model, as_batch(inputs[:n]), layers=list(config.layers) or None,
                              maps_per_layer=config.maps_per_layer, selection=config.map_selection)
    return [
        Grid(f"{lm.layer} · {inputs[i].image_id}", render_maps_grid(lm.maps[i]),
             f"{lm.maps.shape[-1]} of {lm.num_channels} channels ({config.map_selection}); "
             f"output {lm.maps.shape[1]}x{lm.maps.shape[2]}")
        for lm in layer_maps for i in range(n)
    ]


def filter_grids(model: Any, config: ExplainConfig) -> list[Any]:
    """First-layer kernels, then activation maximisation of `filter_count` filters per chosen layer."""
    from components.explain import filters as filt
    from components.explain.report import Grid
    from components.explain.surgery import conv_layers

    first_path, kernel = filt.first_conv_kernels(model)
    grids = [Grid(f"{first_path} kernels", filt.kernel_tiles(kernel),
                  f"{kernel.shape[0]}x{kernel.shape[1]} kernels, {kernel.shape[-1]} filters")]
    if config.filter_count > 0 and config.filter_steps > 0:
        for layer in list(config.layers) or [conv_layers(model)[-1].path]:
            images = filt.maximize_activations(model, layer, config.filter_count, steps=config.filter_steps)
            grids.append(Grid(f"{layer} activation maximisation", filt.images_grid(images),
                              f"{len(images)} filters, {config.filter_steps} gradient-ascent steps from grey noise"))
    return grids


def build_visuals(subject: Subject, inputs: Sequence[InputImage], att: Attributions, config: ExplainConfig) -> Visuals:
    """Stage 3: overlays per image, the clinician's views (h15's `clinical`: lesion outlines, anatomy, the DR
    ordinal view, feature maps of every conv layer per image, the champion's maps), filter views."""
    from components.explain import clinical

    entries = image_entries(subject, inputs, att)
    att.summary.update(clinical.enrich_entries(
        entries, subject.model, as_batch(inputs), [im.mask for im in inputs], att.cams, att.predicted, att.cam_layer,
        subject.is_regression, subject.class_names, None, clinical.ClinicalOptions(
            modality=getattr(subject.info, "modality", ""), layers=tuple(config.layers), maps_per_layer=config.maps_per_layer,
            map_selection=config.map_selection, champion_uri=config.champion, batch_size=config.batch_size)))
    return Visuals(entries=entries, feature_maps=feature_map_grids(subject.model, inputs, config),
                   filters=filter_grids(subject.model, config))


# --------------------------------------------------------------------------- report
def assemble_report(subject: Subject, images_uri: str, run_name: str, problems: list[tuple[str, str]],
                    att: Attributions | None, visuals: Visuals | None, config: ExplainConfig) -> Any:
    """Stage 4a: the `Report` value (no I/O). Without attributions (no readable image) it lists the problems."""
    from components.explain.report import Report

    summary = att.summary if att else {"metrics": {}, "gate": {}, "pointing_game": None}
    return Report(
        model_name=subject.name, model_version=subject.version, run_name=run_name, model_uri=subject.uri,
        images_uri=str(images_uri), class_names=subject.class_names, methods=config.method_names,
        cam_layer=att.cam_layer if att else (config.cam_layer or ""), score_kind=att.score_kind if att else "",
        entries=visuals.entries if visuals else [], problems=problems,
        feature_maps=visuals.feature_maps if visuals else [], filters=visuals.filters if visuals else [],
        summary={**summary, "class_names": subject.class_names}, modality=summary.get("modality", ""),
        champion_uri=config.champion,
    )


def explain_images(model_uri: str, images_uri: str, reports_uri: str, config: ExplainConfig | None = None, *,
                   html_path: str | None = None, markdown_path: str | None = None, **overrides: Any) -> ExplainResult:
    """Explain up to `config.max_images` images with each CAM method and publish the report.

    `overrides` are `ExplainConfig` fields (`explain_images(m, i, r, methods="gradcam")`), applied on
    top of `config`. Returns the report URI, the summary and the pointing game of the first method
    (-1.0 when no image has a lesion mask); `require_gate(result)` turns a failed gate into an error.
    Unreadable images are listed in the report, never fatal: a shard of only rejected images still
    gets its report.
    """
    config = (config or ExplainConfig()).replace(**overrides) if overrides else (config or ExplainConfig())
    subject = load_subject(model_uri, config)
    run_name = config.run_name or _dt.datetime.now(_dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    inputs, problems = read_inputs(images_uri, subject.info, subject.image_size, config.max_images, config.progress)
    if not inputs:
        log.warning("none of the images under %s could be read (%d unreadable)", images_uri, len(problems))
        report = assemble_report(subject, images_uri, run_name, problems, None, None, config)
        return publish(report, reports_uri, html_path, markdown_path)
    att = compute_attributions(subject, inputs, config)
    visuals = build_visuals(subject, inputs, att, config)
    report = assemble_report(subject, images_uri, run_name, problems, att, visuals, config)
    return publish(report, reports_uri, html_path, markdown_path)


# --------------------------------------------------------------------------- publish
def publish(report: Any, reports_uri: str, html_path: str | None, markdown_path: str | None) -> ExplainResult:
    """Stage 4b: render the report, write the KFP HTML/Markdown files, publish it atomically under its URI."""
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
