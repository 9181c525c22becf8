"""The Beam pipeline: dead-letter output for every bad-input kind, patient splits, S3 end to end, CLI."""

from __future__ import annotations

import json
import shutil
import struct
import uuid
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from components.common import storage
from components.preprocess.ops import PreprocessParams
from components.preprocess.pipeline import patient_unit, plan_splits, run_preprocess
from components.preprocess.records import read_examples

SIZE = 64


def _shard_rows(root: str, manifest: dict) -> dict[str, list[dict]]:
    return {split: [row for rel in info["shards"] for row in read_examples(storage.join(root, rel))]
            for split, info in manifest["splits"].items()}


def _bomb_png() -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 40_000, 30_000, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b""))


# image id -> (file name, bytes maker, label in the CSV)
BAD = {
    "truncated": ("901_left.jpeg", lambda e, good: good[: len(good) // 2], 1),
    "zero-byte": ("902_left.jpeg", lambda e, good: b"", 1),
    "non-image": ("903_left.jpeg", lambda e, good: b"<html>not found</html>", 1),
    "png-alpha": ("904_left.png", lambda e, good: e.png(np.full((256, 340, 4), 120, np.uint8)), 1),
    "grayscale": ("905_left.jpeg", lambda e, good: e.jpeg(np.full((256, 340), 120, np.uint8)), 1),
    "16-bit": ("906_left.png", lambda e, good: e.png(np.full((256, 340, 3), 30000, np.uint16)), 1),
    "huge": ("907_left.png", lambda e, good: _bomb_png(), 1),
    "all-black": ("908_left.jpeg", lambda e, good: e.jpeg(np.zeros((256, 340, 3), np.uint8)), 1),
    "unknown-label": ("909_left.jpeg", lambda e, good: good, 7),
}


@pytest.fixture(scope="module")
def messy_run(fundus_raw: Path, encode, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The synthetic set plus one bad file of every kind, preprocessed once for all the tests below."""
    root = tmp_path_factory.mktemp("messy") / "raw"
    shutil.copytree(fundus_raw, root)
    good_name = sorted((root / "train").iterdir())[0].name
    good = (root / "train" / good_name).read_bytes()
    rows = []
    for name, make, label in BAD.values():
        (root / "train" / name).write_bytes(make(encode, good))
        rows.append(f"{name.split('.')[0]},{label}")
    # duplicate id: a second file for an existing image id, under another extension
    (root / "train" / good_name.replace(".jpeg", ".png")).write_bytes(good)
    with (root / "trainLabels.csv").open("a") as csv:
        csv.write("\n".join(rows) + "\n")
    out = tmp_path_factory.mktemp("messy-out") / "data"
    manifest = run_preprocess("fundus", str(root), str(out), PreprocessParams(image_size=SIZE), seed=1,
                              val_fraction=0.2, test_fraction=0.2, max_reject_fraction=1.0)
    rejected = [json.loads(line) for line in (out / "rejected.jsonl").read_text().splitlines()]
    return {"manifest": manifest, "out": out, "rejected": rejected, "good_name": good_name,
            "rows": _shard_rows(str(out), manifest)}


def _reason(run: dict, name: str) -> str:
    stem = name.split(".")[0]
    hits = [r["reason"] for r in run["rejected"] if r["image_id"] in (stem, name)]
    assert len(hits) == 1, f"{name}: expected one line in rejected.jsonl, got {hits or run['rejected']}"
    return hits[0]


@pytest.mark.parametrize(
    "kind, expected",
    [
        ("truncated", "truncated JPEG"),
        ("zero-byte", "empty file"),
        ("non-image", "not an image"),
        ("png-alpha", "alpha channel"),
        ("grayscale", "grayscale"),
        ("16-bit", "16-bit"),
        ("huge", "too large"),
        ("all-black", "no retina found"),
        ("unknown-label", "unknown label"),
    ],
)
def test_bad_input_goes_to_dead_letter(messy_run, kind, expected):
    assert expected in _reason(messy_run, BAD[kind][0])


def test_duplicate_image_id_goes_to_dead_letter(messy_run):
    duplicate = messy_run["good_name"].replace(".jpeg", ".png")
    assert "image id" in _reason(messy_run, duplicate)
    written = [r["image_id"].decode() for rows in messy_run["rows"].values() for r in rows]
    assert written.count(messy_run["good_name"].split(".")[0]) == 1  # the first one is still written


def test_every_good_image_is_written(messy_run, fundus_raw):
    good_ids = {p.stem for p in (fundus_raw / "train").iterdir()}
    written = [r["image_id"].decode() for rows in messy_run["rows"].values() for r in rows]
    assert sorted(written) == sorted(good_ids)
    manifest = messy_run["manifest"]
    assert manifest["num_images"] == len(good_ids)
    assert manifest["rejected_count"] == len(messy_run["rejected"]) >= len(BAD) + 1
    for split, info in manifest["splits"].items():
        assert info["count"] == len(messy_run["rows"][split]) == sum(info["per_class"].values())


def test_shard_records_hold_the_contract_features(messy_run):
    rows = [r for rows in messy_run["rows"].values() for r in rows]
    for row in rows:
        image = cv2.imdecode(np.frombuffer(row["image"], np.uint8), cv2.IMREAD_UNCHANGED)
        mask = cv2.imdecode(np.frombuffer(row["mask"], np.uint8), cv2.IMREAD_UNCHANGED)
        assert image.shape == (SIZE, SIZE, 3) and mask.shape == (SIZE, SIZE)
        assert row["modality"] == b"fundus" and 0 <= row["label"] <= 4
        assert row["patient_id"] == row["image_id"].split(b"_")[0]
    manifest = messy_run["manifest"]
    assert manifest["parameters"]["image_size"] == SIZE and manifest["code_version"]
    for split, info in manifest["splits"].items():
        assert all(rel.startswith(f"{split}/{split}-") and rel.endswith(".tfrecord.gz") for rel in info["shards"])


def test_patient_split_has_no_overlap_and_is_deterministic(messy_run):
    patients = {split: {r["patient_id"] for r in rows} for split, rows in messy_run["rows"].items()}
    splits = list(patients)
    for i, a in enumerate(splits):
        for b in splits[i + 1 :]:
            assert not patients[a] & patients[b]
    for split, ids in patients.items():
        for pid in ids:
            u = patient_unit(pid.decode(), seed=1)
            assert split == ("test" if u < 0.2 else "val" if u < 0.4 else "train")


def test_kermany_test_split_kept_and_overlapping_patient_moved(tmp_path):
    from components.common.datasets import ImageRecord

    recs = [
        ImageRecord("CNV-1-1", "1", 1, "a", "train"), ImageRecord("CNV-1-2", "1", 1, "b", "test"),
        ImageRecord("DME-2-1", "2", 2, "c", "test"), ImageRecord("NORMAL-3-1", "3", 0, "d", "train"),
        ImageRecord("NORMAL-3-2", "3", 0, "e", "val"), ImageRecord("DRUSEN-4-1", "4", 3, "f", "train"),
    ]
    plan = plan_splits(recs, 4, val_fraction=0.5, seed=0)
    split = {rec.image_id: s for rec, s in plan.assignments}
    assert split["CNV-1-1"] == split["CNV-1-2"] == split["DME-2-1"] == "test"
    assert split["NORMAL-3-1"] == split["NORMAL-3-2"] != "test"
    assert split["DRUSEN-4-1"] != "test"
    assert plan.patients_moved == 2  # patient 1 (train+test) and patient 3 (train+val)


def test_split_fractions_are_validated():
    with pytest.raises(ValueError, match="fraction"):
        plan_splits([], 5, val_fraction=0.6, test_fraction=0.5)


@pytest.mark.stack
def test_oct_end_to_end_through_seaweedfs(stack):
    """Kermany-layout OCT set on S3 -> Beam (2 workers) -> shards on S3, read back; a patient planted in two
    given splits is moved to test and counted."""
    from infra.local.synthetic import write_oct_dataset

    run = uuid.uuid4().hex[:8]
    raw, out = f"s3://raw/pre-{run}", f"s3://datasets/pre-{run}"
    write_oct_dataset(raw, n=14, seed=5, size=96)
    train_scan = next(u for u in storage.list_uris(storage.join(raw, "train")) if u.endswith(".jpeg"))
    name = storage.basename(train_scan)
    cls, patient, _ = name[: -len(".jpeg")].split("-")
    storage.copy(train_scan, storage.join(raw, "test", cls, f"{cls}-{patient}-99.jpeg"))

    manifest = run_preprocess("oct", raw, out, PreprocessParams(modality="oct", image_size=48),
                              beam_args=["--direct_num_workers=2"])
    assert storage.read_json(storage.join(out, "manifest.json")) == manifest
    assert manifest["patients_moved"] == 1 and manifest["rejected_count"] == 0
    rows = _shard_rows(out, manifest)
    assert sum(len(r) for r in rows.values()) == manifest["num_images"] == 15
    test_patients = {r["patient_id"].decode() for r in rows["test"]}
    assert patient in test_patients
    for split, split_rows in rows.items():
        if split != "test":
            assert not {r["patient_id"].decode() for r in split_rows} & test_patients
        for row in split_rows:
            img = cv2.imdecode(np.frombuffer(row["image"], np.uint8), cv2.IMREAD_UNCHANGED)
            assert img.shape == (48, 48) and row["modality"] == b"oct"
    assert storage.exists(storage.join(out, "rejected.jsonl"))


@pytest.mark.slow
def test_shards_parse_with_tensorflow(messy_run):
    import tensorflow as tf

    manifest, out = messy_run["manifest"], messy_run["out"]
    files = [str(out / rel) for info in manifest["splits"].values() for rel in info["shards"]]
    spec = {"image": tf.io.FixedLenFeature([], tf.string), "label": tf.io.FixedLenFeature([], tf.int64),
            "image_id": tf.io.FixedLenFeature([], tf.string), "patient_id": tf.io.FixedLenFeature([], tf.string),
            "modality": tf.io.FixedLenFeature([], tf.string), "mask": tf.io.FixedLenFeature([], tf.string)}
    count = 0
    for record in tf.data.TFRecordDataset(files, compression_type="GZIP"):
        ex = tf.io.parse_single_example(record, spec)
        assert tf.io.decode_png(ex["image"]).shape == (SIZE, SIZE, 3)
        count += 1
    assert count == manifest["num_images"]


def test_cli_passes_unknown_options_to_beam(fundus_raw, tmp_path, capsys):
    from components.cli import main

    out = tmp_path / "cli-out"
    rc = main(["preprocess", "--modality", "fundus", "--input", str(fundus_raw), "--output", str(out),
               "--image-size", "32", "--direct_num_workers=1", "--json"])
    assert rc == 0
    captured = capsys.readouterr()
    manifest = json.loads(captured.out)
    assert manifest["num_images"] == 10 and manifest["image_size"] == 32
    assert "[preprocess] running Beam" in captured.err
    assert (out / "manifest.json").exists()
    bad = main(["preprocess", "--modality", "fundus", "--input", str(tmp_path / "missing"), "--output", str(out)])
    assert bad == 2


@pytest.mark.parametrize(("given", "expected"), [
    ([], ["--runner=FnApiRunner"]),
    (["--direct_num_workers=2"], ["--direct_num_workers=2", "--runner=FnApiRunner"]),
    (["--runner=DirectRunner", "--direct_num_workers=2"], ["--runner=FnApiRunner", "--direct_num_workers=2"]),
    (["--runner", "DirectRunner"], ["--runner=FnApiRunner"]),
    (["--runner=FlinkRunner", "--flink_master=flink:8081"], ["--runner=FlinkRunner", "--flink_master=flink:8081"]),
    (["--runner", "DataflowRunner", "--project=p"], ["--runner=DataflowRunner", "--project=p"]),
])
def test_local_runner_never_fetches_prism_and_other_runners_pass_through(given, expected):
    from components.preprocess.pipeline import local_runner_args

    assert local_runner_args(given) == expected


def test_cli_direct_runner_multi_processing_and_named_parameters(fundus_raw, tmp_path, capsys):
    """`--runner=DirectRunner` with two worker processes runs offline; `--param` sets any parameter."""
    from components.cli import main

    out = tmp_path / "mp-out"
    rc = main(["preprocess", "--modality", "fundus", "--input", str(fundus_raw), "--output", str(out),
               "--image-size", "32", "--param", "sigma_ratio=0.05", "--param", "rim_fraction=0.8",
               "--runner=DirectRunner", "--direct_num_workers=2", "--direct_running_mode=multi_processing",
               "--json"])
    assert rc == 0
    manifest = json.loads(capsys.readouterr().out)
    assert manifest["num_images"] == 10 and manifest["runner"] == "FnApiRunner"
    assert manifest["parameters"]["sigma_ratio"] == 0.05 and manifest["parameters"]["rim_fraction"] == 0.8
    timing = manifest["timing"]  # the worker processes' Beam metrics came back to the driver
    assert 0 < timing["processing_seconds"] <= timing["wall_seconds"] and timing["images_per_second"] > 0
    assert main(["preprocess", "--modality", "fundus", "--input", str(fundus_raw), "--output", str(out),
                 "--param", "rim_fraction"]) == 2


def test_manifest_records_the_parameter_object(messy_run):
    from components.preprocess.pipeline import manifest_params

    assert manifest_params(messy_run["manifest"]) == PreprocessParams(image_size=SIZE)


def test_reject_rate_above_the_threshold_fails_the_run_and_writes_no_manifest(fundus_raw, encode, tmp_path):
    """2 of 5 images bad (40 %) > the default 10 %: the run fails naming the reasons; the dead letter is
    written for the user, the manifest is not, so nothing trains on what is left."""
    from components.common.errors import RetinaError

    root = tmp_path / "raw"
    (root / "train").mkdir(parents=True)
    good = sorted((fundus_raw / "train").iterdir())[:3]
    rows = ["image,level"] + [f"{p.stem},0" for p in good] + ["801_left,1", "802_left,1"]
    for p in good:
        (root / "train" / p.name).write_bytes(p.read_bytes())
    (root / "train" / "801_left.jpeg").write_bytes(b"")
    (root / "train" / "802_left.jpeg").write_bytes(encode.jpeg(np.zeros((64, 64, 3), np.uint8)))
    (root / "trainLabels.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    with pytest.raises(RetinaError, match=r"2 of 5 images rejected \(40\.0% > max_reject_fraction 10\.0%\)"):
        run_preprocess("fundus", str(root), str(out), PreprocessParams(image_size=32))
    assert not (out / "manifest.json").exists()
    assert len((out / "rejected.jsonl").read_text().splitlines()) == 2


def test_reject_rate_rule():
    from components.common.errors import RetinaError
    from components.preprocess.pipeline import check_reject_rate

    check_reject_rate(9, [{"image_id": "a", "reason": "x"}], 0.1, "out")  # 10 % is allowed
    with pytest.raises(RetinaError, match="1× x"):
        check_reject_rate(8, [{"image_id": "a", "reason": "x"}, {"image_id": "b", "reason": "y"}], 0.1, "out")


def test_component_default_threshold_is_the_pipelines():
    import inspect

    from components.preprocess.component import preprocess
    from components.preprocess.pipeline import DEFAULT_MAX_REJECT_FRACTION

    default = inspect.signature(preprocess.python_func).parameters["max_reject_fraction"].default
    assert default == DEFAULT_MAX_REJECT_FRACTION


def test_files_that_are_listed_are_readable(fundus_raw, tmp_path):
    """A TIFF (neither path decodes it) is a listing problem, not an image that is listed and then rejected."""
    from components.common.datasets import read_eyepacs

    root = tmp_path / "raw"
    shutil.copytree(fundus_raw, root)
    (root / "train" / "990_left.tif").write_bytes(b"II*\x00")
    listing = read_eyepacs(str(root))
    assert "990_left" not in {r.image_id for r in listing.records}
    assert any(p.name == "990_left.tif" for p in listing.problems)
