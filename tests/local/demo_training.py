"""The demo's training settings learn the synthetic sets every time, not on a lucky seed (helpers; the tests
are test_demo_training_oct.py and test_demo_training_fundus.py: one file per modality, so parallel workers
can run the two at once).

The synthetic set is the demo's (data seed 0, its sizes), preprocessed once per modality; the model
is trained with the demo's settings under three training seeds through the plain functions the
pipeline's train step runs, and the test split is scored as the evaluate step scores it.
Cost: one data set + 3 trainings per modality at the demo's sizes.
"""

from __future__ import annotations

from infra.local.demo import DemoSettings

SEEDS = (0, 1, 2)
# What the demo promises (the bar): OCT accuracy and fundus quadratic weighted kappa on the test split.
FLOORS = {"oct": ("accuracy", 0.9), "fundus": ("qwk", 0.8)}


def _demo_dataset(modality: str, settings: DemoSettings, root) -> str:
    from components.preprocess.ops import PreprocessParams
    from components.preprocess.pipeline import run_preprocess
    from infra.local import synthetic

    writer = {"fundus": synthetic.write_fundus_dataset, "oct": synthetic.write_oct_dataset}[modality]
    writer(str(root / "raw"), n=settings.images_per_set, seed=0, size=settings.raw_image_size, balance=True)
    run_preprocess(modality, str(root / "raw"), str(root / "data"),
                   PreprocessParams.with_overrides(modality, settings.image_size, {}))
    return str(root / "data")


def _train_and_score(modality: str, data: str, seed: int, settings: DemoSettings, root) -> float:
    from components.evaluate.evaluation import evaluate_model
    from components.train.training import TrainConfig, train

    config = TrainConfig(modality=modality, data_uri=data, model_name=settings.model_names[modality],
                         image_size=settings.image_size, epochs=settings.epochs, batch_size=settings.batch_size,
                         learning_rate=settings.learning_rate, width=settings.model_width, seed=seed,
                         output_uri=str(root / f"model{seed}"), tracking=False, cache_dir=str(root / "cache"))
    result = train(config, progress=lambda line: None)
    metric, _ = FLOORS[modality]
    return getattr(evaluate_model(result.model_uri, data, modality, cache_dir=str(root / "cache")), metric)


def check_every_seed(modality: str, tmp_path) -> None:
    """Train with the demo's settings under every seed in SEEDS and hold each test-split score to its floor."""
    settings = DemoSettings()
    metric, floor = FLOORS[modality]
    data = _demo_dataset(modality, settings, tmp_path)
    scores = {seed: round(_train_and_score(modality, data, seed, settings, tmp_path), 3) for seed in SEEDS}
    print(f"{modality} {metric} per training seed: {scores}")
    assert all(score >= floor for score in scores.values()), f"{modality} {metric} per seed: {scores} (floor {floor})"
