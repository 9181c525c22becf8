"""`retina buckets` — the one command of the shared library: create the system's buckets.

It lives here, not with the local stack, because the cluster needs it too: the `retina-buckets` Job
runs it in the project image, which ships no local-development tooling.
"""

from __future__ import annotations

import argparse


def create_buckets(args: argparse.Namespace | None = None) -> int:
    from components.common import storage
    from components.common.config import BUCKETS

    endpoint = storage.s3_endpoint() or "AWS's default endpoint"
    created = storage.ensure_buckets(BUCKETS)
    for bucket in BUCKETS:
        print(f"  {bucket:14s} {'created' if bucket in created else 'exists'}")
    print(f"buckets ready on {endpoint}")
    return 0


BUCKETS_HELP = (
    "create the buckets (raw, datasets, mlflow, models, reports, pipeline-root) on the S3 in the "
    "environment (AWS_ENDPOINT_URL + credentials); idempotent, for a cluster's object store"
)


def register(sub: argparse._SubParsersAction) -> None:
    sub.add_parser("buckets", help=BUCKETS_HELP).set_defaults(func=create_buckets)
