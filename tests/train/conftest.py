"""Small shard sets in the preprocessing contract, shared by the train and evaluate tests."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("retina_test_shards", Path(__file__).with_name("shards.py"))
shards = importlib.util.module_from_spec(_spec)
sys.modules["retina_test_shards"] = shards
_spec.loader.exec_module(shards)


@pytest.fixture(scope="session")
def shard_tools():
    return shards


@pytest.fixture(scope="session")
def tiny_oct_data(tmp_path_factory) -> Path:
    """48 px OCT set: 64 train / 24 val / 24 test records in 2 shards per split."""
    root = tmp_path_factory.mktemp("oct-shards")
    shards.write_dataset(root, "oct", {
        "train": shards.make_samples("oct", 64, seed=1, size=48),
        "val": shards.make_samples("oct", 24, seed=2, size=48),
        "test": shards.make_samples("oct", 24, seed=3, size=48),
    }, image_size=48)
    return root


@pytest.fixture(scope="session")
def tiny_fundus_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fundus-shards")
    shards.write_dataset(root, "fundus", {
        "train": shards.make_samples("fundus", 40, seed=1, size=48),
        "val": shards.make_samples("fundus", 20, seed=2, size=48),
        "test": shards.make_samples("fundus", 20, seed=3, size=48),
    }, image_size=48)
    return root
