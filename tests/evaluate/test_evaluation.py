"""Evaluation numbers, both KFP metric artifacts, and the evaluate component (unit and kfp local runner)."""

import json

import numpy as np
import pytest
from kfp import dsl

from components.common.model_store import ModelInfo
from components.evaluate.evaluation import compute_metrics, write_kfp_metrics

OCT = ModelInfo(modality="oct", model_name="t", class_names=["NORMAL", "CNV", "DME", "DRUSEN"], image_size=32)
FUNDUS_REG = ModelInfo(modality="fundus", model_name="t", class_names=["0", "1", "2", "3", "4"], image_size=32,
                       head="regression", thresholds=[0.5, 1.5, 2.5, 3.5])


def test_compute_metrics_from_probabilities():
    y = np.array([0, 1, 2, 3, 0, 1])
    probs = np.eye(4)[[0, 1, 2, 2, 1, 1]] * 0.7 + 0.075
    r = compute_metrics(y, probs, OCT)
    assert r.accuracy == pytest.approx(4 / 6)
    assert r.confusion_matrix[3] == [0, 0, 1, 0] and r.confusion_matrix[0] == [1, 1, 0, 0]
    assert r.recall[0] == pytest.approx(0.5) and r.precision[1] == pytest.approx(2 / 3)
    assert r.roc_name == "not NORMAL" and r.roc_auc is not None
    assert set(r.scalar_metrics()) >= {"accuracy", "qwk", "precision_normal", "recall_drusen", "auc_cnv"}


def test_regression_outputs_are_graded_by_thresholds():
    y = np.array([0, 1, 2, 3, 4])
    r = compute_metrics(y, np.array([[0.1], [1.2], [2.4], [3.6], [4.2]]), FUNDUS_REG)
    assert r.accuracy == pytest.approx(0.8) and r.confusion_matrix[3][4] == 1
    assert r.roc_name == "referable DR" and r.roc_auc == pytest.approx(1.0)


def test_both_kfp_metric_artifacts_are_written(tmp_path):
    y = np.array([0, 1, 2, 3, 0, 1, 2, 3])
    probs = np.eye(4)[[0, 1, 2, 3, 0, 2, 2, 3]] * 0.9 + 0.025
    metrics = dsl.Metrics(name="metrics", uri=str(tmp_path / "m"))
    cls = dsl.ClassificationMetrics(name="classification_metrics", uri=str(tmp_path / "c"))
    write_kfp_metrics(compute_metrics(y, probs, OCT), metrics, cls)
    assert metrics.metadata["accuracy"] == pytest.approx(7 / 8)
    assert metrics.metadata["count"] == 8.0
    matrix = cls.metadata["confusionMatrix"]
    assert [a["displayName"] for a in matrix["annotationSpecs"]] == OCT.class_names
    assert matrix["rows"][1]["row"] == [0, 1, 1, 0]
    roc = cls.metadata["confidenceMetrics"]
    assert roc[0]["falsePositiveRate"] == 0.0 and roc[-1]["recall"] == 1.0


@pytest.mark.slow
def test_evaluate_component_python_func(eval_oct_model, eval_oct_data, tmp_path, monkeypatch):
    from components.evaluate.component import evaluate

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    metrics = dsl.Metrics(name="metrics", uri=str(tmp_path / "m"))
    cls = dsl.ClassificationMetrics(name="classification_metrics", uri=str(tmp_path / "c"))
    out = evaluate.python_func(modality="oct", data_uri=str(eval_oct_data), model_uri=str(eval_oct_model),
                               metrics=metrics, classification_metrics=cls)
    assert 0.0 <= out.accuracy <= 1.0 and -1.0 <= out.qwk <= 1.0
    assert metrics.metadata["accuracy"] == pytest.approx(out.accuracy)
    assert sum(sum(r["row"]) for r in cls.metadata["confusionMatrix"]["rows"]) == 24


@pytest.mark.slow
def test_evaluate_cli_prints_and_writes_json(eval_oct_model, eval_oct_data, tmp_path, capsys, monkeypatch):
    from components.cli import main

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("RETINA_HOME", str(tmp_path / "home"))
    out = tmp_path / "metrics.json"
    rc = main(["evaluate", "--modality", "oct", "--data", str(eval_oct_data), "--model", str(eval_oct_model),
               "--out", str(out)])
    assert rc == 0
    written = json.loads(out.read_text())
    assert f"accuracy {written['accuracy']:.4f}" in capsys.readouterr().out
    assert written["count"] == 24 and len(written["confusion_matrix"]) == 4


@pytest.mark.slow
def test_evaluate_component_under_kfp_local_runner(eval_oct_model, eval_oct_data, kfp_local, monkeypatch):
    from components.evaluate.component import evaluate

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    task = evaluate(modality="oct", data_uri=str(eval_oct_data), model_uri=str(eval_oct_model))
    assert 0.0 <= task.outputs["accuracy"] <= 1.0
    cls = task.outputs["classification_metrics"]
    assert len(cls.metadata["confusionMatrix"]["rows"]) == 4
    assert "qwk" in task.outputs["metrics"].metadata
