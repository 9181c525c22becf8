"""The batch job end to end: raw folders, preprocessed TFRecords, S3 reports, CLI and KFP component."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow

FAST = {"methods": "gradcam,layercam", "filter_count": 2, "filter_steps": 2, "faithfulness_steps": 4,
        "maps_per_layer": 4, "progress": False}


def _srcs(page: str) -> list[str]:
    return re.findall(r'src="([^"]*)"', page)


def test_folder_with_masks_broken_and_html_named_files(trained_model_dir, planted_folder, tmp_path):
    from components.explain.explanation import explain_images

    result = explain_images(str(trained_model_dir), str(planted_folder), str(tmp_path / "reports"),
                            run_name="r1", html_path=str(tmp_path / "kfp.html"), markdown_path=str(tmp_path / "s.md"),
                            **FAST)
    out = Path(result.report_uri)
    assert out == tmp_path / "reports" / "planted_cnn" / "run-01234567" / "r1"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_images"] == 8  # 6 planted + retina.jpg + the HTML-named one
    assert [u["name"] for u in summary["unreadable"]] == ["broken.jpg"]
    assert 0.6 <= result.pointing_game <= 1.0  # masks found at masks/<id>.png and used
    assert summary["gate"]["metrics"]["randomization_ssim"]["value"] is not None
    page = (out / "index.html").read_text()
    assert "&lt;script&gt;alert(1)&lt;.png" in page and "<script>" not in page
    assert "broken.jpg" in page
    for src in _srcs(page):
        assert (out / src).is_file(), src
    inline = (tmp_path / "kfp.html").read_text()
    assert all(s.startswith("data:image/png;base64,") for s in _srcs(inline))
    assert "gradcam" in (tmp_path / "s.md").read_text()


def test_only_unreadable_images_still_give_a_report_listing_them(trained_model_dir, tmp_path):
    """A shard of only rejected images must not fail the batch: its report lists each with the reason."""
    from components.explain.explanation import explain_images

    images = tmp_path / "images"
    images.mkdir()
    (images / "truncated.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (images / "empty.png").write_bytes(b"")
    result = explain_images(str(trained_model_dir), str(images), str(tmp_path / "reports"), run_name="bad", **FAST)
    out = Path(result.report_uri)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_images"] == 0
    assert sorted(u["name"] for u in summary["unreadable"]) == ["empty.png", "truncated.jpg"]
    assert all(u["reason"] for u in summary["unreadable"])
    assert result.pointing_game == -1.0
    page = (out / "index.html").read_text()
    assert "truncated.jpg" in page and "empty.png" in page
    assert (out / "_SUCCESS").exists()


def test_any_keras_file_without_metadata_is_resized(trained_model, planted_folder, tmp_path):
    from components.explain.explanation import explain_images

    model_file = tmp_path / "any_model.keras"
    trained_model.save(str(model_file))
    result = explain_images(str(model_file), str(planted_folder), str(tmp_path / "reports"), max_images=2,
                            run_name="r", **FAST)
    assert result.report_uri.endswith("planted_cnn/local/r") or result.report_uri.endswith("any_model/local/r")
    assert json.loads((Path(result.report_uri) / "summary.json").read_text())["num_images"] == 2


def _write_tfrecord_dataset(root: Path, n: int = 4) -> None:
    """A preprocessed dataset as INTERFACES describes it: gzip shards, PNG image + mask features, manifest."""
    import tensorflow as tf

    from infra.local.synthetic import encode_png
    from tests.explain.conftest import planted_lesions

    images, labels, masks = planted_lesions(n, seed=3, positive_fraction=1.0)
    (root / "test").mkdir(parents=True)
    shard = "test/test-00000-of-00001.tfrecord.gz"

    def b(v: bytes):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v]))

    with tf.io.TFRecordWriter(str(root / shard), options="GZIP") as w:
        for i in range(n):
            feat = {"image": b(encode_png((images[i] * 255).astype(np.uint8))), "mask": b(encode_png(masks[i])),
                    "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(labels[i])])),
                    "image_id": b(f"img{i}".encode()), "patient_id": b(f"p{i}".encode()), "modality": b(b"fundus")}
            w.write(tf.train.Example(features=tf.train.Features(feature=feat)).SerializeToString())
    manifest = {"modality": "fundus", "image_size": 64, "class_names": ["a", "b"],
                "splits": {"test": {"count": n, "per_class": {}, "shards": [shard]}}, "parameters": {}}
    (root / "manifest.json").write_text(json.dumps(manifest))


def test_preprocessed_tfrecord_dataset_with_mask_feature(trained_model_dir, tmp_path):
    from components.explain.explanation import explain_images

    data = tmp_path / "data"
    _write_tfrecord_dataset(data)
    result = explain_images(str(trained_model_dir), str(data), str(tmp_path / "reports"), run_name="tf", **FAST)
    summary = result.summary
    assert summary["num_images"] == 4 and [i["true_label"] for i in summary["images"]] == [1, 1, 1, 1]
    assert result.pointing_game >= 0.75


def _write_labelled_shards(root: Path, labels: list[int | None], class_names: list[str], bad: tuple[int, ...] = ()) -> None:
    """A preprocessed dataset whose test shard holds `labels` in this order (class-sorted, as writers leave it)."""
    import tensorflow as tf

    from infra.local.synthetic import encode_png

    (root / "test").mkdir(parents=True)
    shard = "test/test-00000-of-00001.tfrecord.gz"
    image = encode_png(np.full((8, 8, 3), 128, np.uint8))
    with tf.io.TFRecordWriter(str(root / shard), options="GZIP") as w:
        for i, label in enumerate(labels):
            data = b"not a png" if i in bad else image
            feat = {"image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[data])),
                    "image_id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[f"img{i}".encode()]))}
            if label is not None:
                feat["label"] = tf.train.Feature(int64_list=tf.train.Int64List(value=[label]))
            w.write(tf.train.Example(features=tf.train.Features(feature=feat)).SerializeToString())
    manifest = {"modality": "oct", "image_size": 8, "class_names": class_names,
                "splits": {"test": {"count": len(labels), "per_class": {}, "shards": [shard]}}, "parameters": {}}
    (root / "manifest.json").write_text(json.dumps(manifest))


def test_images_from_a_class_sorted_dataset_are_class_balanced(tmp_path):
    """The explain gate averages its metrics over the images it reads: from a shard sorted by class, the first
    N would be one class. They are dealt one class at a time, in reading order, within a bounded look."""
    from components.explain.inputs import SCAN_MIN, read_inputs

    names = ["NORMAL", "CNV", "DME", "DRUSEN"]
    _write_labelled_shards(tmp_path / "sorted", [c for c in range(4) for _ in range(10)], names)
    images, problems = read_inputs(str(tmp_path / "sorted"), None, 8, max_images=8, progress=False)
    assert not problems
    assert [i.label for i in images] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert [i.image_id for i in images] == ["img0", "img1", "img10", "img11", "img20", "img21", "img30", "img31"]
    six = read_inputs(str(tmp_path / "sorted"), None, 8, max_images=6, progress=False)[0]
    assert [i.label for i in six] == [0, 0, 1, 1, 2, 3]  # dealt 0, 1, 2, 3, 0, 1; shown in reading order
    # a rare class gives what it has; the others fill the rest
    _write_labelled_shards(tmp_path / "rare", [0] * 12 + [1] + [2] * 12, names[:3])
    rare = read_inputs(str(tmp_path / "rare"), None, 8, max_images=7, progress=False)[0]
    assert sorted(i.label for i in rare) == [0, 0, 0, 1, 2, 2, 2]
    # the look is bounded: a class first met after the budget is not read
    _write_labelled_shards(tmp_path / "long", [0] * (SCAN_MIN + 5) + [1] * 3, names[:2])
    assert {i.label for i in read_inputs(str(tmp_path / "long"), None, 8, max_images=4, progress=False)[0]} == {0}
    # an unreadable record is listed and the next one in the dealing order takes its place
    _write_labelled_shards(tmp_path / "bad", [c for c in range(3) for _ in range(4)], names[:3], bad=(4,))
    images, problems = read_inputs(str(tmp_path / "bad"), None, 8, max_images=6, progress=False)
    assert [p[0] for p in problems] == ["img4"]
    assert [i.image_id for i in images] == ["img0", "img1", "img2", "img5", "img8", "img9"]
    # unlabelled records: the first N, as before
    _write_labelled_shards(tmp_path / "unlabelled", [None] * 9, [])
    plain = read_inputs(str(tmp_path / "unlabelled"), None, 8, max_images=5, progress=False)[0]
    assert [i.image_id for i in plain] == [f"img{i}" for i in range(5)]


@pytest.mark.stack
def test_report_on_seaweedfs_every_src_resolves(stack, trained_model_dir, planted_folder):
    from components.common import storage
    from components.explain.explanation import explain_images

    storage.upload_dir(planted_folder, "s3://raw/planted")
    result = explain_images(str(trained_model_dir), "s3://raw/planted", "s3://reports", max_images=3,
                            run_name="s3run", **FAST)
    assert result.report_uri == "s3://reports/planted_cnn/run-01234567/s3run"
    assert storage.is_published(result.report_uri)
    page = storage.read_text(storage.join(result.report_uri, "index.html"))
    objects = set(storage.list_uris(result.report_uri))
    assert _srcs(page)
    for src in _srcs(page):
        assert storage.join(result.report_uri, src) in objects, src


def test_cli_explain(trained_model_dir, planted_folder, tmp_path, capsys):
    from components.cli import main

    rc = main(["explain", "--model", str(trained_model_dir), "--images", str(planted_folder), "--out",
               str(tmp_path / "rep"), "--methods", "gradcam,hirescam", "--max-images", "2", "--filters", "1",
               "--maps-per-layer", "2", "--run-name", "cli", "--json"])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(printed["metrics"]) == {"gradcam", "hirescam"}
    assert (Path(printed["report_uri"]) / "index.html").is_file()
    assert main(["explain", "--model", str(trained_model_dir), "--images", str(planted_folder), "--out",
                 str(tmp_path / "rep"), "--methods", "nope"]) == 2


def test_component_python_func(trained_model_dir, planted_folder, tmp_path):
    from types import SimpleNamespace

    from components.explain.component import explain

    html = SimpleNamespace(path=str(tmp_path / "html" / "report.html"))
    md = SimpleNamespace(path=str(tmp_path / "md" / "summary.md"))
    report_uri, pointing, gate_passed = explain.python_func(
        model_uri=str(trained_model_dir), images_uri=str(planted_folder), reports_uri=str(tmp_path / "reports"),
        html=html, summary=md, methods="gradcam", max_images=3, run_name="unit",
    )
    assert Path(report_uri, "index.html").is_file() and 0.0 <= pointing <= 1.0
    summary = json.loads(Path(report_uri, "summary.json").read_text())
    assert gate_passed is summary["gate"]["passed"]
    assert Path(html.path).read_text().count("data:image/png;base64,") > 3
    assert "gradcam" in Path(md.path).read_text()


def test_component_under_kfp_local_runner(trained_model_dir, planted_folder, tmp_path, kfp_local):
    from components.explain.component import explain

    task = explain(model_uri=str(trained_model_dir), images_uri=str(planted_folder),
                   reports_uri=str(tmp_path / "reports"), methods="gradcam", max_images=2, run_name="kfp")
    assert Path(task.outputs["report_uri"], "index.html").is_file()
    assert -1.0 <= task.outputs["pointing_game"] <= 1.0
    assert isinstance(task.outputs["gate_passed"], bool)
    assert "data:image/png;base64," in Path(task.outputs["html"].path).read_text()


def test_faithfulness_gate_set_by_the_caller_fails_the_cli_after_the_report_is_published(
        trained_model_dir, planted_folder, tmp_path, capsys):
    """An unreachable threshold fails the gate: exit 2 with the failing metric named, report still there."""
    from components.cli import main

    args = ["explain", "--model", str(trained_model_dir), "--images", str(planted_folder), "--out",
            str(tmp_path / "rep"), "--methods", "gradcam", "--max-images", "2", "--filters", "1",
            "--maps-per-layer", "2"]
    assert main([*args, "--run-name", "strict", "--thresholds", "randomization_ssim<=-1", "--fail-on-gate"]) == 2
    err = capsys.readouterr().err
    assert "faithfulness gate" in err and "randomization_ssim" in err and "needs <= -1" in err
    report = tmp_path / "rep" / "planted_cnn" / "run-01234567" / "strict"
    summary = json.loads((report / "summary.json").read_text())
    assert summary["gate"]["passed"] is False
    assert summary["gate"]["metrics"]["randomization_ssim"]["threshold"] == -1.0
    assert (report / "_SUCCESS").exists()

    # The same run with a threshold every model meets passes and exits 0.
    assert main([*args, "--run-name", "lenient", "--thresholds", "randomization_ssim<=1.0", "--fail-on-gate"]) == 0
    assert "faithfulness gate: passed" in capsys.readouterr().out


def test_component_reports_a_failed_gate_and_fails_only_when_asked(trained_model_dir, planted_folder, tmp_path):
    from types import SimpleNamespace

    from components.common.errors import RetinaError
    from components.explain.component import explain

    def run(name: str, fail: bool):
        return explain.python_func(
            model_uri=str(trained_model_dir), images_uri=str(planted_folder), reports_uri=str(tmp_path / "reports"),
            html=SimpleNamespace(path=str(tmp_path / name / "r.html")),
            summary=SimpleNamespace(path=str(tmp_path / name / "s.md")), methods="gradcam", max_images=2,
            run_name=name, thresholds="insertion_minus_deletion>=2", fail_on_gate=fail)

    report_uri, _, gate_passed = run("flag", fail=False)
    assert gate_passed is False  # insertion - deletion AUC lies in [-1, 1]: 2 cannot be met
    assert "Gate: failed" in Path(tmp_path / "flag" / "s.md").read_text()
    with pytest.raises(RetinaError, match="insertion_minus_deletion"):
        run("fail", fail=True)
    assert Path(tmp_path / "reports" / "planted_cnn" / "run-01234567" / "fail" / "index.html").is_file()


def test_model_expecting_raw_pixels_is_explained_like_its_0_1_twin(trained_model, trained_model_dir, planted_folder,
                                                                   tmp_path):
    """A Keras file from elsewhere that takes 0-255 pixels: with --input-range 0-255 it gets the same
    predictions and the same lesion hits as the same network fed [0, 1]; without it, it does not."""
    import keras

    from components.explain.explanation import explain_images

    inputs = keras.Input(trained_model.inputs[0].shape[1:])
    raw_model = keras.Model(inputs, trained_model(keras.layers.Rescaling(1 / 255)(inputs)), name="raw_pixels")
    raw_file = tmp_path / "raw_pixels.keras"
    raw_model.save(str(raw_file))

    kw = {**FAST, "methods": "gradcam", "max_images": 6, "faithfulness_steps": 0, "filter_count": 0}
    twin = explain_images(str(trained_model_dir), str(planted_folder), str(tmp_path / "r"), run_name="twin", **kw)
    raw = explain_images(str(raw_file), str(planted_folder), str(tmp_path / "r"), run_name="raw",
                         input_range="0-255", **kw)
    wrong = explain_images(str(raw_file), str(planted_folder), str(tmp_path / "r"), run_name="wrong", **kw)

    def probs(result):
        return np.array([img["probabilities"] for img in result.summary["images"]])

    np.testing.assert_allclose(probs(raw), probs(twin), atol=1e-5)
    assert raw.pointing_game == pytest.approx(twin.pointing_game)
    assert np.abs(probs(wrong) - probs(twin)).max() > 0.05  # fed [0, 1] it sees a near-black image


@pytest.mark.slow
def test_retina_explain_prints_no_tensorflow_cpp_lines(trained_model_dir, planted_folder, tmp_path):
    """A `retina` command that runs TensorFlow, as a user starts it: its own output only."""
    code = "import sys; from components.cli import main; sys.exit(main(sys.argv[1:]))"
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", code, "explain", "--model", str(trained_model_dir), "--images", str(planted_folder),
         "--out", str(tmp_path / "rep"), "--methods", "gradcam", "--max-images", "1", "--filters", "1",
         "--maps-per-layer", "1", "--run-name", "quiet"],
        capture_output=True, env={**os.environ, "PYTHONPATH": str(root)}, cwd=root, timeout=300)
    assert done.returncode == 0, done.stderr.decode()
    for marker in (b"I0000", b"E0000", b"cudart_stub", b"cuInit", b"absl::InitializeLog"):
        assert marker not in done.stderr, done.stderr.decode()
