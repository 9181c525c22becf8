"""Layout readers on synthetic sets (local and SeaweedFS S3), and on hand-broken folders."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from components.common import storage
from components.common.config import CLASS_NAMES
from components.common.datasets import read_dataset, read_eyepacs, read_kermany
from components.common.errors import DatasetError
from infra.local.synthetic import write_fundus_dataset, write_oct_dataset


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.stack)])
def root(request, tmp_path: Path) -> str:
    if request.param == "local":
        return str(tmp_path / "raw")
    request.getfixturevalue("stack")
    return f"s3://raw/test-datasets/{uuid.uuid4().hex}"


def _problem_names(listing) -> dict[str, str]:
    return {p.name: p.reason for p in listing.problems}


def test_eyepacs_reader_on_synthetic_set(root):
    summary = write_fundus_dataset(root, n=9, seed=4, size=96, balance=True)
    listing = read_dataset(root, "fundus")
    assert listing.problems == []
    assert len(listing) == summary["images"] == 9
    labels = {
        row.split(",")[0]: int(row.split(",")[1])
        for row in storage.read_text(storage.join(root, "trainLabels.csv")).splitlines()[1:]
    }
    for rec in listing.records:
        assert rec.label == labels[rec.image_id]
        assert rec.patient_id == rec.image_id.split("_")[0]
        assert rec.uri == storage.join(root, "train", f"{rec.image_id}.jpeg")
        assert rec.mask_uri == storage.join(root, "masks", f"{rec.image_id}.png")
        assert rec.split is None
    assert sum(listing.label_counts().values()) == 9


def test_kermany_reader_on_synthetic_set(root):
    summary = write_oct_dataset(root, n=24, seed=5, size=64)
    listing = read_dataset(root, "oct")
    assert listing.problems == []
    assert len(listing) == summary["images"] == 24
    for rec in listing.records:
        cls = CLASS_NAMES["oct"][rec.label]
        assert rec.image_id.startswith(f"{cls}-{rec.patient_id}-")
        assert rec.uri == storage.join(root, rec.split, cls, f"{rec.image_id}.jpeg")
        assert rec.mask_uri == storage.join(root, "masks", f"{rec.image_id}.png")
    by_patient: dict[str, set[str]] = {}
    for rec in listing.records:
        by_patient.setdefault(rec.patient_id, set()).add(rec.split)
    assert all(len(splits) == 1 for splits in by_patient.values())  # a patient never straddles splits
    assert summary["per_split"] == listing.split_counts()


def test_eyepacs_bad_rows_become_problems_naming_the_file(tmp_path):
    root = tmp_path / "eyepacs"
    (root / "train").mkdir(parents=True)
    for name in ("10_left", "10_right", "13_left", "15_left", "orphan_3", "17_right"):
        (root / "train" / f"{name}.jpeg").write_bytes(b"jpeg")
    (root / "train" / "notes.txt").write_text("not an image")
    (root / "trainLabels.csv").write_text(
        "image,level\n"
        "10_left,0\n"
        "10_right,2\n"
        "13_left,7\n"  # unknown label
        "15_left,x\n"  # not a number
        "16_left,1\n"  # no image
        "10_left,3\n"  # second row for the same image
        ",1\n"  # no image id
        "weird-name,1\n"  # id does not parse
    )
    listing = read_eyepacs(str(root))
    assert [(r.image_id, r.label, r.patient_id) for r in listing.records] == [
        ("10_left", 0, "10"),
        ("10_right", 2, "10"),
    ]
    problems = _problem_names(listing)
    assert "unknown label '7'" in problems["13_left"]
    assert "unknown label 'x'" in problems["15_left"]
    assert "no image file" in problems["16_left"]
    assert "second row" in problems["10_left"]
    assert "trainLabels.csv:8" in problems
    assert "does not parse" in problems["weird-name"]
    assert "no row in trainLabels.csv" in problems["17_right.jpeg"]
    assert "does not parse" in problems["orphan_3.jpeg"]
    assert problems["notes.txt"] == "not an image file"
    # One image, one reason: a file whose CSV row was refused is not reported again as "no row".
    assert "13_left.jpeg" not in problems and "15_left.jpeg" not in problems
    assert len(listing.problems) == len(problems)


def test_eyepacs_missing_csv_is_a_dataset_error_with_the_path(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "1_left.jpeg").write_bytes(b"x")
    with pytest.raises(DatasetError, match=r"trainLabels\.csv"):
        read_eyepacs(str(tmp_path))
    (tmp_path / "trainLabels.csv").write_text("file,grade\n1_left,0\n")
    with pytest.raises(DatasetError, match="image,level"):
        read_eyepacs(str(tmp_path))


def test_kermany_bad_names_and_folders_become_problems(tmp_path):
    good = tmp_path / "train" / "CNV" / "CNV-1001-1.jpeg"
    files = {
        good: b"x",
        tmp_path / "train" / "CNV" / "CNV-1001-2.jpeg": b"x",
        tmp_path / "test" / "DME" / "DME-2002-1.jpeg": b"x",
        tmp_path / "train" / "GLAUCOMA" / "GLAUCOMA-3-1.jpeg": b"x",  # unknown label folder
        tmp_path / "train" / "DRUSEN" / "drusen_scan.jpeg": b"x",  # does not parse
        tmp_path / "train" / "NORMAL" / "DME-4004-1.jpeg": b"x",  # class in name disagrees with folder
        tmp_path / "val" / "CNV" / "CNV-1001-1.jpeg": b"x",  # same id as in train
        tmp_path / "train" / "loose.jpeg": b"x",  # not inside a class folder
    }
    for path, data in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    listing = read_kermany(str(tmp_path))
    assert sorted((r.image_id, r.split, r.label) for r in listing.records) == [
        ("CNV-1001-1", "train", 1),
        ("CNV-1001-2", "train", 1),
        ("DME-2002-1", "test", 2),
    ]
    problems = _problem_names(listing)
    assert "unknown label folder 'GLAUCOMA'" in problems["train/GLAUCOMA/GLAUCOMA-3-1.jpeg"]
    assert "does not parse" in problems["train/DRUSEN/drusen_scan.jpeg"]
    assert "folder says NORMAL" in problems["train/NORMAL/DME-4004-1.jpeg"]
    assert "same image id" in problems["val/CNV/CNV-1001-1.jpeg"]
    assert "expected <split>/<CLASS>/<file>" in problems["train/loose.jpeg"]


def test_kermany_without_split_folders_and_unknown_modality(tmp_path):
    (tmp_path / "OCT2017" / "train" / "CNV").mkdir(parents=True)
    with pytest.raises(DatasetError, match="train/test/val"):
        read_kermany(str(tmp_path))
    with pytest.raises(DatasetError, match="modality"):
        read_dataset(str(tmp_path), "xray")
