"""Explain whatever a model server is serving, through Predict calls only.

`retina explain --server HOST:PORT --model NAME [--version N | --label L]` works against the project's
`retina serve` and the real `tensorflow/serving` alike: the model's signature (input key, input size,
output key) is read with GetModelMetadata, the version is pinned once (a label that moves mid-run does
not mix two models in one report), and every perturbed image goes out in batched Predict requests
through `serving.client.ServingClient`. No gradient, layer or file of the model is needed, so any
served model gets a heatmap (occlusion, RISE), the deletion/insertion numbers and, with masks, the
pointing game. Where the model file is also at hand (`model_uri`), its preprocessing is used and its
gradient CAM is computed in process; the report then shows how far the served maps agree with it.
"""

from __future__ import annotations

import datetime as _dt
import tempfile
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import numpy as np

from components.common.errors import RetinaError
from components.explain.perturbation import PerturbationConfig, explain_with_predictions, parse_methods

DEFAULT_SIGNATURE = "serving_default"
PROBABILITY_OUTPUTS = ("probabilities", "scores", "predictions", "output_0")


class ServedModel:
    """A served model as a `predict(images) -> probabilities` callable, version pinned at construction."""

    def __init__(self, address: str, model: str, version: int | None = None, label: str | None = None,
                 signature: str = DEFAULT_SIGNATURE, timeout: float = 120.0, input_range: str = "0-1"):
        from components.explain.explanation import INPUT_RANGES
        from serving.client import ServingClient

        if input_range not in INPUT_RANGES:
            raise RetinaError(f"unknown input range {input_range!r}: expected one of {', '.join(INPUT_RANGES)}")
        self.scale, self.offset = INPUT_RANGES[input_range]
        self.client = ServingClient(address, timeout=timeout)
        self.address, self.model, self.signature = address, model, signature
        try:
            meta = self.client.metadata(model, version, label)
        except BaseException:
            self.client.close()
            raise
        self.version = int(meta["version"])
        sig = meta["signatures"].get(signature)
        if sig is None:
            raise RetinaError(f"{model} version {self.version} has no signature {signature!r}; it has "
                              f"{', '.join(sorted(meta['signatures']))}")
        self.input_key, self.image_size = _image_input(sig["inputs"], model, signature)
        self.output_key = _probability_output(sig["outputs"], model, signature)
        self.has_class_names = "class_names" in sig["outputs"]
        self.requests = 0
        self.images_sent = 0

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        x = np.asarray(batch, np.float32) * self.scale + self.offset
        out = self.client.predict(self.model, {self.input_key: x}, signature=self.signature, version=self.version,
                                  output_filter=[self.output_key])
        self.requests += 1
        self.images_sent += len(x)
        return np.asarray(out[self.output_key], np.float32).reshape(len(x), -1)

    def class_names(self) -> list[str]:
        """The served model's class names when its signature returns them (the project's export does)."""
        if not self.has_class_names or not self.image_size:
            return []
        x = np.zeros((1, self.image_size, self.image_size, 3), np.float32)
        out = self.client.predict(self.model, {self.input_key: x}, signature=self.signature, version=self.version,
                                  output_filter=["class_names"])
        return [n.decode() if isinstance(n, bytes) else str(n) for n in np.asarray(out["class_names"]).reshape(-1)]

    def close(self) -> None:
        self.client.close()


def _image_input(inputs: dict[str, Any], model: str, signature: str) -> tuple[str, int]:
    candidates = {k: v for k, v in inputs.items() if v["dtype"] in ("DT_FLOAT", "DT_HALF") and v["shape"]
                  and len(v["shape"]) == 4}
    if len(candidates) != 1:
        raise RetinaError(f"{model}/{signature}: expected one float image input [N, S, S, C], found "
                          f"{ {k: (v['dtype'], v['shape']) for k, v in inputs.items()} }")
    key, spec = next(iter(candidates.items()))
    return key, int(spec["shape"][1]) if spec["shape"][1] and spec["shape"][1] > 0 else 0


def _probability_output(outputs: dict[str, Any], model: str, signature: str) -> str:
    floats = [k for k, v in outputs.items() if v["dtype"] == "DT_FLOAT"]
    for name in PROBABILITY_OUTPUTS:
        if name in floats:
            return name
    if len(floats) == 1:
        return floats[0]
    raise RetinaError(f"{model}/{signature}: no probability output among {sorted(outputs)}")


