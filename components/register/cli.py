"""`retina register`: put a run's model into the MLflow registry and apply the champion gate."""

from __future__ import annotations

import argparse
import json

from components.common.config import MODALITIES


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "register",
        help="register a run's model in MLflow (alias challenger; champion if it beats the current one)",
        description="Create (or find) the registry version for an MLflow run's model, tag it with its metrics, "
        "dataset and code version, set alias `challenger`, and move `champion` to it only if it beats "
        "the current champion on --metric by more than --margin.",
    )
    p.add_argument("--modality", required=True, choices=MODALITIES)
    p.add_argument(
        "--run-id", required=True, help="MLflow run that logged the model directory as artifact `model`"
    )
    p.add_argument("--model-uri", default="", help="version source (default runs:/<run-id>/model)")
    p.add_argument("--metric", default="", help="gate metric (default: qwk for fundus, accuracy for oct)")
    p.add_argument(
        "--margin", type=float, default=0.0, help="required improvement over the champion (default 0)"
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from components.register.registry import register_model

    result = register_model(
        args.modality, args.run_id, model_uri=args.model_uri, metric=args.metric, margin=args.margin
    )
    if args.json:
        print(json.dumps(result._asdict()))
    else:
        state = "champion" if result.promoted else "challenger"
        print(f"{result.model_name} version {result.version} -> {state}: {result.reason}")
    return 0
