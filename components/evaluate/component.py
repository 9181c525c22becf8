"""KFP component `evaluate`: a thin wrapper over `components.evaluate.evaluation.evaluate_step`."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import ClassificationMetrics, Metrics, Output

from components.common.images import PROJECT_IMAGE


@dsl.component(base_image=PROJECT_IMAGE, install_kfp_package=False)
def evaluate(
    modality: str,
    data_uri: str,
    model_uri: str,
    metrics: Output[Metrics],
    classification_metrics: Output[ClassificationMetrics],
    run_id: str = "",
    split: str = "test",
) -> NamedTuple("EvaluateOutputs", [("accuracy", float), ("qwk", float)]):
    from collections import namedtuple

    from components.evaluate.evaluation import evaluate_step

    accuracy, qwk = evaluate_step(modality=modality, data_uri=data_uri, model_uri=model_uri, run_id=run_id,
                                  split=split, metrics=metrics, classification_metrics=classification_metrics)
    return namedtuple("EvaluateOutputs", ["accuracy", "qwk"])(accuracy, qwk)