@dataclass
class ServedResult:
    report_uri: str
    summary: dict[str, Any]
    problems: list[tuple[str, str]] = field(default_factory=list)
    requests: int = 0
    images_sent: int = 0


def _subject_info(model_uri: str, modality: str, image_size: int) -> tuple[Any, Any]:
    """(keras model or None, info): the file's own metadata, else the project's preprocessing for `modality`
    at the served size, else a plain resize (a model from elsewhere)."""
    if model_uri:
        from components.common.model_store import load_model

        return load_model(model_uri)
    preprocessing: dict[str, Any] = {}
    if modality:
        from components.preprocess.ops import PreprocessParams

        preprocessing = PreprocessParams(modality=modality, image_size=image_size).to_dict()
    return None, SimpleNamespace(modality=modality, preprocessing=preprocessing, class_names=[], head="softmax")


def _gradient_agreement(keras_model: Any, x: np.ndarray, results: dict[str, Any],
                        served_probs: np.ndarray) -> tuple[np.ndarray, dict[str, dict[str, float | None]], str]:
    """In-process Grad-CAM of the model file, its agreement with each served map, and a note on parity."""
    from components.explain.cam import compute_cams
    from components.explain.faithfulness import summarize
    from components.explain.perturbation import agreement

    targets = next(iter(results.values())).targets
    cam = compute_cams(keras_model, x, ["gradcam"], targets=targets)["gradcam"]
    pairs = {f"{m} (served) vs gradcam (file)": summarize(agreement(r.cams, cam.cams)) for m, r in results.items()}
    local = np.asarray(keras_model(x, training=False), np.float32).reshape(len(x), -1)
    gap = float(np.abs(local - served_probs).max()) if local.shape == served_probs.shape else float("nan")
    return cam.cams, pairs, f"served vs in-process outputs of the model file: max |difference| {gap:.2e}"


def explain_served(address: str, model: str, images_uri: str, reports_uri: str, version: int | None = None,
                   label: str | None = None, methods: str = "occlusion,rise", model_uri: str = "",
                   modality: str = "", max_images: int = 16, run_name: str = "",
                   config: PerturbationConfig | None = None, input_range: str = "0-1",
                   thresholds: str = "", progress: bool = True) -> ServedResult:
    """Explain up to `max_images` images with the served model; publish `<reports>/<model>/<version>/<run>/`."""
    from components.explain import faithfulness as faith
    from components.explain.explanation import read_inputs

    config = config or PerturbationConfig()
    names = parse_methods(methods)
    gate_thresholds = faith.parse_thresholds(thresholds)
    served = ServedModel(address, model, version, label, input_range=input_range)
    try:
        keras_model, info = _subject_info(model_uri, modality, served.image_size)
        size = served.image_size or int(getattr(info, "image_size", 0) or 0)
        if not size:
            raise RetinaError(f"{model}: the signature does not fix the input size; give --model-file")
        inputs, problems = read_inputs(images_uri, info, size, max_images, progress)
        run_name = run_name or _dt.datetime.now(_dt.UTC).strftime("served-%Y%m%dT%H%M%SZ")
        class_names = served.class_names() or list(getattr(info, "class_names", []) or [])
        report = _build_report(served, keras_model, inputs, problems, names, config, class_names, images_uri,
                               run_name, model_uri, modality or getattr(info, "modality", ""), gate_thresholds)
        uri = _publish(report, reports_uri)
        from components.explain.report import summary_json

        return ServedResult(uri, summary_json(report), problems, served.requests, served.images_sent)
    finally:
        served.close()


