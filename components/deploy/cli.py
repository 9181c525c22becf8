"""`retina deploy`: a registered model version into the TF Serving repository, behind a canary check."""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "deploy",
        help="publish a registered model version to a TF Serving model repository (canary-checked)",
        description="Export the registered version as a SavedModel into <serving-base>/<model>/<version>/, "
        "update <serving-base>/models.config (labels stable/canary) and, with --server, check the new "
        "version (GetModelStatus AVAILABLE, one Predict) before `stable` moves to it.",
    )
    p.add_argument("--model", required=True, help="registered model name, e.g. retina-oct")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--version", default="", help="registry version number")
    which.add_argument("--alias", default="", help="registry alias (default: champion)")
    p.add_argument(
        "--serving-base", required=True, help="TF Serving model repository (s3://models or a folder)"
    )
    p.add_argument("--server", default="", help="HOST:PORT of the model server for the canary check")
    p.add_argument(
        "--server-base-path",
        default="",
        help="the repository as the server sees it, for models.config (default: --serving-base)",
    )
    p.add_argument("--canary-timeout", type=float, default=120.0, help="seconds to wait for AVAILABLE")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from components.deploy.deployment import deploy_model

    result = deploy_model(
        args.model,
        args.serving_base,
        version=args.version,
        alias=args.alias,
        server_address=args.server,
        canary_timeout_s=args.canary_timeout,
        server_base_path=args.server_base_path,
    )
    if args.json:
        print(json.dumps(result._asdict()))
    elif args.server:
        print(f"{args.model} version {result.serving_version} is stable at {result.endpoint}")
    else:
        print(f"{args.model} version {result.serving_version} staged as canary at {result.endpoint}")
    return 0
