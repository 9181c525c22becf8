"""`retina explain`: Grad-CAM family, feature maps, filters and faithfulness for a model and a folder of images."""

from __future__ import annotations

import argparse
import json

DEFAULT_METHODS = "gradcam,gradcam++,layercam"


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
                   help="model folder, .keras file, s3://…, runs:/<id>/model or models:/retina-fundus@champion")
    p.add_argument("--images", required=True,
                   help="folder/prefix of images (raw, EyePACS/Kermany layout, or a preprocessed dataset)")
    p.add_argument("--out", required=True, help="reports root (local folder or s3://reports)")
    p.add_argument("--methods", default=DEFAULT_METHODS, help=f"comma-separated CAM methods (default {DEFAULT_METHODS})")
    p.add_argument("--max-images", type=int, default=16, help="explain at most N images (default 16)")
    p.add_argument("--run-name", default="", help="report folder name (default: UTC timestamp)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--cam-layer", default=None, help="CAM target layer (default: last layer with a 4-D output)")
    p.add_argument("--layers", default="",
                   help="comma-separated layers for feature maps and filter views (default: all conv layers / last conv)")
    p.add_argument("--maps-per-layer", type=int, default=32)
    p.add_argument("--map-selection", choices=("first", "most_active"), default="first")
    p.add_argument("--filters", type=int, default=8, help="filters per layer to visualise by activation maximisation")
    p.add_argument("--baseline", choices=("grey", "blur"), default="grey", help="deletion/insertion baseline")
    p.add_argument("--input-range", choices=("0-1", "0-255", "-1-1"), default="0-1",
                   help="pixel range the model expects (default 0-1, as the project's models; "
                   "0-255 or -1-1 for a Keras file from elsewhere)")
    p.add_argument("--thresholds", default="",
                   help='faithfulness gate, e.g. "randomization_ssim<=0.5,pointing_game>=0.3" '
                   '(default: randomization_ssim<=0.5,insertion_minus_deletion>=0; "none" = no gate)')
    p.add_argument("--fail-on-gate", action="store_true",
                   help="exit with an error when the gate fails (the report is still written)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from components.explain.explanation import explain_images, require_gate

    layers = [s.strip() for s in args.layers.split(",") if s.strip()] or None
    result = explain_images(
        args.model, args.images, args.out, methods=args.methods, max_images=args.max_images,
        run_name=args.run_name, batch_size=args.batch_size, cam_layer=args.cam_layer, layers=layers,
        maps_per_layer=args.maps_per_layer, map_selection=args.map_selection, filter_count=args.filters,
        baseline=args.baseline, thresholds=args.thresholds, input_range=args.input_range,
    )
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
