"""`retina preprocess`: raw images -> TFRecord shards with Beam. Options this command does not know go to Beam.

    retina preprocess --modality fundus --input s3://raw/eyepacs --output s3://datasets/fundus-512 \\
        --direct_num_workers=2 --direct_running_mode=multi_processing
    retina preprocess ... --runner=FlinkRunner --flink_master=flink:8081 --environment_type=EXTERNAL ...
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from components.common.config import MODALITIES
from components.preprocess.pipeline import DEFAULT_MAX_REJECT_FRACTION


class _BeamPassThroughParser(argparse.ArgumentParser):
    """Collects the options it does not know into `beam_args` instead of failing, so every Beam flag
    (`--runner=…`, `--direct_num_workers=…`, `--flink_master=…`) passes straight through."""

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> tuple[argparse.Namespace, list[str]]:
        namespace, extras = super().parse_known_args(args, namespace)
        passthrough = [a for a in extras if a != "--"]
        namespace.beam_args = list(getattr(namespace, "beam_args", None) or []) + passthrough
        return namespace, []


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "preprocess",
        help="decode + normalise raw fundus/OCT images into TFRecord shards (Apache Beam); other options go to Beam",
        description="List an EyePACS (fundus) or Kermany (oct) dataset, split it by patient, decode and "
        "preprocess every image in a Beam pipeline and write gzip TFRecord shards per split, rejected.jsonl "
        "and manifest.json. Any option not listed here is passed to Beam unchanged "
        "(e.g. --direct_num_workers=2 --direct_running_mode=multi_processing, --runner=FlinkRunner ...).",
    )
    p.__class__ = _BeamPassThroughParser
    p.add_argument("--modality", required=True, choices=MODALITIES)
    p.add_argument("--input", required=True, help="raw dataset root (local path or s3://)")
    p.add_argument("--output", required=True, help="output dataset folder (local path or s3://)")
    p.add_argument("--image-size", type=int, default=512, help="output side in px (default 512)")
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--test-fraction", type=float, default=0.1, help="ignored for Kermany (its test split is kept)")
    p.add_argument("--seed", type=int, default=0, help="patient split seed")
    p.add_argument("--images-per-shard", type=int, default=0,
                   help="records per TFRecord shard, fixing each split's shard count (every record then crosses a "
                        "shuffle to its shard's writer); default 0: the runner decides, as Beam's own default, one "
                        "shard per bundle written by the worker that preprocessed it")
    p.add_argument("--max-reject-fraction", type=float, default=DEFAULT_MAX_REJECT_FRACTION,
                   help="fail the run when more than this fraction of the listed images is rejected "
                   f"(default {DEFAULT_MAX_REJECT_FRACTION})")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="any other preprocessing parameter, repeatable: radius, sigma_ratio, image_weight, "
                   "blur_weight, offset, rim_fraction, decode_oversample, denoise, square_mode, ...")
    p.add_argument("--json", action="store_true", help="print the manifest as JSON")
    p.set_defaults(func=_run, beam_args=[])


def _run(args: argparse.Namespace) -> int:
    from components.preprocess.params import PreprocessParams
    from components.preprocess.pipeline import run_preprocess

    def progress(line: str) -> None:
        print(f"[preprocess] {line}", file=sys.stderr, flush=True)

    from components.cli import parse_params

    params = PreprocessParams.with_overrides(args.modality, args.image_size, parse_params(args.param))
    manifest = run_preprocess(
        args.modality, args.input, args.output, params, val_fraction=args.val_fraction,
        test_fraction=args.test_fraction, seed=args.seed, beam_args=args.beam_args,
        images_per_shard=args.images_per_shard, progress=progress, max_reject_fraction=args.max_reject_fraction,
    )
    if args.json:
        print(json.dumps(manifest, indent=2, sort_keys=True))
    else:
        for split, info in manifest["splits"].items():
            classes = ", ".join(f"{name} {n}" for name, n in info["per_class"].items())
            print(f"{split}: {info['count']} images ({classes}) in {len(info['shards'])} shard(s)")
        print(f"rejected: {manifest['rejected_count']} (see rejected.jsonl); patients moved: "
              f"{manifest['patients_moved']}; output: {args.output}")
    return 0
