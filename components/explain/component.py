"""KFP components of the explain step: `explain` (any model, batch use) over
`components.explain.explanation.explain_images`, and `explain_challenger` (the training pipeline's gate)
over `components.explain.candidate.explain_candidate`.

No `from __future__ import annotations` here: KFP reads the Output[HTML] / Output[Markdown] annotations at runtime.
"""


from typing import NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Markdown, Output

from components.common.images import PROJECT_IMAGE


@dsl.component(base_image=PROJECT_IMAGE, install_kfp_package=False)
def explain(
    model_uri: str,
    images_uri: str,
    reports_uri: str,
    html: Output[HTML],
    summary: Output[Markdown],
    methods: str = "layercam-fused,gradcam,gradcam++,layercam",  # literal: KFP ships this source; = ExplainConfig
    max_images: int = 16,
    run_name: str = "",
    thresholds: str = "",
    fail_on_gate: bool = False,
    input_range: str = "0-1",
) -> NamedTuple("ExplainOutputs", report_uri=str, pointing_game=float, gate_passed=bool):
    """Batch CAMs, feature maps, filters and faithfulness metrics; report under <reports>/<model>/<version>/<run>/.

    `pointing_game` is -1.0 when no image has a lesion mask. `html` is the self-contained report
    (images inlined) for the Kubeflow UI; `summary` the Markdown metrics table. `thresholds`
    (`"randomization_ssim<=0.5,pointing_game>=0.3"`; empty = the defaults) set the faithfulness gate:
    `gate_passed` says how it went, and with `fail_on_gate` a failed gate fails the step once the
    report is published (so the run shows red and the report says why). `input_range` is the pixel range
    a Keras file from elsewhere expects (`0-255`, `-1-1`); the project's models take `0-1`.
    """
    from components.explain.candidate import published_report
    from components.explain.explanation import explain_images, require_gate

    # A retried step returns the report its earlier attempt published (the URI is fixed by model and run).
    result = published_report(model_uri, reports_uri, run_name) or explain_images(
        model_uri, images_uri, reports_uri, methods=methods, max_images=max_images, run_name=run_name,
        thresholds=thresholds, input_range=input_range, html_path=html.path, markdown_path=summary.path, progress=False,
    )
    if fail_on_gate:
        require_gate(result)
    return (result.report_uri, result.pointing_game, result.gate_passed)


@dsl.component(base_image=PROJECT_IMAGE, install_kfp_package=False)
def explain_challenger(
    model_uri: str,
    images_uri: str,
    reports_uri: str,
    run_name: str,
    champion_uri: str,
    methods: str,
    max_images: int,
    thresholds: str,
    drift_images: int,
    min_drift_ssim: float,
    html: Output[HTML],
    verdict: Output[Markdown],
) -> NamedTuple("ExplainGate", passed=bool, checks=str, report_uri=str, drift_ssim=float):
    """The challenger's report (published either way), its faithfulness gate and the Grad-CAM drift vs the
    champion as checks; parameters come from `ExplainGateConfig` through the pipeline signature."""
    from components.common.checks import all_passed, checks_json
    from components.explain.candidate import ExplainGateConfig, explain_candidate

    cfg = ExplainGateConfig(model_uri=model_uri, images_uri=images_uri, reports_uri=reports_uri, run_name=run_name,
                            champion_uri=champion_uri, methods=methods, max_images=max_images, thresholds=thresholds,
                            drift_images=drift_images, min_drift_ssim=min_drift_ssim)
    result, checks = explain_candidate(cfg, html.path, verdict.path)
    drift = next((c.value for c in checks if c.name == "drift_ssim_vs_champion"), None)
    return (all_passed(checks), checks_json(checks), result.report_uri, -2.0 if drift is None else drift)
