"""`retina pipeline compile|run|upload|schedule`.

KFP, TensorFlow and the step components are imported inside the command functions, so `retina --help`
stays fast.
"""

from __future__ import annotations

import argparse
import json

from pipelines.compile import PIPELINES


def _compile(args: argparse.Namespace) -> int:
    from pipelines.compile import compile_all

    for name, path in compile_all(args.out, [args.pipeline] if args.pipeline else None).items():
        print(f"  {name:10s} {path}")
    return 0


def _run(args: argparse.Namespace) -> int:
    from components.common.errors import RetinaError
    from pipelines.client import parse_params

    params = parse_params(args.param)
    if args.local == bool(args.host):
        raise RetinaError("give exactly one of --local or --host URL")
    if args.local:
        from pipelines.local import run_local

        print(f"running the {args.pipeline} pipeline locally (kfp SubprocessRunner) ...", flush=True)
        outputs = run_local(args.pipeline, params, args.pipeline_root)
        print(json.dumps(outputs, indent=2, default=str))
        return 0
    from pipelines.client import start_run

    run_id = start_run(args.host, args.pipeline, params, experiment=args.experiment, run_name=args.run_name)
    print(f"started run {run_id} of {args.pipeline} on {args.host}")
    return 0


def _upload(args: argparse.Namespace) -> int:
    from pipelines.client import upload

    result = upload(args.host, args.pipeline, name=args.name, version=args.version, description=args.description)
    print(f"uploaded {result['name']} (pipeline {result['pipeline_id']}, version {result['version']})")
    return 0


def _schedule(args: argparse.Namespace) -> int:
    from pipelines.client import parse_params, schedule, validate_cron

    cron = validate_cron(args.cron)  # before connecting: a bad cron needs no server to be refused
    job_id = schedule(
        args.host, cron, args.pipeline, parse_params(args.param), job_name=args.name, experiment=args.experiment,
        max_concurrency=args.max_concurrency,
    )
    print(f"recurring run {job_id}: {args.pipeline} on cron {cron!r}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("pipeline", help="compile / run (locally or on KFP) / upload / schedule the pipelines")
    actions = parser.add_subparsers(dest="pipeline_command", metavar="ACTION", required=True)
    names = list(PIPELINES)

    p = actions.add_parser("compile", help="write the KFP YAML packages")
    p.add_argument("--out", default="build/pipelines", help="folder for the YAML packages")
    p.add_argument("--pipeline", choices=names, help="only this pipeline (default: all)")
    p.set_defaults(func=_compile)

    p = actions.add_parser("run", help="run a pipeline locally (kfp local runner) or start a run on a KFP server")
    p.add_argument("--pipeline", choices=names, default="training")
    p.add_argument("--local", action="store_true", help="run here against the local stack (`retina stack up`)")
    p.add_argument("--host", help="KFP API URL, e.g. http://localhost:8080")
    p.add_argument("--param", action="append", metavar="KEY=VALUE", help="pipeline parameter (repeatable)")
    p.add_argument("--pipeline-root", help="local runs: artifact folder (default: <RETINA_HOME>/pipeline-root)")
    p.add_argument("--experiment", default="retina", help="KFP experiment for --host runs")
    p.add_argument("--run-name", default="", help="KFP run name for --host runs")
    p.set_defaults(func=_run)

    p = actions.add_parser("upload", help="upload a pipeline, or a new version of an uploaded one")
    p.add_argument("--host", required=True, help="KFP API URL")
    p.add_argument("--pipeline", choices=names, default="training")
    p.add_argument("--name", default="", help="pipeline name on the server (default: retina-training / ...)")
    p.add_argument("--version", default="", help="version name when the pipeline exists (default: timestamp)")
    p.add_argument("--description", default="")
    p.set_defaults(func=_upload)

    p = actions.add_parser("schedule", help="create a recurring run (scheduled retraining)")
    p.add_argument("--host", required=True, help="KFP API URL")
    p.add_argument("--cron", required=True, help='6-field cron, seconds first: "0 0 3 * * 1" = Mondays 03:00')
    p.add_argument("--pipeline", choices=names, default="training")
    p.add_argument("--param", action="append", metavar="KEY=VALUE", help="pipeline parameter (repeatable)")
    p.add_argument("--name", default="", help="recurring run name")
    p.add_argument("--experiment", default="retina")
    p.add_argument("--max-concurrency", type=int, default=1, help="runs of this schedule allowed at once")
    p.set_defaults(func=_schedule)
