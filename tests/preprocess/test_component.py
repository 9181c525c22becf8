"""The preprocess KFP component: its python_func directly, and under the KFP local runner."""

from __future__ import annotations

import json
import os

import pytest


def test_component_python_func_writes_manifest_into_the_artifact(fundus_raw, tmp_path):
    from kfp.dsl import Dataset

    from components.preprocess.component import preprocess

    dataset = Dataset(uri=str(tmp_path / "artifact" / "dataset"))
    out = str(tmp_path / "data")
    data_uri, num_images, num_rejected = preprocess.python_func(
        modality="fundus", input_uri=str(fundus_raw), output_uri=out, dataset=dataset, image_size=32,
        beam_args="--direct_num_workers=1",
    )
    assert data_uri == out and num_images == 10 and num_rejected == 0
    manifest = json.loads(open(dataset.path).read())
    assert manifest["num_images"] == 10
    assert dataset.metadata["num_images"] == 10 and dataset.metadata["rejected_count"] == 0
    assert sum(dataset.metadata[f"{s}_count"] for s in manifest["splits"]) == 10


@pytest.mark.slow
def test_component_under_kfp_local_runner(fundus_raw, tmp_path, kfp_local):
    from components.preprocess.component import preprocess

    out = str(tmp_path / "data")
    task = preprocess(modality="fundus", input_uri=str(fundus_raw), output_uri=out, image_size=32)
    assert task.outputs["data_uri"] == out
    assert task.outputs["num_images"] == 10 and task.outputs["num_rejected"] == 0
    assert task.outputs["dataset"].metadata["num_images"] == 10
    assert os.path.exists(os.path.join(out, "manifest.json"))
