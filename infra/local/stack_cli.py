"""`retina stack up | down | status` — the local SeaweedFS + MLflow stack (see infra.local.stack) — and
`retina stack buckets`, which creates the system's buckets on whatever S3 the environment names (the
cluster install runs it as the `retina-buckets` Job)."""

from __future__ import annotations

import argparse

from components.common.cli import BUCKETS_HELP, create_buckets
from infra.local import stack as local_stack


def _print_env(stack: local_stack.LocalStack) -> None:
    print(f"variables (written to {local_stack.env_file(stack.home)}, secrets masked):")
    for key, value in stack.masked_env().items():
        print(f"  {key}={value}")
    print(f"use them in a shell with: source {local_stack.env_file(stack.home)}")


def _up(args: argparse.Namespace) -> int:
    print("starting SeaweedFS (S3) and MLflow on 127.0.0.1 ...", flush=True)
    stack = local_stack.start_stack(args.home, use_default_ports=not args.free_ports)
    state = "reusing the running stack" if stack.reused else "stack is up"
    print(f"{state} (home {stack.home})")
    print(f"  S3      {stack.s3_endpoint}   buckets: {', '.join(local_stack.BUCKETS)}")
    print(f"  MLflow  {stack.mlflow_uri}")
    _print_env(stack)
    return 0


def _down(args: argparse.Namespace) -> int:
    from infra.local.stack import stop_model_server  # the model server `retina demo` left running

    if stop_model_server(args.home):
        print("  model server stopped")
    stopped = local_stack.stop_stack(args.home)
    if not stopped:
        print("no stack recorded here; nothing to stop")
        return 0
    for part, was_running in stopped.items():
        print(f"  {part:10s} {'stopped' if was_running else 'was not running'}")
    print(f"data kept under {local_stack.stack_dir(args.home)}")
    return 0


def _status(args: argparse.Namespace) -> int:
    status = local_stack.stack_status(args.home)
    all_healthy = True
    for part, info in status.items():
        state = "healthy" if info["healthy"] else ("running, not answering" if info["running"] else "stopped")
        all_healthy = all_healthy and info["healthy"]
        where = info["endpoint"] or "-"
        print(f"  {part:10s} {state:24s} pid {info['pid'] or '-':<8} {where}")
    from infra.local.stack import model_server_status

    server = model_server_status(args.home)
    if server:
        print(f"  {'model-srv':10s} {'running':24s} pid {server['pid']:<8} {server.get('address', '-')}")
    return 0 if all_healthy else 1


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("stack", help="local SeaweedFS S3 + MLflow server on 127.0.0.1")
    actions = parser.add_subparsers(dest="stack_command", metavar="ACTION", required=True)
    for name, func, help_text in (
        ("up", _up, "start (or reuse) the stack; write .retina/stack.env"),
        ("down", _down, "stop the processes `up` started; keep the data"),
        ("status", _status, "health of each part (exit 1 unless all healthy)"),
    ):
        p = actions.add_parser(name, help=help_text)
        p.add_argument("--home", default=None, help="state folder (default: $RETINA_HOME or ./.retina)")
        if name == "up":
            p.add_argument(
                "--free-ports",
                action="store_true",
                help="pick free ports instead of the defaults (8333, 5000, ...)",
            )
        p.set_defaults(func=func)
    # Kept beside `up` for those who know it; the library's `retina buckets` does the work.
    actions.add_parser("buckets", help=BUCKETS_HELP + " (same as `retina buckets`)").set_defaults(func=create_buckets)
