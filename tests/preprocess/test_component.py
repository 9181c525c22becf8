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
    for split, info in manifest["splits"].items():  # per-class counts shown on the artifact in the KFP UI
        for name, n in info["per_class"].items():
            assert dataset.metadata[f"{split}_{name}_count"] == n


def test_component_takes_further_parameters_as_json(fundus_raw, tmp_path):
    from kfp.dsl import Dataset

    from components.common.errors import RetinaError
    from components.preprocess.component import preprocess

    dataset = Dataset(uri=str(tmp_path / "artifact" / "dataset"))
    preprocess.python_func(modality="fundus", input_uri=str(fundus_raw), output_uri=str(tmp_path / "data"),
                           dataset=dataset, image_size=32, params='{"sigma_ratio": 0.05, "rim_fraction": 0.8}')
    manifest = json.loads(open(dataset.path).read())
    assert manifest["parameters"]["sigma_ratio"] == 0.05 and manifest["parameters"]["rim_fraction"] == 0.8
    with pytest.raises(RetinaError, match="unknown preprocessing parameter 'sigma'"):
        preprocess.python_func(modality="fundus", input_uri=str(fundus_raw), output_uri=str(tmp_path / "d2"),
                               dataset=dataset, image_size=32, params='{"sigma": 3}')


@pytest.mark.slow
def test_component_under_kfp_local_runner(fundus_raw, tmp_path, kfp_local):
    from components.preprocess.component import preprocess

    out = str(tmp_path / "data")
    task = preprocess(modality="fundus", input_uri=str(fundus_raw), output_uri=out, image_size=32)
    assert task.outputs["data_uri"] == out
    assert task.outputs["num_images"] == 10 and task.outputs["num_rejected"] == 0
    assert task.outputs["dataset"].metadata["num_images"] == 10
    assert os.path.exists(os.path.join(out, "manifest.json"))
