"""Synthetic fundus / OCT data: determinism, lesion severity by grade, layouts, real sample images."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

from components.cli import main as retina
from components.common import storage
from components.common.config import CLASS_NAMES
from components.common.datasets import read_eyepacs, read_kermany
from infra.local.samples import write_samples
from infra.local.synthetic import render_fundus, render_oct, write_fundus_dataset, write_oct_dataset


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("writer", [write_fundus_dataset, write_oct_dataset])
def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path, writer):
    writer(str(tmp_path / "a"), n=8, seed=11, size=64)
    writer(str(tmp_path / "b"), n=8, seed=11, size=64)
    writer(str(tmp_path / "c"), n=8, seed=12, size=64)
    a, b, c = _files(tmp_path / "a"), _files(tmp_path / "b"), _files(tmp_path / "c")
    assert a == b
    assert len(a) >= 16
    images_a = {k: v for k, v in a.items() if k.endswith(".jpeg")}
    images_c = {k: v for k, v in c.items() if k.endswith(".jpeg")}
    assert set(images_a.values()).isdisjoint(images_c.values())


def test_fundus_frame_is_wide_with_black_surround_and_mask_on_the_same_grid():
    rgb, mask = render_fundus(3, np.random.default_rng(0), size=200)
    assert rgb.shape == (200, 266, 3) and rgb.dtype == np.uint8
    assert mask.shape == (200, 266) and set(np.unique(mask)) <= {0, 255}
    assert rgb[:, :8].max() < 20 and rgb[:, -8:].max() < 20  # black side bands
    centre = rgb[80:120, 113:153].reshape(-1, 3).mean(axis=0)
    assert centre[0] > centre[1] > centre[2]  # orange-red retina
    assert (mask > 0).any()


def test_higher_fundus_grades_carry_more_lesion_pixels():
    seeds = range(6)
    area = [
        np.mean([(render_fundus(g, np.random.default_rng(s), size=128)[1] > 0).mean() for s in seeds])
        for g in range(5)
    ]
    assert area[0] == 0.0
    assert all(lo < hi for lo, hi in zip(area, area[1:], strict=False)), area
    assert area[4] > 10 * area[1]


def test_lesions_darken_or_brighten_the_pixels_under_the_mask():
    """The mask marks what is drawn: lesion pixels differ from the same photo's healthy retina."""
    rgb, mask = render_fundus(2, np.random.default_rng(3), size=256)
    healthy = render_fundus(0, np.random.default_rng(3), size=256)[0]
    on = mask > 0
    diff = np.abs(rgb.astype(int) - healthy.astype(int)).sum(axis=2)
    assert np.median(diff[on]) > 60


def test_oct_classes_have_their_lesions():
    for label, name in enumerate(CLASS_NAMES["oct"]):
        areas = []
        for seed in range(3):
            gray, mask = render_oct(label, np.random.default_rng(seed), size=128)
            assert gray.shape == mask.shape == (128, 128) and gray.dtype == np.uint8
            areas.append((mask > 0).mean())
        if name == "NORMAL":
            assert max(areas) == 0.0
        else:
            assert min(areas) > 0.002, (name, areas)
    # DME fluid pockets are dark, CNV lesions bright, relative to the scan's retina
    gray, mask = render_oct(CLASS_NAMES["oct"].index("DME"), np.random.default_rng(1), size=256)
    assert gray[mask > 0].mean() < 25
    gray, mask = render_oct(CLASS_NAMES["oct"].index("CNV"), np.random.default_rng(1), size=256)
    retina_level = np.percentile(gray, 75)
    assert np.percentile(gray[mask > 0], 90) > retina_level


def test_fundus_grade_distribution_follows_eyepacs_or_balances(tmp_path):
    natural = write_fundus_dataset(str(tmp_path / "n"), n=300, seed=1, size=24)
    counts = list(natural["per_class"].values())
    assert 0.62 < counts[0] / 300 < 0.84
    balanced = write_fundus_dataset(str(tmp_path / "b"), n=50, seed=1, size=24, balance=True)
    assert list(balanced["per_class"].values()) == [10] * 5

    listing = read_eyepacs(str(tmp_path / "n"))
    eyes: dict[str, dict[str, int]] = {}
    for rec in listing.records:
        eyes.setdefault(rec.patient_id, {})[rec.image_id.split("_")[1]] = rec.label
    assert all(set(e) == {"left", "right"} for e in eyes.values())
    same = sum(e["left"] == e["right"] for e in eyes.values()) / len(eyes)
    assert same > 0.6  # the two eyes of a patient mostly share the grade


def test_oct_balance_and_several_scans_per_patient(tmp_path):
    summary = write_oct_dataset(str(tmp_path), n=40, seed=2, size=32, balance=True)
    assert list(summary["per_class"].values()) == [10] * 4
    listing = read_kermany(str(tmp_path))
    scans = Counter(r.patient_id for r in listing.records)
    assert max(scans.values()) >= 2 and summary["patients"] < 40


def test_cli_synth_writes_the_layout(tmp_path, capsys):
    out = tmp_path / "oct"
    assert (
        retina(
            [
                "data",
                "synth",
                "--modality",
                "oct",
                "--n",
                "6",
                "--seed",
                "3",
                "--size",
                "48",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert "wrote 6 oct images" in capsys.readouterr().out
    assert len(storage.list_uris(str(out), suffix=".jpeg")) == 6
    assert len(storage.list_uris(str(out / "masks"), suffix=".png")) == 6


@pytest.mark.stack
def test_real_samples_go_to_s3_and_decode(stack):
    from skimage import data

    uris = write_samples("s3://raw/test-samples")
    assert [storage.basename(u) for u in uris] == ["retina.jpg", "microaneurysms.jpg"]
    retina_img = cv2.imdecode(np.frombuffer(storage.read_bytes(uris[0]), np.uint8), cv2.IMREAD_UNCHANGED)
    micro = cv2.imdecode(np.frombuffer(storage.read_bytes(uris[1]), np.uint8), cv2.IMREAD_UNCHANGED)
    assert retina_img.shape == data.retina().shape
    assert micro.shape == data.microaneurysms().shape  # grey stays grey


def test_samples_cli_writes_both_real_images(tmp_path, capsys):
    from components.cli import main

    out = tmp_path / "samples"
    assert main(["data", "samples", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    for name in ("retina.jpg", "microaneurysms.jpg"):
        assert (out / name).stat().st_size > 1000 and name in printed
    assert cv2.imdecode(np.fromfile(out / "retina.jpg", np.uint8), cv2.IMREAD_COLOR).shape[:2] == (1411, 1411)
