"""`retina demo` — the main job end to end on this machine (see infra.local.demo)."""

from __future__ import annotations

import argparse


def _demo(args: argparse.Namespace) -> int:
    from infra.local.demo import DemoSettings, run_demo

    settings = DemoSettings(
        image_size=args.image_size, epochs=args.epochs, images_per_set=args.images, modalities=tuple(args.modality or ("fundus", "oct"))
    )
    return run_demo(settings)


def register(sub: argparse._SubParsersAction) -> None:
    demo = sub.add_parser(
        "demo",
        help="end to end on this machine: stack, data, training pipeline (both modalities), "
        "served champion, gRPC prediction, batch explanation",
    )
    from infra.local.demo import DemoSettings  # one place holds the demo's defaults

    defaults = DemoSettings()
    demo.add_argument("--image-size", type=int, default=defaults.image_size, help="model input size (tiny by default)")
    demo.add_argument("--epochs", type=int, default=defaults.epochs)
    demo.add_argument("--images", type=int, default=defaults.images_per_set, help="synthetic images per modality")
    demo.add_argument(
        "--modality", action="append", choices=["fundus", "oct"], help="repeatable (default: both)"
    )
    demo.set_defaults(func=_demo)
