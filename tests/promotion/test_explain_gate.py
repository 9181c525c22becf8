"""The explain gate decides promotion: a randomized-weights challenger fails it; a retried step succeeds."""

from __future__ import annotations

import pytest

from components.common import storage

pytestmark = pytest.mark.slow
# Measured on these images: trained insertion - deletion 0.72; random weights 0.003. The pointing game does not
# separate them here (a random conv net also peaks on the one bright blob: 0.5 exactly, 1.0 with the pointing
# tolerance explain now applies), and the randomization SSIM is low for both (random maps depend on the
# weights too): insertion - deletion is the check that stops random weights.
THRESHOLDS = "randomization_ssim<=0.5,insertion_minus_deletion>=0.1,pointing_game>=0.5"


def _gate(model_dir, folder, reports, run_name="r1"):
    from components.explain.candidate import ExplainGateConfig, explain_candidate

    cfg = ExplainGateConfig(model_uri=str(model_dir), images_uri=str(folder), reports_uri=str(reports),
                            run_name=run_name, methods="gradcam", max_images=8, thresholds=THRESHOLDS)
    return explain_candidate(cfg)


def test_randomized_weights_challenger_fails_the_explanation_gate(planted_models, lesion_folder, tmp_path) -> None:
    from components.common.checks import all_passed

    _, trained = _gate(planted_models["trained"], lesion_folder, tmp_path / "reports", "trained")
    result, randomized = _gate(planted_models["randomized"], lesion_folder, tmp_path / "reports", "randomized")
    assert all_passed(trained), [c.describe() for c in trained]
    assert not all_passed(randomized)
    failed = {c.name for c in randomized if not c.passed}
    assert "insertion_minus_deletion" in failed, [c.describe() for c in randomized]
    assert storage.exists(storage.join(result.report_uri, "index.html"))  # published either way


@pytest.mark.stack
def test_retried_explain_returns_the_published_report_and_clears_a_killed_attempt(stack, planted_models,
                                                                                  lesion_folder, tmp_path) -> None:
    import mlflow

    from components.common.model_ref import ModelRef
    from components.register.registry import register_challenger

    name = f"planted-{tmp_path.name}"[:60]
    mlflow.set_experiment("retina-promotion-tests")
    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(planted_models["trained"]), artifact_path="model")
    version = register_challenger("fundus", run.info.run_id, registered_model=name).version
    uri, reports = str(ModelRef.registry(name, version=version)), f"s3://reports/retry-{tmp_path.name}"

    report_uri = storage.join(reports, name, version, "run-7")
    storage.write_text(storage.join(report_uri, "summary.json"), "{}")  # what a killed attempt left (no _SUCCESS)
    first, checks = _gate(uri, lesion_folder, reports, run_name="run-7")
    assert first.report_uri == report_uri and storage.is_published(report_uri)
    stamp = storage.read_text(storage.join(report_uri, "index.html"))

    again, checks_again = _gate(uri, lesion_folder, reports, run_name="run-7")  # the step retried
    assert again.report_uri == first.report_uri
    assert storage.read_text(storage.join(report_uri, "index.html")) == stamp  # not recomputed, not refused
    assert [c.name for c in checks_again] == [c.name for c in checks]
    assert [c.passed for c in checks_again] == [c.passed for c in checks]
