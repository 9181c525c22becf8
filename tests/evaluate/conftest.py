"""A tiny OCT shard set (same writer as the train tests) and a model trained on it for a few epochs."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

_path = Path(__file__).resolve().parents[1] / "train" / "shards.py"
_spec = importlib.util.spec_from_file_location("retina_test_shards", _path)
shards = sys.modules.get("retina_test_shards") or importlib.util.module_from_spec(_spec)
if "retina_test_shards" not in sys.modules:
    sys.modules["retina_test_shards"] = shards
    _spec.loader.exec_module(shards)


@pytest.fixture(scope="session")
def eval_oct_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("eval-oct")
    shards.write_dataset(root, "oct", {
        "train": shards.make_samples("oct", 64, seed=11, size=32),
        "val": shards.make_samples("oct", 16, seed=12, size=32),
        "test": shards.make_samples("oct", 24, seed=13, size=32),
    }, image_size=32)
    return root


@pytest.fixture(scope="session")
def eval_oct_model(eval_oct_data, tmp_path_factory) -> Path:
    from components.train.training import TrainConfig, train

    out = tmp_path_factory.mktemp("eval-model") / "model"
    train(TrainConfig(modality="oct", data_uri=str(eval_oct_data), model_name="oct_cnn", epochs=3, batch_size=16,
                      width=0.25, tracking=False, output_uri=str(out)))
    return out
