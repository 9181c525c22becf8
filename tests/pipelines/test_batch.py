"""Sharding, model pinning and the batch report index: plain functions and their KFP steps on the local runner."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from skimage import data as skdata
from skimage import io as skio

from components.common.errors import RetinaError
from pipelines.batch import make_shards, resolve_model_uri, write_batch_index


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """The two real scikit-image retina images, three synthetic-looking noise images, and one lesion mask."""
    folder = tmp_path / "images"
    (folder / "masks").mkdir(parents=True)
    skio.imsave(folder / "retina.jpg", skdata.retina()[::8, ::8], check_contrast=False)
    skio.imsave(folder / "microaneurysms.png", skdata.microaneurysms(), check_contrast=False)
    rng = np.random.default_rng(0)
    for i in range(3):
        skio.imsave(folder / f"noise_{i}.png", rng.integers(0, 255, (32, 32, 3), dtype=np.uint8), check_contrast=False)
    skio.imsave(folder / "masks" / "noise_1.png", np.zeros((32, 32), np.uint8), check_contrast=False)
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_small_set_is_one_shard_explained_in_place(image_folder: Path, tmp_path: Path) -> None:
    shards = make_shards(str(image_folder), shard_size=10, work_uri=str(tmp_path / "work"), run_name="r1")
    assert shards == [{"uri": str(image_folder), "run_name": "r1-shard-00000"}]
    assert not (tmp_path / "work").exists()


def test_large_set_splits_into_shards_with_masks_beside(image_folder: Path, tmp_path: Path) -> None:
    shards = make_shards(str(image_folder), shard_size=2, work_uri=str(tmp_path / "work"), run_name="r2")
    assert [s["run_name"] for s in shards] == ["r2-shard-00000", "r2-shard-00001", "r2-shard-00002"]
    files = [sorted(p.name for p in Path(s["uri"]).iterdir() if p.is_file()) for s in shards]
    assert sum(len(f) for f in files) == 5 and all(1 <= len(f) <= 2 for f in files)
    assert sorted(n for f in files for n in f) == sorted(
        ["microaneurysms.png", "noise_0.png", "noise_1.png", "noise_2.png", "retina.jpg"]
    )
    with_mask = [s for s in shards if (Path(s["uri"]) / "noise_1.png").exists()]
    assert (Path(with_mask[0]["uri"]) / "masks" / "noise_1.png").is_file()


def test_empty_folder_and_bad_shard_size_are_user_errors(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "a.txt").write_text("x")
    with pytest.raises(RetinaError, match="no images"):
        make_shards(str(tmp_path / "empty"), 4, str(tmp_path / "w"))
    with pytest.raises(RetinaError, match="shard_size"):
        make_shards(str(tmp_path / "empty"), 0, str(tmp_path / "w"))


def test_explicit_version_needs_no_registry_and_must_be_a_number() -> None:
    assert resolve_model_uri("oct", "7") == "models:/retina-oct/7"
    with pytest.raises(RetinaError, match="must be a number"):
        resolve_model_uri("fundus", "champion")


def test_index_links_shard_reports_escapes_names_and_averages_scored_shards(tmp_path: Path) -> None:
    reports = tmp_path / "reports" / "retina-fundus" / "3"
    uris = [str(reports / "job-shard-00000"), str(reports / "<b>-shard-00001")]
    out = write_batch_index(uris, [0.5, -1.0], str(reports / "batch-job"), "Batch <explanation>")
    summary = json.loads((Path(out) / "summary.json").read_text())
    assert summary["mean_pointing_game"] == 0.5  # the shard without masks (-1) does not count
    page = (Path(out) / "index.html").read_text()
    assert "<b>" not in page and "&lt;b&gt;" in page
    assert 'href="../job-shard-00000/index.html"' in page


def test_list_shards_and_merge_reports_steps_run_on_the_local_runner(image_folder: Path, tmp_path: Path,
                                                                     kfp_local: Path) -> None:
    from pipelines.steps import list_shards, merge_reports

    task = list_shards(images_uri=str(image_folder), shard_size=3, work_uri=str(tmp_path / "work"), run_name="lr")
    shards = task.output
    assert [s["run_name"] for s in shards] == ["lr-shard-00000", "lr-shard-00001"]
    merged = merge_reports(
        report_uris=[str(tmp_path / "rep" / "retina-oct" / "2" / s["run_name"]) for s in shards],
        pointing_games=[1.0, 0.0],
        reports_uri=str(tmp_path / "rep"),
        model_uri="models:/retina-oct/2",
        run_name="batch-lr",
    )
    assert merged.outputs["index_uri"] == str(tmp_path / "rep" / "retina-oct" / "2" / "batch-lr")
    assert merged.outputs["mean_pointing_game"] == 0.5
    assert "lr-shard-00001" in Path(merged.outputs["index"].path).read_text()


def test_resolve_model_step_runs_on_the_local_runner(kfp_local: Path) -> None:
    from pipelines.steps import resolve_model

    assert resolve_model(modality="fundus", version="12").output == "models:/retina-fundus/12"
