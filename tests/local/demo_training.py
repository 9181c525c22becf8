"""The demo's training settings learn the synthetic sets every time, not on a lucky seed (helpers; the tests
are test_demo_training_<modality>_seed<N>.py: one file per training, so parallel workers share them out).

The synthetic set is the demo's (data seed 0, its sizes), preprocessed once per modality and test run and
shared by the three trainings, also across pytest-xdist workers (`demo_dataset`); each trains the model with
the demo's settings under one training seed through the plain functions the pipeline's train step runs,
and scores the test split as the evaluate step scores it.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from pathlib import Path

import pytest

from infra.local.demo import DemoSettings

# What the demo promises (the bar): OCT accuracy and fundus quadratic weighted kappa on the test split.
FLOORS = {"oct": ("accuracy", 0.9), "fundus": ("qwk", 0.8)}


def _run_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of this test run that every xdist worker sees (a worker's base temp is <run>/popen-gwN)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def demo_dataset(modality: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The demo's preprocessed set for `modality`, built by the first training that needs it in this run
    (the others wait on a lock) and published by one rename, so no training reads half a set."""
    from components.preprocess.ops import PreprocessParams
    from components.preprocess.pipeline import run_preprocess
    from infra.local import synthetic

    settings = DemoSettings()
    folder = _run_folder(tmp_path_factory)
    data = folder / f"demo-{modality}-data"
    with open(folder / f"demo-{modality}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if this worker dies
        if not data.exists():
            work = folder / f"demo-{modality}-building"
            shutil.rmtree(work, ignore_errors=True)
            writer = {"fundus": synthetic.write_fundus_dataset, "oct": synthetic.write_oct_dataset}[modality]
            writer(str(work / "raw"), n=settings.images_per_set, seed=0, size=settings.raw_image_size, balance=True)
            run_preprocess(modality, str(work / "raw"), str(work / "data"),
                           PreprocessParams.with_overrides(modality, settings.image_size, {}))
            (work / "data").rename(data)
            shutil.rmtree(work, ignore_errors=True)
    return str(data)


def check_seed(modality: str, seed: int, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> None:
    """Train with the demo's settings under training seed `seed` and hold the test-split score to its floor."""
    from components.evaluate.evaluation import evaluate_model
    from components.train.training import TrainConfig, train

    settings = DemoSettings()
    metric, floor = FLOORS[modality]
    data = demo_dataset(modality, tmp_path_factory)
    config = TrainConfig(modality=modality, data_uri=data, model_name=settings.model_names[modality],
                         image_size=settings.image_size, epochs=settings.epochs, batch_size=settings.batch_size,
                         learning_rate=settings.learning_rate, width=settings.model_width, seed=seed,
                         output_uri=str(tmp_path / "model"), tracking=False, cache_dir=str(tmp_path / "cache"))
    result = train(config, progress=lambda line: None)
    score = round(getattr(evaluate_model(result.model_uri, data, modality, cache_dir=str(tmp_path / "cache")),
                          metric), 3)
    print(f"{modality} {metric} under training seed {seed}: {score}")
    assert score >= floor, f"{modality} {metric} under training seed {seed}: {score} (floor {floor})"
