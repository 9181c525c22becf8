"""The report and the batch index opened in headless Chromium, as a clinician would open them.

Screenshots at 1280 px land in the test's output folder (printed; `pytest -s` shows the path); the
checks: every <img> decodes (relative links and inlined data URIs alike), nothing is wider than the
window (as opened and with every <details> expanded), user strings stay text. Skipped only when no
Chromium binary exists (`apt-get install chromium`). TF-free: the report is built from real images
(synthetic eyes of one patient, the real skimage retina) with made-up heatmaps.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.explain.browser import chromium, inspect_page

pytestmark = pytest.mark.skipif(chromium() is None, reason="no chromium binary (apt-get install chromium)")

EVIL = "<img src=x onerror=alert(1)>"
CLASSES = ["No DR", "Mild", "Moderate", "Severe", "Proliferative"]


def _heat(shape: tuple[int, int], y: float, x: float, sigma: float) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * sigma**2)).astype(np.float32)


def clinical_report(size: int = 128, champion: bool = True):
    """A report with every section filled: patient pair, lesion masks, ordinal view, anatomy, feature maps,
    champion comparison, an unreadable file and a user string full of HTML."""
    from skimage import data

    from components.explain.anatomy import anatomy_shares, anatomy_view
    from components.explain.feature_maps import render_maps_grid
    from components.explain.report import Figure, Grid, ImageEntry, Report, overlay, signed_overlay
    from components.preprocess.ops import PreprocessParams, preprocess_image
    from infra.local.synthetic import render_fundus

    params = PreprocessParams(modality="fundus", image_size=size)
    rng = np.random.default_rng(0)
    raw = [("10_left", *render_fundus(3, rng, 320, eye="left")), ("10_right", *render_fundus(2, rng, 320, eye="right")),
           ("retina", data.retina(), None), (EVIL, *render_fundus(1, rng, 320))]
    entries = []
    for k, (image_id, image, mask) in enumerate(raw):
        pre = preprocess_image(image, params, mask=mask)
        lesion = np.argwhere(pre.mask > 0)[0] if pre.mask is not None and pre.mask.any() else (size // 2, size // 2)
        cams = {"gradcam": _heat((size, size), *lesion, size / 10), "layercam": _heat((size, size), *lesion, size / 16)}
        probs = np.exp(rng.normal(size=5))
        probs /= probs.sum()
        signed = _heat((size, size), *lesion, size / 10) - _heat((size, size), size / 3, size / 3, size / 8)
        shares = anatomy_shares(pre.image, cams, "fundus")
        entries.append(ImageEntry(
            image_id=image_id, source=f"s3://raw/new/{image_id}.jpeg", original=image[::4, ::4], model_input=pre.image,
            predicted=int(probs.argmax()), probabilities=probs.tolist(), true_label=k % 5,
            overlays={m: overlay(pre.image, c) for m, c in cams.items()},
            metrics={"gradcam": {"deletion_auc": 0.12, "insertion_auc": 0.61}}, mask=pre.mask,
            ordinal=[Figure("grade 2 vs 1", signed_overlay(pre.image, signed), "red pushes up")],
            anatomy={m: {"mass": s.mass, "area": s.area} for m, s in shares.items()},
            anatomy_view=anatomy_view(pre.image, "fundus"),
            feature_maps=[Figure(f"conv{j} {EVIL if j == 0 else ''}", render_maps_grid(rng.random((16, 16, 32)), 32),
                                 "32 of 64 channels") for j in range(4)],
            champion_overlays={"gradcam": overlay(pre.image, _heat((size, size), size / 2, size / 2, size / 6))} if champion else {},
            champion_ssim={"gradcam": 0.41} if champion else {}, champion_predicted=1 if champion else None,
        ))
    summary = {
        "metrics": {"gradcam": {"deletion_auc": 0.12, "insertion_auc": 0.61, "insertion_minus_deletion": 0.49,
                                "pointing_game": 0.75, "mask_fraction": 0.04, "randomization_ssim": 0.2,
                                "outside_retina_share": 0.01},
                    "layercam": {"deletion_auc": 0.15, "insertion_auc": 0.55, "insertion_minus_deletion": 0.4}},
        "gate": {"metrics": {"randomization_ssim": {"value": 0.2, "op": "<=", "threshold": 0.5, "passed": True},
                             "outside_retina_share": {"value": 0.01, "op": "<=", "threshold": 0.2, "passed": True}},
                 "passed": True},
        "anatomy": {"gradcam": {"mass": {"optic_disc": 0.1, "vessels": 0.2, "outside_fov": 0.01},
                                "area": {"optic_disc": 0.02, "vessels": 0.08, "outside_fov": 0.3}, "flagged": 0}},
        "anatomy_limit": 0.2, "champion_ssim": 0.41 if champion else None,
    }
    return Report(
        model_name="retina-fundus", model_version="7", run_name=f"run {EVIL}", model_uri="models:/retina-fundus/7",
        images_uri="s3://raw/new", class_names=CLASSES, methods=["gradcam", "layercam"], cam_layer="conv4",
        score_kind="logits", entries=entries, problems=[(f"{EVIL}.jpg", "not a decodable image")],
        filters=[Grid("conv1 kernels", render_maps_grid(rng.random((3, 3, 16)), 24))], summary=summary,
        modality="fundus", champion_uri="models:/retina-fundus/6" if champion else "",
    )


def _check(result: dict, what: str, images: bool = True) -> None:
    assert (result["images"] > 0) == images, what
    assert result["broken"] == [], (what, result["broken"])
    for state in ("closed", "opened"):
        assert result[state]["scroll"] <= 1280, (what, state, result)
    assert result["wide"] == [], (what, result["wide"])


def test_report_renders_in_chromium_without_broken_images_or_horizontal_scroll(tmp_path: Path):
    from components.explain.report import self_contained_html, write_report

    report = clinical_report()
    out = write_report(report, tmp_path / "report")
    page = (out / "index.html").read_text()
    assert "<img src=x" not in page and "&lt;img src=x onerror=alert(1)&gt;" in page
    assert page.count("<details>") >= 4 * 4  # feature maps of every conv layer for every image
    assert "Patient 10: right and left eye" in page
    assert page.index("10_right") < page.index("10_left")  # right eye first, side by side
    result = inspect_page(out / "index.html", tmp_path / "report-1280.png")
    print(f"\nreport screenshot: {tmp_path / 'report-1280.png'}")
    _check(result, "relative links")
    # every PNG is shown; the challenger's overlay a second time beside the champion's (4 images)
    assert result["images"] == len(list(out.rglob("*.png"))) + 4
    inline = tmp_path / "kfp" / "artifact.html"
    inline.parent.mkdir()
    inline.write_text(self_contained_html(report, out), encoding="utf-8")
    _check(inspect_page(inline, tmp_path / "kfp-artifact-1280.png"), "self-contained")


def test_every_section_a_clinician_needs_is_there(tmp_path: Path):
    from components.explain.report import METRIC_MEANINGS, write_report

    out = write_report(clinical_report(), tmp_path / "r")
    page = (out / "index.html").read_text()
    names = {p.name for p in out.rglob("*.png")}
    assert sum(n.endswith("_lesions.png") for n in names) == 3  # retina.jpg has no mask
    assert sum("_champion_" in n for n in names) == 4
    assert sum(n.endswith("_ordinal0.png") for n in names) == 4
    assert len(list((out / "feature_maps").glob("*.png"))) == 16
    for section in ("Gate", "Faithfulness", "Where the heat is", "Images that could not be read", "Filters"):
        assert f"<h2>{section}" in page, section
    for metric in ("deletion_auc", "randomization_ssim", "outside_retina_share", "pointing_game"):
        assert METRIC_MEANINGS[metric] .replace("'", "&#x27;") in page, metric
    assert "class=bars" in page and "SSIM 0.410" in page
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"][0]["champion_ssim"] == {"gradcam": 0.41}
    assert set(summary["images"][0]["anatomy"]["gradcam"]["mass"]) == {"optic_disc", "vessels", "outside_fov"}


def test_patient_pairs_only_when_both_eyes_are_there():
    from components.explain.report import ImageEntry, patient_groups

    img = np.zeros((4, 4, 3), np.uint8)

    def entry(name: str) -> ImageEntry:
        return ImageEntry(name, name, img, img, 0, [1.0])

    entries = [entry(n) for n in ("3_left", "7_left", "x", "3_right", "12_right")]
    assert patient_groups(entries) == [[3, 0], [1], [2], [4]]


def test_batch_index_links_every_shard_relatively_and_aggregates_all_of_them(tmp_path: Path):
    """The index over shard reports, from a folder as it lies on S3 (or a local copy of it)."""
    import re

    from components.explain.report import write_report
    from pipelines.batch import write_batch_index

    root = tmp_path / "reports" / "retina-fundus" / "7"
    uris = []
    for k in range(2):
        report = clinical_report(champion=False)
        report.entries[0].metrics = {"gradcam": {"deletion_auc": 0.1 * (k + 1), "insertion_auc": 0.6, "pointing_hit": 1.0 - k}}
        write_report(report, root / f"batch-shard-0000{k}")
        uris.append(str(root / f"batch-shard-0000{k}"))
    uris.append(str(root / "batch-shard-00002"))  # a shard whose explain step never published
    artifact = tmp_path / "kfp" / "index.html"
    out = Path(write_batch_index(uris, [1.0, 0.0, -1.0], str(root / "batch"), "Batch <explanation>",
                                 html_path=str(artifact)))
    page = (out / "index.html").read_text()
    hrefs = re.findall(r'href="([^"]+)"', page)
    assert hrefs == [f"../batch-shard-0000{k}/index.html" for k in range(3)]
    assert all((out / h).resolve().is_file() for h in hrefs[:2]) and "report missing" in page
    assert "s3://" not in page and "n/a" not in page and "<explanation>" not in page
    summary = json.loads((out / "summary.json").read_text())
    agg = summary["aggregate"]
    assert agg["num_images"] == 8 and agg["unreadable"] == 2 and agg["missing_shards"] == 1
    # Pooled per image: 4 images per shard, the first carries deletion 0.1 / 0.2, the rest 0.12.
    assert agg["metrics"]["gradcam"]["deletion_auc"] == pytest.approx((0.1 + 0.2 + 6 * 0.12) / 8)
    assert agg["metrics"]["gradcam"]["pointing_game"] == pytest.approx(0.5)
    assert agg["gate_passed"] is False  # a missing report is no pass
    print(f"\nindex screenshots: {tmp_path}")
    _check(inspect_page(out / "index.html", tmp_path / "index-1280.png", height=1400), "index", images=False)
    _check(inspect_page(artifact, tmp_path / "index-kfp-1280.png", height=1400), "index artifact", images=False)
    assert "batch-shard-00001/index.html" in artifact.read_text()
