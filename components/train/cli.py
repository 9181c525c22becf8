"""`retina train`: train one model on a preprocessed dataset, one progress line per epoch.

The flags map one to one onto `TrainConfig` fields (`FLAGS`); defaults come from `TrainConfig` itself,
and `config_to_argv` turns a config back into this command line — what each worker of a multi-worker
TFJob runs (`components.train.multinode`).
"""

from __future__ import annotations

import argparse
from typing import Any

from components.common.config import MODALITIES
from components.train.models import HEADS, MODEL_NAMES

# TrainConfig field -> (flag, argparse keywords). Defaults are NOT written here: see TrainConfig.
FLAGS: dict[str, tuple[str, dict[str, Any]]] = {
    "modality": ("--modality", {"required": True, "choices": MODALITIES}),
    "data_uri": ("--data", {"required": True, "help": "preprocessed dataset folder (local or s3://)"}),
    "model_name": ("--model", {"choices": MODEL_NAMES, "help": "architecture"}),
    "image_size": ("--image-size", {"type": int, "help": "input size (default: the dataset's)"}),
    "epochs": ("--epochs", {"type": int}),
    "output_uri": ("--out", {"help": "where to write the model folder (local or s3://)"}),
    "batch_size": ("--batch-size", {"type": int, "help": "per replica"}),
    "learning_rate": ("--learning-rate", {"type": float}),
    "head": ("--head", {"choices": HEADS, "help": "regression: fundus grade + QWK thresholds"}),
    "width": ("--width", {"type": float, "help": "filter-count multiplier (deepsense, oct_cnn)"}),
    "weights": ("--weights", {"help": "local weights file for efficientnetb0/resnet50 backbones"}),
    "patience": ("--patience", {"type": int, "help": "early-stopping patience in epochs"}),
    "seed": ("--seed", {"type": int}),
    "checkpoint_uri": ("--checkpoint-dir", {"help": "checkpoint folder (local or s3://); a rerun with the "
                                            "same folder resumes"}),
    "mlflow_experiment": ("--experiment", {"help": "MLflow experiment"}),
    "run_name": ("--run-name", {}),
    "run_id": ("--run-id", {"help": "log into this existing MLflow run (multi-worker jobs: the launcher's)"}),
}


def register(subparsers: argparse._SubParsersAction) -> None:
    from components.train.training import TrainConfig

    defaults = TrainConfig.defaults()
    p = subparsers.add_parser(
        "train", help="train a model on preprocessed shards (tracked in MLflow)",
        description="Train on <data>/train, validate on <data>/val; logs params, per-epoch metrics, the dataset "
        "manifest and the model to MLflow (MLFLOW_TRACKING_URI) and writes the model folder to --out. "
        "With TF_CONFIG naming several workers, this process is one worker of a MultiWorkerMirrored job.",
    )
    for field, (flag, kwargs) in FLAGS.items():
        kwargs = dict(kwargs)
        if field in defaults:
            kwargs["default"] = argparse.SUPPRESS  # TrainConfig fills it in
            if defaults[field] is not None:
                kwargs["help"] = f"{kwargs.get('help', '')} (default {defaults[field]})".strip()
        p.add_argument(flag, dest=field, **kwargs)
    p.add_argument("--no-mlflow", dest="tracking", action="store_false", default=argparse.SUPPRESS,
                   help="do not track (then --out is required)")
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace) -> Any:
    from components.train.training import TrainConfig

    fields = set(FLAGS) | {"tracking"}
    return TrainConfig(**{k: v for k, v in vars(args).items() if k in fields})


def config_to_argv(config: Any) -> list[str]:
    """`retina train` arguments that rebuild `config` (fields left at their default are omitted)."""
    defaults = type(config).defaults()
    argv = ["train"]
    for field, (flag, _) in FLAGS.items():
        value = getattr(config, field)
        if field not in defaults or value != defaults[field]:
            argv += [flag, str(value)]
    if not config.tracking:
        argv.append("--no-mlflow")
    return argv


def run(args: argparse.Namespace) -> int:
    # The strategy is made inside train() before anything else runs a TensorFlow op; nothing above runs one.
    from components.train.training import is_chief, train

    result = train(config_from_args(args), progress=lambda line: print(line, flush=True))
    print(f"weights_digest {result.weights_digest}")
    if not is_chief():
        print("not the chief worker: the chief publishes the model and logs the run")
        return 0
    if result.run_id:
        print(f"run_id {result.run_id}")
    print(f"model_uri {result.model_uri}")
    return 0
