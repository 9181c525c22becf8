"""Evaluate a trained model on a held-out split: numbers first, then where they are written.

`compute_metrics` is pure numpy (labels + model outputs -> EvaluationResult); `evaluate_model` loads
the model and the split and calls it; `log_to_mlflow` and `write_kfp_metrics` only write the result
out (the KFP artifacts are duck-typed, so this module imports no KFP).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from components.common import metrics as m
from components.common.errors import DatasetError
from components.common.model_store import ModelInfo, outputs_to_classes


@dataclass
class EvaluationResult:
    split: str
    count: int
    class_names: list[str]
    accuracy: float
    qwk: float
    confusion_matrix: list[list[int]]
    precision: list[float]
    recall: list[float]
    auc: list[float | None]
    roc_name: str  # the binary question the ROC curve answers
    roc_auc: float | None
    roc_fpr: list[float]
    roc_tpr: list[float]
    roc_thresholds: list[float]
    model_run_id: str = ""  # the MLflow run that trained the model, from its retina_model.json

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def scalar_metrics(self) -> dict[str, float]:
        """Flat name -> value (what KFP `Metrics` and MLflow show); undefined AUCs are left out."""
        out = {"accuracy": self.accuracy, "qwk": self.qwk}
        for name, p, r, a in zip(self.class_names, self.precision, self.recall, self.auc, strict=True):
            slug = _slug(name)
            out[f"precision_{slug}"] = p
            out[f"recall_{slug}"] = r
            if a is not None:
                out[f"auc_{slug}"] = a
        if self.roc_auc is not None:
            out[f"auc_{_slug(self.roc_name)}"] = self.roc_auc
        return {k: float(v) for k, v in out.items()}


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def class_scores(outputs: np.ndarray, info: ModelInfo) -> np.ndarray:
    """Per-class scores for AUC: probabilities, or for the regression head closeness to each grade."""
    outputs = np.asarray(outputs, dtype=np.float64)
    if info.head == "regression":
        grades = np.arange(info.num_classes, dtype=np.float64)
        return -np.abs(outputs.reshape(-1, 1) - grades[None, :])
    return outputs


def binary_question(info: ModelInfo, outputs: np.ndarray) -> tuple[str, int, np.ndarray]:
    """(name, first positive class, score) of the clinically useful yes/no question for the ROC curve.

    Fundus: referable DR (grade >= 2, moderate or worse). OCT and others: anything but class 0 (NORMAL).
    """
    outputs = np.asarray(outputs, dtype=np.float64)
    first_positive = 2 if info.modality == "fundus" and info.num_classes == 5 else 1
    name = "referable DR" if first_positive == 2 else f"not {info.class_names[0]}"
    if info.head == "regression":
        return name, first_positive, outputs.reshape(-1)
    return name, first_positive, outputs[:, first_positive:].sum(axis=1)


def compute_metrics(y_true: np.ndarray, outputs: np.ndarray, info: ModelInfo, split: str = "test") -> EvaluationResult:
    y_true = np.asarray(y_true, dtype=np.int64).ravel()
    predicted = outputs_to_classes(outputs, info)
    k = info.num_classes
    cm = m.confusion_matrix(y_true, predicted, k)
    precision, recall = m.precision_recall(cm)
    roc_name, first_positive, score = binary_question(info, outputs)
    positive = (y_true >= first_positive).astype(np.int64)
    fpr, tpr, thresholds = m.roc_curve(positive, score)
    return EvaluationResult(
        split=split, count=int(y_true.size), class_names=list(info.class_names),
        accuracy=m.accuracy(y_true, predicted), qwk=m.quadratic_weighted_kappa(y_true, predicted, k),
        confusion_matrix=cm.tolist(), precision=precision.tolist(), recall=recall.tolist(),
        auc=m.one_vs_rest_auc(y_true, class_scores(outputs, info)),
        roc_name=roc_name, roc_auc=m.roc_auc(positive, score),
        roc_fpr=fpr.tolist(), roc_tpr=tpr.tolist(), roc_thresholds=thresholds.tolist(),
    )


def evaluate_model(model_uri: str, data_uri: str, modality: str | None = None, split: str = "test",
                   batch_size: int = 64, cache_dir: str | None = None) -> EvaluationResult:
    """Load the model (any URI `load_model` takes) and score it on `split` of the dataset."""
    from components.common import shards as train_data
    from components.common.model_store import load_model
    from components.common.shards import collect_predictions

    manifest = train_data.read_manifest(data_uri)
    model, info = load_model(model_uri, modality=modality)
    for name, found in (("dataset", manifest.get("modality")), ("model", info.modality)):
        if modality and found and found != modality:
            raise DatasetError(f"{name} modality is {found!r}, not {modality!r}: {data_uri if name == 'dataset' else model_uri}")
    root = train_data.stage_dataset(data_uri, cache_dir)
    shards = train_data.split_shards(root, split, manifest)
    train_data.scan_shards(shards, info.num_classes, modality or info.modality or None)
    dataset = train_data.make_dataset(shards, modality or info.modality, info.image_size, batch_size)
    y_true, outputs = collect_predictions(model, dataset)
    result = compute_metrics(y_true, outputs, info, split)
    result.model_run_id = info.run_id or ""
    return result


def log_to_mlflow(result: EvaluationResult, run_id: str | None = None, prefix: str | None = None) -> str:
    """Log `<split>_<metric>` values and the full result JSON; into `run_id` when given, else a new run.

    Logging into a finished training run keeps it FINISHED (the client API does not reopen it).
    """
    import mlflow
    from mlflow.tracking import MlflowClient

    prefix = f"{result.split}_" if prefix is None else prefix
    if not run_id:
        with mlflow.start_run(run_name=f"evaluate-{result.split}") as run:
            run_id = run.info.run_id
    client = MlflowClient()
    for name, value in result.scalar_metrics().items():
        client.log_metric(run_id, f"{prefix}{name}", value)
    client.log_dict(run_id, result.to_dict(), f"evaluation/{result.split}.json")
    return run_id


def write_kfp_metrics(result: EvaluationResult, metrics: Any, classification_metrics: Any) -> None:
    """Fill KFP `Metrics` (scalars) and `ClassificationMetrics` (confusion matrix + ROC) artifacts."""
    for name, value in result.scalar_metrics().items():
        metrics.log_metric(name, value)
    metrics.log_metric("count", float(result.count))
    classification_metrics.log_confusion_matrix(list(result.class_names), [list(r) for r in result.confusion_matrix])
    if result.roc_auc is not None:
        classification_metrics.log_roc_curve(result.roc_fpr, result.roc_tpr, result.roc_thresholds)


def evaluate_step(modality: str, data_uri: str, model_uri: str, run_id: str = "", split: str = "test",
                  metrics: Any = None, classification_metrics: Any = None, out_uri: str | None = None,
                  ) -> tuple[float, float]:
    """What the KFP `evaluate` component runs: score, fill the KFP artifacts, log to MLflow when configured.

    Metrics go into `run_id`, else into the run that trained the model (named in its retina_model.json),
    else into a new run — only when MLflow is configured (`MLFLOW_TRACKING_URI`) or a run id is given.
    """
    import os

    result = evaluate_model(model_uri, data_uri, modality=modality, split=split)
    if metrics is not None and classification_metrics is not None:
        write_kfp_metrics(result, metrics, classification_metrics)
    if run_id or os.environ.get("MLFLOW_TRACKING_URI"):
        log_to_mlflow(result, run_id=run_id or result.model_run_id or None)
    if out_uri:
        from components.common import storage

        target = out_uri if out_uri.endswith(".json") else storage.join(out_uri, "metrics.json")
        storage.write_json(target, result.to_dict())
    print(f"{split}: accuracy {result.accuracy:.4f}  QWK {result.qwk:.4f}  ({result.count} images)")
    return result.accuracy, result.qwk
