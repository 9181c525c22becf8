"""The explain gate passes a model that learned the set, on a data seed the demo never uses.

With the demo's settings, OCT models trained on data seeds 5, 17 and 23 were perfect (accuracy and pointing
game 1.00) yet the gate refused them: flat grey, the old deletion baseline, read as CNV, and the first 8
records of a class-sorted shard were two classes (README, "The explain gate on held-out data seeds"). This
trains on data seed 17 (the worst: insertion − deletion −0.20) and runs the gate as the pipeline's explain
step does, with the demo's 8 images.
"""

from __future__ import annotations

import pytest

from infra.local.demo import DemoSettings

pytestmark = [pytest.mark.slow, pytest.mark.long(seconds=100)]

DATA_SEED = 17


def test_the_explain_gate_passes_a_perfect_oct_model_on_a_held_out_data_seed(tmp_path):
    from components.evaluate.evaluation import evaluate_model
    from components.explain.candidate import ExplainGateConfig
    from components.explain.explanation import explain_images
    from components.preprocess.ops import PreprocessParams
    from components.preprocess.pipeline import run_preprocess
    from components.train.training import TrainConfig, train
    from infra.local import synthetic

    settings = DemoSettings()
    synthetic.write_oct_dataset(str(tmp_path / "raw"), n=settings.images_per_set, seed=DATA_SEED,
                                size=settings.raw_image_size, balance=True)
    data = str(tmp_path / "data")
    run_preprocess("oct", str(tmp_path / "raw"), data, PreprocessParams.with_overrides("oct", settings.image_size, {}),
                   progress=lambda line: None)
    config = TrainConfig(modality="oct", data_uri=data, model_name=settings.model_names["oct"],
                         image_size=settings.image_size, epochs=settings.epochs, batch_size=settings.batch_size,
                         learning_rate=settings.learning_rate, width=settings.model_width, seed=0,
                         output_uri=str(tmp_path / "model"), tracking=False, cache_dir=str(tmp_path / "cache"))
    model_uri = train(config, progress=lambda line: None).model_uri
    assert evaluate_model(model_uri, data, "oct", cache_dir=str(tmp_path / "cache")).accuracy >= 0.9

    result = explain_images(model_uri, data, str(tmp_path / "reports"), methods=settings.explain_methods,
                            max_images=settings.explain_images, run_name="gate",
                            thresholds=ExplainGateConfig.thresholds, progress=False)
    summary = result.summary
    metrics = summary["gate"]["metrics"]
    print({name: round(m["value"], 4) for name, m in metrics.items()}, "pointing game", summary["pointing_game"])
    assert summary["gate"]["passed"], metrics
    assert metrics["insertion_minus_deletion"]["value"] >= 0.1  # measured 0.40 (random weights: < 0.006)
    assert summary["pointing_game"] >= 0.75
    assert sorted({image["true_label"] for image in summary["images"]}) == [0, 1, 2, 3]  # every class
