"""`retina explain`: Grad-CAM family, feature maps, filters and faithfulness for a model and a folder of images."""

from __future__ import annotations

import argparse
import json

from components.explain.config import add_arguments, from_args


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
    add_arguments(p)  # one flag per ExplainConfig field, defaults from the dataclass
    p.add_argument("--fail-on-gate", action="store_true",
                   help="exit with an error when the gate fails (the report is still written)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
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