def _build_report(served: ServedModel, keras_model: Any, inputs: list[Any], problems: list[tuple[str, str]],
                  names: list[str], config: PerturbationConfig, class_names: list[str], images_uri: str,
                  run_name: str, model_uri: str, modality: str, thresholds: Any) -> Any:
    from components.explain import faithfulness as faith
    from components.explain.clinical import ClinicalOptions, anatomy_metrics, enrich_entries, outside_shares
    from components.explain.report import ImageEntry, Report, overlay

    report = Report(model_name=served.model, model_version=str(served.version), run_name=run_name,
                    model_uri=f"grpc://{served.address}/{served.model}/{served.version}", images_uri=str(images_uri),
                    class_names=class_names, methods=names, cam_layer="none (Predict calls only)",
                    score_kind="served probabilities", entries=[], problems=problems, modality=modality)
    report.summary = {"metrics": {}, "gate": {}, "pointing_game": None, "class_names": class_names}
    if not inputs:
        return report
    x = np.stack([im.model_input for im in inputs]).astype(np.float32) / 255.0
    results = explain_with_predictions(served, x, names, config=config, ordinal=modality == "fundus")  # DR grades
    probs = next(iter(results.values())).probabilities
    cams = {m: r.cams for m, r in results.items()}
    if keras_model is not None:
        cams["gradcam (file)"], report.agreement, note = _gradient_agreement(keras_model, x, results, probs)
        report.notes.append(note)
    masks = [im.mask if im.mask is not None and np.any(im.mask) else None for im in inputs]
    anatomy = anatomy_metrics([im.model_input for im in inputs], cams, modality)
    per_image = {}
    for m in names:
        di = faith.deletion_insertion(served, x, cams[m], results[m].targets, steps=16, batch_size=config.batch_size)
        per_image[m] = {"deletion_auc": di["deletion_auc"], "insertion_auc": di["insertion_auc"],
                        "outside_retina_share": outside_shares(anatomy, m)}
        idx = [i for i, mk in enumerate(masks) if mk is not None]
        if idx:
            hits = faith.pointing_game(cams[m][idx], np.stack([masks[i] for i in idx]), tolerance=_tolerance(x.shape[1]))
            for key, vals in hits.items():
                per_image[m][key] = np.full(len(x), np.nan)
                per_image[m][key][idx] = vals
    predicted = probs.argmax(-1)
    report.entries = [ImageEntry(
        image_id=im.image_id, source=im.source, original=im.original, model_input=im.model_input,
        predicted=int(predicted[i]), probabilities=[float(p) for p in probs[i]], true_label=im.label,
        overlays={m: overlay(im.model_input, c[i]) for m, c in cams.items()},
        metrics={m: {k: float(v[i]) for k, v in per_image[m].items()} for m in per_image},
    ) for i, im in enumerate(inputs)]
    _ordinal_figures(report.entries, results.get("occlusion"), class_names)
    extra = enrich_entries(report.entries, None, x, masks, cams, predicted, "", False, class_names, anatomy,
                           ClinicalOptions(modality=modality, ordinal=False, feature_maps=False))
    summary = {m: faith.summarize(v) for m, v in per_image.items()}
    report.summary.update(extra, metrics=summary, gate=faith.gate(summary[names[0]], thresholds),
                          pointing_game=summary[names[0]].get("pointing_game"),
                          predict_requests=served.requests, images_sent=served.images_sent)
    report.notes.append(f"{served.requests} Predict requests, {served.images_sent} images sent to "
                        f"{served.address} (model {served.model} version {served.version})")
    return report


def _ordinal_figures(entries: list[Any], occlusion: Any, class_names: list[str]) -> None:
    """The DR ordinal view from occlusion's signed grade-k-vs-k-1 map (no gradients needed)."""
    from components.explain.report import Figure, signed_overlay

    if occlusion is None or occlusion.ordinal is None:
        return

    def name(k: int) -> str:
        return class_names[k] if 0 <= k < len(class_names) else f"grade {k}"

    for e, signed, k in zip(entries, occlusion.ordinal, np.maximum(occlusion.targets, 1), strict=True):
        e.ordinal = [Figure(f"{name(int(k))} vs {name(int(k) - 1)}", signed_overlay(e.model_input, signed),
                            "occlusion: red pushes up, blue down")]


def _tolerance(size: int) -> int:
    """Zhang et al.'s pointing-game tolerance, 15 px at 224 px, scaled to the model's input size."""
    try:
        from components.explain.config import POINTING_TOLERANCE_AT_224
    except ImportError:  # before the explain config module: the same rule
        POINTING_TOLERANCE_AT_224 = 15.0  # noqa: N806
    return int(round(POINTING_TOLERANCE_AT_224 * size / 224.0))


def _publish(report: Any, reports_uri: str) -> str:
    from components.explain.report import publish_report, report_uri, write_report

    target = report_uri(reports_uri, report.model_name, report.model_version, report.run_name)
    with tempfile.TemporaryDirectory(prefix="retina-report-") as tmp:
        write_report(report, tmp)
        publish_report(tmp, target)
    return target
