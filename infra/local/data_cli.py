"""`retina data synth | samples` — synthetic datasets in the real layouts, and the two real skimage images."""

from __future__ import annotations

import argparse
import sys
import time

from components.common.config import CLASS_NAMES, MODALITIES


def _progress(label: str):
    """A one-line progress report on stderr (tqdm when available)."""
    try:
        from tqdm import tqdm
    except ModuleNotFoundError:  # pragma: no cover - tqdm is a dependency
        tqdm = None
    bar = None

    def report(done: int, total: int) -> None:
        nonlocal bar
        if tqdm is not None:
            if bar is None:
                bar = tqdm(total=total, desc=label, unit="img", file=sys.stderr)
            bar.update(done - bar.n)
            if done == total:
                bar.close()
        elif done == total or done % 50 == 0:
            print(f"{label}: {done}/{total}", file=sys.stderr)

    return report


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _synth(args: argparse.Namespace) -> int:
    from infra.local.synthetic import write_fundus_dataset, write_oct_dataset

    write = write_fundus_dataset if args.modality == "fundus" else write_oct_dataset
    start = time.monotonic()
    summary = write(
        args.out,
        args.n,
        args.seed,
        size=args.size,
        balance=args.balance,
        progress=_progress(f"synth {args.modality}"),
    )
    print(
        f"wrote {summary['images']} {args.modality} images of {summary['patients']} patients "
        f"to {summary['root']} in {time.monotonic() - start:.1f}s"
    )
    for name, count in summary["per_class"].items():
        print(f"  {name:14s} {count}")
    return 0


def _samples(args: argparse.Namespace) -> int:
    from infra.local.samples import write_samples

    for uri in write_samples(args.out):
        print(f"wrote {uri}")
    return 0


def _ls(args: argparse.Namespace) -> int:
    from components.common.datasets import read_dataset

    listing = read_dataset(args.root, args.modality)
    names = CLASS_NAMES[args.modality]
    print(
        f"{len(listing)} usable images of {len({r.patient_id for r in listing.records})} patients in {args.root}"
    )
    for label, count in listing.label_counts().items():
        print(f"  {label} {names[label]:14s} {count}")
    if any(r.split for r in listing.records):
        print("  splits: " + ", ".join(f"{k} {v}" for k, v in listing.split_counts().items()))
    with_masks = sum(1 for r in listing.records if r.mask_uri)
    if with_masks:
        print(f"  lesion masks: {with_masks}")
    if listing.problems:
        print(f"{len(listing.problems)} problems:")
        for problem in listing.problems[: args.max_problems]:
            print(f"  {problem}")
        if len(listing.problems) > args.max_problems:
            print(f"  ... and {len(listing.problems) - args.max_problems} more")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("data", help="synthetic datasets and the real sample images")
    actions = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    synth = actions.add_parser(
        "synth", help="write a deterministic synthetic set in the EyePACS / Kermany layout"
    )
    synth.add_argument("--modality", choices=MODALITIES, required=True)
    synth.add_argument("--n", type=_positive_int, default=200, help="number of images (default 200)")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--size", type=_positive_int, default=512, help="image height in pixels (default 512)")
    synth.add_argument("--out", required=True, help="output folder: local path or s3://bucket/prefix")
    synth.add_argument("--balance", action="store_true", help="equal counts per class")
    synth.set_defaults(func=_synth)

    samples = actions.add_parser("samples", help="write retina.jpg and microaneurysms.jpg from scikit-image")
    samples.add_argument("--out", required=True, help="output folder: local path or s3://bucket/prefix")
    samples.set_defaults(func=_samples)

    ls = actions.add_parser("ls", help="list a raw dataset (EyePACS / Kermany layout) and its problems")
    ls.add_argument("--modality", choices=MODALITIES, required=True)
    ls.add_argument("root", help="dataset root: local path or s3://bucket/prefix")
    ls.add_argument("--max-problems", type=int, default=20)
    ls.set_defaults(func=_ls)
