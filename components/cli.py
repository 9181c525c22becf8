"""`retina` — one command line for every step.

Each step contributes its sub-commands from its own `cli.py` (a `register(subparsers)` function), so
the entry point stays small and importing it never pulls in TensorFlow: steps import heavy
libraries inside their command functions.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from typing import Any

from components.common.config import apply_stack_env
from components.common.errors import RetinaError

# Modules that add sub-commands, in the order `retina --help` lists them.
COMMAND_MODULES = (
    "infra.local.stack_cli",  # stack up|down|status (local development only)
    "components.common.cli",  # buckets
    "infra.local.data_cli",  # data synth|samples|ls
    "components.preprocess.cli",  # preprocess
    "components.train.cli",  # train
    "components.evaluate.cli",  # evaluate, evaluate-challenger
    "components.register.cli",  # register
    "components.deploy.cli",  # deploy, rollback
    "components.validate.cli",  # validate
    "serving.cli",  # serve, predict
    "components.explain.cli",  # explain
    "pipelines.cli",  # pipeline compile|run|upload|schedule
    "infra.local.demo_cli",  # demo
)


def parse_params(pairs: list[str] | None) -> dict[str, Any]:
    """`key=value` pairs (`--param`, repeatable) -> dict; values that read as JSON (numbers, true/false) keep
    their type, others are strings. Used by `retina pipeline run|schedule` and `retina preprocess`."""
    params: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise RetinaError(f"--param {pair!r}: expected key=value")
        try:
            parsed = json.loads(value)
            params[key] = parsed if isinstance(parsed, (int, float, bool)) else value
        except json.JSONDecodeError:
            params[key] = value
    return params


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="retina",
        description="retina-xai: retinal-image preprocessing, training, serving and explanations on Kubeflow.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name or name.startswith(f"{exc.name}."):  # that step is not part of this build
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    # TensorFlow's C++ log lines never reach the terminal: importing `components` installed
    # components.common.quiet (start-up lines captured, TF_CPP_MIN_LOG_LEVEL for this process and the steps
    # it starts: kfp local runner, model server).
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    apply_stack_env()  # after `retina stack up`, every command finds the local S3 + MLflow
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        rc = args.func(args)
    except RetinaError as exc:
        print(f"retina {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return int(rc or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
