"""Report writing: relative links that resolve, escaping, self-contained HTML, publishing to SeaweedFS."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from components.explain.report import (
    Grid,
    ImageEntry,
    Report,
    markdown_summary,
    publish_report,
    report_uri,
    self_contained_html,
    write_report,
)

EVIL = "<script>alert('x')</script>"


def _report() -> Report:
    rng = np.random.default_rng(0)
    img = (rng.random((32, 32, 3)) * 255).astype(np.uint8)
    entries = [
        ImageEntry(image_id=f"{EVIL}_{i}", source=f"s3://raw/{EVIL}_{i}.png", original=img, model_input=img,
                   predicted=1, probabilities=[0.2, 0.8], true_label=i % 2,
                   overlays={"gradcam": img, "gradcam++": img}, metrics={"gradcam": {"deletion_auc": 0.1}})
        for i in range(2)
    ]
    return Report(
        model_name=f"model {EVIL}", model_version="3", run_name="run-1", model_uri="models:/m@champion",
        images_uri="s3://raw/x", class_names=["No DR", f"class {EVIL}"], methods=["gradcam", "gradcam++"],
        cam_layer="backbone/top_conv", score_kind="logits", entries=entries,
        problems=[(f"{EVIL}.jpg", "not a decodable image")],
        feature_maps=[Grid(f"conv1 {EVIL}", img, "32 of 64")], filters=[Grid("kernels", img)],
        summary={"metrics": {"gradcam": {"deletion_auc": 0.1, "pointing_game": None}},
                 "gate": {"metrics": {"x": {"value": 0.1, "op": ">=", "threshold": 0.0, "passed": True}}, "passed": True}},
    )


def _srcs(page: str) -> list[str]:
    return re.findall(r'src="([^"]*)"', page)


def test_every_src_is_relative_and_exists(tmp_path: Path):
    out = write_report(_report(), tmp_path / "r")
    page = (out / "index.html").read_text()
    srcs = _srcs(page)
    assert len(srcs) == 2 * 4 + 2  # per image: input, preprocessed, two overlays; one map grid; one filter grid
    for src in srcs:
        assert not src.startswith(("/", "http", "s3:", "file:")) and ".." not in src
        assert (out / src).is_file(), src
    assert (out / "summary.json").is_file()


def test_user_strings_are_escaped(tmp_path: Path):
    page = (write_report(_report(), tmp_path / "r") / "index.html").read_text()
    assert "<script>" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    md = markdown_summary(_report(), "s3://reports/m/3/run-1")
    assert "<script>" not in md


def test_self_contained_html_inlines_every_image(tmp_path: Path):
    report = _report()
    out = write_report(report, tmp_path / "r")
    page = self_contained_html(report, out)
    srcs = _srcs(page)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)


def test_report_path_parts_are_made_safe():
    assert report_uri("s3://reports", "retina-fundus", "3", "run 1/../x") == "s3://reports/retina-fundus/3/run_1_.._x"


@pytest.mark.stack
def test_report_published_to_seaweedfs_resolves(stack, tmp_path: Path):
    from components.common import storage

    report = _report()
    local = write_report(report, tmp_path / "r")
    uri = publish_report(local, report_uri("s3://reports", report.model_name, report.model_version, "run-1"))
    assert storage.is_published(uri)
    page = storage.read_text(storage.join(uri, "index.html"))
    objects = set(storage.list_uris(uri))
    for src in _srcs(page):
        assert storage.join(uri, src) in objects, src
    assert "&lt;script&gt;" in page and "<script>" not in page
    assert storage.read_json(storage.join(uri, "summary.json"))["model_version"] == "3"
    assert not [u for u in storage.list_uris("s3://reports") if "/_tmp/" in u]


@pytest.mark.stack
def test_report_opens_from_s3_in_a_browser_over_http(stack, tmp_path: Path):
    """What a browser gets for a presigned S3 URL: the page as text/html and the PNGs as image/png, so the
    report renders from the bucket (an octet-stream page would be downloaded, not shown)."""
    import urllib.request

    from components.common import storage

    report = _report()
    uri = publish_report(write_report(report, tmp_path / "r"), "s3://reports/m/3/http-run")
    page_src = _srcs(storage.read_text(storage.join(uri, "index.html")))[0]
    for rel, kind in (("index.html", "text/html"), (page_src, "image/png")):
        bucket, key = storage.split_s3(storage.join(uri, rel))
        url = storage.s3_client().generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key},
                                                         ExpiresIn=60)
        with urllib.request.urlopen(url, timeout=10) as response:
            assert response.headers.get_content_type() == kind, (rel, response.headers.get("Content-Type"))
