"""`retina explain`: Grad-CAM family, feature maps, filters and faithfulness for a model and a folder of images."""

from __future__ import annotations

import argparse
import json

from components.common.errors import RetinaError
from components.explain.config import DEFAULT_METHODS, add_arguments, from_args


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "explain",
        help="explain a model's predictions on a folder of images; report to a local folder or s3://",
        description="Batched CAMs (gradcam, gradcam++, hirescam, layercam, scorecam), feature maps of every "
        "convolutional layer, filter visualisations and faithfulness metrics (deletion/insertion AUC, "
        "pointing game against lesion masks, model-randomisation SSIM). The report lands under "
        "<out>/<model>/<version>/<run>/ (index.html, summary.json, PNGs), published atomically.",
    )
    p.add_argument("--model", required=True,
                   help="model folder, .keras file, s3://…, runs:/<id>/model or models:/retina-fundus@champion; "
                   "with --server the served model's name")
    p.add_argument("--images", required=True,
                   help="folder/prefix of images (raw, EyePACS/Kermany layout, or a preprocessed dataset)")
    p.add_argument("--out", required=True, help="reports root (local folder or s3://reports)")
    add_arguments(p)  # one flag per ExplainConfig field, defaults from the dataclass
    p.add_argument("--fail-on-gate", action="store_true",
                   help="exit with an error when the gate fails (the report is still written)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    add_served_arguments(p)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    if args.server:
        return _run_served(args)
    from components.explain.explanation import explain_images, require_gate

    result = explain_images(args.model, args.images, args.out, from_args(args))
    if args.json:
        print(json.dumps({"report_uri": result.report_uri, "pointing_game": result.pointing_game,
                          "metrics": result.summary.get("metrics"), "gate": result.summary.get("gate")}))
    else:
        print(f"report: {result.report_uri}/index.html")
        print(f"explained {result.summary.get('num_images')} images, {len(result.problems)} unreadable")
        for name, reason in result.problems:
            print(f"  unreadable: {name}: {reason}")
        from components.explain.faithfulness import format_failures

        failures = format_failures(result.summary.get("gate") or {})
        print(f"faithfulness gate: {'passed' if result.gate_passed else 'failed: ' + failures}")
        if result.pointing_game >= 0:
            print(f"pointing game: {result.pointing_game:.3f}")
    if args.fail_on_gate:
        require_gate(result)
    return 0


def add_served_arguments(p: argparse.ArgumentParser) -> None:
    """`--server`: explain the model a TF Serving API serves (ours or the real one), Predict calls only."""
    from components.explain.perturbation import PerturbationConfig

    d = PerturbationConfig()
    g = p.add_argument_group("served model (--server): occlusion / RISE maps through batched gRPC Predict calls")
    g.add_argument("--server", default="", help="HOST:PORT of a TF Serving gRPC endpoint; --model is then the served "
                   "model name and --methods occlusion,rise (the default there)")
    g.add_argument("--version", type=int, default=None, help="served version (default: the latest)")
    g.add_argument("--label", default=None, help="served version label, e.g. stable")
    g.add_argument("--model-file", default="", help="the same model's file/URI: its preprocessing, and Grad-CAM "
                   "in process for the agreement table")
    g.add_argument("--modality", choices=("fundus", "oct"), default=None,
                   help="without --model-file: use the project's preprocessing for this modality")
    g.add_argument("--masks", type=int, default=d.masks, help=f"RISE masks per image (default {d.masks})")
    g.add_argument("--window", type=float, default=d.window, help=f"occlusion square, fraction of the side (default {d.window})")
    g.add_argument("--stride", type=float, default=d.stride, help=f"occlusion step, fraction of the side (default {d.stride})")
    g.add_argument("--predict-batch", type=int, default=d.batch_size, help=f"images per Predict request (default {d.batch_size})")


def _run_served(args: argparse.Namespace) -> int:
    from components.explain.perturbation import METHODS, PerturbationConfig
    from components.explain.served import explain_served

    methods = ",".join(METHODS) if args.methods == DEFAULT_METHODS else args.methods
    config = PerturbationConfig(masks=args.masks, window=args.window, stride=args.stride, batch_size=args.predict_batch)
    result = explain_served(args.server, args.model, args.images, args.out, version=args.version, label=args.label,
                            methods=methods, model_uri=args.model_file, modality=args.modality or "",
                            max_images=args.max_images, run_name=args.run_name, config=config,
                            input_range=args.input_range, thresholds=args.thresholds, progress=not args.json)
    summary = result.summary
    if args.json:
        print(json.dumps({"report_uri": result.report_uri, "metrics": summary.get("metrics"), "gate": summary.get("gate"),
                          "agreement": summary.get("agreement"), "predict_requests": result.requests}))
    else:
        print(f"report: {result.report_uri}/index.html")
        print(f"explained {summary.get('num_images')} images through {result.requests} Predict requests "
              f"({result.images_sent} images), {len(result.problems)} unreadable")
        for pair, values in (summary.get("agreement") or {}).items():
            print(f"  agreement {pair}: " + ", ".join(f"{k} {v:.3f}" for k, v in values.items() if v is not None))
    if args.fail_on_gate and not (summary.get("gate") or {}).get("passed", True):
        from components.explain.faithfulness import format_failures

        raise RetinaError(f"explanations failed the gate: {format_failures(summary['gate'])}; "
                          f"report: {result.report_uri}/index.html")
    return 0
