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


def run(args: argparse.Namespace) -> int:
    from components.evaluate.evaluation import evaluate_step

    evaluate_step(modality=args.modality, data_uri=args.data, model_uri=args.model, run_id=args.run_id,
                  split=args.split, out_uri=args.out)
    return 0
