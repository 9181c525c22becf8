"""`retina deploy` (a registered version into the TF Serving repository, checked privately first) and
`retina rollback` (champion and stable back to the previous blessed version)."""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "deploy",
        help="publish a registered model version to a TF Serving model repository (checked privately first)",
        description="Export the registered version as a SavedModel, check it in a private model server "
        "(GetModelStatus AVAILABLE, one Predict) that no other request reaches, publish it into "
        "<serving-base>/<model>/<version>/ and move `stable` to it in <serving-base>/models.config; with "
        "--server, that server loads it first and `stable` moves once it is AVAILABLE (else the previous entry is "
        "restored). Replacing an existing `stable` needs --server: TF Serving refuses a config that moves a label "
        "to a version it has not loaded, even with --allow_version_labels_for_unavailable_models.",
    )
    p.add_argument("--model", required=True, help="registered model name, e.g. retina-oct")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--version", default="", help="registry version number")
    which.add_argument("--alias", default="", help="registry alias (default: champion)")
    p.add_argument(
        "--serving-base", required=True, help="TF Serving model repository (s3://models or a folder)"
    )
    p.add_argument("--server", default="", help="HOST:PORT of the production server (needed to replace `stable`)")
    p.add_argument(
        "--server-base-path",
        default="",
        help="the repository as the server sees it, for models.config (default: --serving-base)",
    )
    p.add_argument("--canary-timeout", type=float, default=120.0, help="seconds to wait for AVAILABLE")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=_run)
    register_rollback(subparsers)


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
    else:
        print(f"{args.model} version {result.serving_version} is stable at {result.endpoint}")
    return 0


def register_rollback(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "rollback",
        help="move MLflow `champion` and serving `stable` back to the previous blessed version",
        description="The current champion's predecessor (recorded when it was blessed) becomes champion again "
        "and the only version `stable` serves; its SavedModel must still be in the repository.",
    )
    p.add_argument("--model", required=True, help="registered model name, e.g. retina-oct")
    p.add_argument("--serving-base", required=True, help="TF Serving model repository (s3://models or a folder)")
    p.add_argument("--server-base-path", default="", help="the repository as the server sees it")
    p.add_argument("--server", default="", help="HOST:PORT: load the version there first (needed when `stable` "
                   "no longer loads it)")
    p.set_defaults(func=_run_rollback)


def _run_rollback(args: argparse.Namespace) -> int:
    from components.deploy.push import rollback

    current, previous = rollback(args.model, args.serving_base, args.server_base_path, args.server)
    print(f"{args.model}: champion and stable v{current} -> v{previous}")
    return 0
