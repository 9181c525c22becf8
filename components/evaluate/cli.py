"""`retina evaluate`: score a trained model on a held-out split; prints accuracy / QWK, writes JSON."""

from __future__ import annotations

import argparse

from components.common.config import MODALITIES


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "evaluate", help="evaluate a model on a held-out split (accuracy, QWK, per class, confusion matrix)",
    )
    p.add_argument("--modality", required=True, choices=MODALITIES)
    p.add_argument("--data", required=True, help="preprocessed dataset folder (local or s3://)")
    p.add_argument("--model", required=True,
                   help="model folder, .keras file, s3://…, runs:/<id>/model or models:/<name>@<alias>")
    p.add_argument("--out", default=None, help="metrics JSON file (…/x.json) or folder (gets metrics.json)")
    p.add_argument("--split", default="test")
    p.add_argument("--run-id", default="", help="MLflow run to log into (default: the run that trained it)")
    p.set_defaults(func=run)
    register_challenger_command(subparsers)


def run(args: argparse.Namespace) -> int:
    from components.evaluate.evaluation import evaluate_step

    evaluate_step(modality=args.modality, data_uri=args.data, model_uri=args.model, run_id=args.run_id,
                  split=args.split, out_uri=args.out)
    return 0


def register_challenger_command(subparsers: argparse._SubParsersAction) -> None:
    """`retina evaluate-challenger`: the training pipeline's evaluate gate, flags generated from EvaluateConfig."""
    from components.common.step_config import add_config_arguments
    from components.evaluate.comparison import EvaluateConfig

    p = subparsers.add_parser(
        "evaluate-challenger",
        help="score a challenger and the current champion on the same split; floors + comparison verdict",
    )
    add_config_arguments(p, EvaluateConfig, help_text={
        "challenger_uri": "models:/<name>/<version>, runs:/<id>/model, s3://… or a folder",
        "champion_uri": "default: the registered model's current champion",
        "floors": "absolute floors, e.g. qwk>=0.2,accuracy>=0.5"})
    p.add_argument("--markdown", default=None, help="write the verdict table here")
    p.set_defaults(func=_run_challenger)


def _run_challenger(args: argparse.Namespace) -> int:
    from components.common.step_config import config_from_args
    from components.evaluate.comparison import EvaluateConfig, evaluate_challenger

    result = evaluate_challenger(config_from_args(EvaluateConfig, args), markdown_path=args.markdown)
    return 0 if result.passed else 1
