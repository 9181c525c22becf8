"""`retina train`: train one model on a preprocessed dataset, one progress line per epoch."""

from __future__ import annotations

import argparse

from components.common.config import MODALITIES
from components.train.models import HEADS, MODEL_NAMES


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train", help="train a model on preprocessed shards (tracked in MLflow)",
        description="Train on <data>/train, validate on <data>/val; logs params, per-epoch metrics, the dataset "
        "manifest and the model to MLflow (MLFLOW_TRACKING_URI) and writes the model folder to --out.",
    )
    p.add_argument("--modality", required=True, choices=MODALITIES)
    p.add_argument("--data", required=True, help="preprocessed dataset folder (local or s3://)")
    p.add_argument("--model", default="deepsense", choices=MODEL_NAMES, help="architecture (default deepsense)")
    p.add_argument("--image-size", type=int, default=None, help="input size (default: the dataset's)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--out", default=None, help="where to write the model folder (local or s3://)")
    p.add_argument("--batch-size", type=int, default=32, help="per replica (default 32)")
    p.add_argument("--learning-rate", type=float, default=1e-3)
    p.add_argument("--head", default="softmax", choices=HEADS, help="regression: fundus grade + QWK thresholds")
    p.add_argument("--width", type=float, default=1.0, help="filter-count multiplier (deepsense, oct_cnn)")
    p.add_argument("--weights", default=None, help="local weights file for efficientnetb0/resnet50 backbones")
    p.add_argument("--patience", type=int, default=5, help="early-stopping patience in epochs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint-dir", default=None,
                   help="checkpoint folder (local or s3://); a rerun with the same folder resumes")
    p.add_argument("--experiment", default="retina", help="MLflow experiment")
    p.add_argument("--run-name", default=None)
    p.add_argument("--no-mlflow", action="store_true", help="do not track (then --out is required)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from components.train.training import TrainConfig, train

    config = TrainConfig(
        modality=args.modality, data_uri=args.data, model_name=args.model, image_size=args.image_size,
        epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.learning_rate, head=args.head,
        width=args.width, seed=args.seed, output_uri=args.out, checkpoint_uri=args.checkpoint_dir,
        patience=args.patience, mlflow_experiment=args.experiment, run_name=args.run_name,
        tracking=not args.no_mlflow, weights=args.weights,
    )
    result = train(config, progress=lambda line: print(line, flush=True))
    if result.run_id:
        print(f"run_id {result.run_id}")
    print(f"model_uri {result.model_uri}")
    return 0
