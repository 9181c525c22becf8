"""KFP components of the evaluate step, thin over `components.evaluate`.

`evaluate` scores one model (standalone use); `evaluate_challenger` is the training pipeline's gate:
challenger and current champion on the same split, both logged, floors and the comparison as its verdict.
Its parameters have no defaults here: they come from `EvaluateConfig` through the pipeline signature.
"""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import ClassificationMetrics, Markdown, Metrics, Output

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


@dsl.component(base_image=PROJECT_IMAGE, install_kfp_package=False)
def evaluate_challenger(
    modality: str,
    data_uri: str,
    challenger_uri: str,
    champion_uri: str,
    split: str,
    metric: str,
    margin: float,
    floors: str,
    challenger_metrics: Output[Metrics],
    challenger_classification: Output[ClassificationMetrics],
    champion_metrics: Output[Metrics],
    champion_classification: Output[ClassificationMetrics],
    verdict: Output[Markdown],
) -> NamedTuple("EvaluateGate", [("passed", bool), ("checks", str), ("champion_uri", str),
                                 ("accuracy", float), ("qwk", float)]):
    """Challenger and the current champion on the same split; floors and the comparison decide `passed`."""
    from collections import namedtuple

    from components.common.checks import checks_json
    from components.evaluate.comparison import EvaluateConfig, evaluate_challenger

    cfg = EvaluateConfig(modality=modality, data_uri=data_uri, challenger_uri=challenger_uri,
                         champion_uri=champion_uri, split=split, metric=metric, margin=margin, floors=floors)
    artifacts = {"challenger_metrics": challenger_metrics, "challenger_classification": challenger_classification,
                 "champion_metrics": champion_metrics, "champion_classification": champion_classification}
    out = evaluate_challenger(cfg, artifacts, verdict.path)
    champion = out.champion.ref if out.champion is not None else ""
    r = out.challenger.result
    return namedtuple("EvaluateGate", ["passed", "checks", "champion_uri", "accuracy", "qwk"])(
        out.passed, checks_json(out.checks), champion, r.accuracy, r.qwk)
