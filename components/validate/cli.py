"""`retina validate`: infra-validate a registered model version in a private model server."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    from components.common.step_config import add_config_arguments
    from components.validate.validation import ValidateConfig

    p = subparsers.add_parser(
        "validate",
        help="export + stage a model version, load it in a private model server, compare served vs in-process",
        description="The training pipeline's infra-validation step: the SavedModel (with TF Serving warmup "
        "records) is staged outside every served model folder and checked in a model server of its own.",
    )
    add_config_arguments(p, ValidateConfig, help_text={
        "model_uri": "models:/<name>/<version> (or @alias)",
        "staging_uri": "staging root, e.g. s3://models/_staging/<run>"})
    p.add_argument("--markdown", default=None, help="write the verdict table here")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from components.common.checks import all_passed
    from components.common.step_config import config_from_args
    from components.validate.validation import ValidateConfig, validate_candidate

    result = validate_candidate(config_from_args(ValidateConfig, args), markdown_path=args.markdown)
    for check in result.checks:
        print(f"{check.name}: {check.describe()}")
    print(f"staged: {result.staged_uri}")
    return 0 if all_passed(result.checks) else 1
