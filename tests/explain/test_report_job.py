"""The explanation job's own report, end to end: every clinical view filled from a real model, opened in Chromium.

A trained planted-lesion CNN explains a folder with lesion masks, the real skimage retina and both eyes
of one EyePACS-named patient; a second model (another seed) plays the champion. Slow: TensorFlow.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.explain.browser import chromium, inspect_page

pytestmark = pytest.mark.slow

FAST = {"methods": "gradcam,layercam", "filter_count": 2, "filter_steps": 2, "faithfulness_steps": 4,
        "maps_per_layer": 32, "progress": False}


@pytest.fixture(scope="module")
def patient_folder(planted_folder, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("patient")
    shutil.copytree(planted_folder, root, dirs_exist_ok=True)
    for eye, src in (("left", "lesion_0"), ("right", "lesion_1")):
        shutil.copy(root / f"{src}.png", root / f"10_{eye}.png")
        shutil.copy(root / "masks" / f"{src}.png", root / "masks" / f"10_{eye}.png")
    return root


@pytest.fixture(scope="module")
def champion_dir(trained_model_dir, tmp_path_factory) -> Path:
    from tests.explain.conftest import small_cnn

    out = tmp_path_factory.mktemp("champion") / "model"
    shutil.copytree(trained_model_dir, out)
    small_cnn(seed=5).save(str(out / "model.keras"))  # untrained: looks elsewhere
    return out


def test_job_report_has_every_clinical_view_and_renders(trained_model_dir, champion_dir, patient_folder, tmp_path):
    from components.explain.explanation import explain_images

    result = explain_images(str(trained_model_dir), str(patient_folder), str(tmp_path / "reports"), run_name="job",
                            champion=str(champion_dir), max_images=12, **FAST)
    out = Path(result.report_uri)
    summary = json.loads((out / "summary.json").read_text())
    n = summary["num_images"]
    assert n == 10  # 6 planted + 2 eyes + retina.jpg + the HTML-named one
    assert summary["gate"]["metrics"]["outside_retina_share"]["value"] is not None
    assert set(summary["anatomy"]["gradcam"]["mass"]) == {"optic_disc", "vessels", "outside_fov"}
    assert 0 <= summary["champion_ssim"] <= 1
    assert all("champion_ssim" in im for im in summary["images"])
    maps = list((out / "feature_maps").glob("*.png"))
    assert len(maps) == n * 4  # four conv layers, every image
    assert len(list((out / "images").glob("*_lesions.png"))) == 8  # the images with a mask
    page = (out / "index.html").read_text()
    assert "Patient 10: right and left eye" in page and "<script>" not in page
    assert not list((out / "images").glob("*_ordinal0.png"))  # two classes: no ordinal view (DR grades only)
    if chromium() is None:
        pytest.skip("no chromium binary (apt-get install chromium): page not opened")
    res = inspect_page(out / "index.html", tmp_path / "job-report-1280.png")
    print(f"\njob report screenshot: {tmp_path / 'job-report-1280.png'}")
    assert res["broken"] == [] and res["closed"]["scroll"] <= 1280 and res["opened"]["scroll"] <= 1280, res


def test_ordinal_view_of_a_five_grade_model_is_signed_and_follows_the_grades():
    """Grad-CAM is linear in the score before its ReLU: the ordinal map equals CAM(k) - CAM(k-1) computed apart."""
    import tensorflow as tf

    from components.explain.cam import CamProbe
    from components.explain.clinical import ordinal_maps
    from tests.explain.conftest import planted_lesions, small_cnn

    model = small_cnn(num_classes=5, seed=3)
    x, _, _ = planted_lesions(3, seed=4, positive_fraction=1.0)
    predicted = np.array([0, 2, 4])
    signed, lower = ordinal_maps(model, x, predicted, "conv4", regression=False)
    assert lower.tolist() == [0, 1, 3] and signed.shape == (3, 64, 64)
    assert signed.min() < 0 < signed.max() and np.abs(signed).max() == pytest.approx(1.0)
    probe = CamProbe(model, "conv4")

    def raw_cam(k: int, i: int) -> np.ndarray:
        with tf.GradientTape() as tape:
            acts, scores = probe.probe(x[i : i + 1])
            score = scores[0, k]
        g = tape.gradient(score, acts[0])
        cam = tf.reduce_sum(tf.reduce_mean(g, axis=(1, 2), keepdims=True) * acts[0], axis=-1)[..., None]
        return tf.image.resize(cam, (64, 64), method="bilinear")[0, ..., 0].numpy()

    for i, k in enumerate([1, 2, 4]):
        diff = raw_cam(k, i) - raw_cam(k - 1, i)
        np.testing.assert_allclose(signed[i], diff / np.abs(diff).max(), atol=1e-4)


def test_ordinal_view_of_a_regression_head_is_the_gradient_of_the_grade():
    import keras

    from components.explain.clinical import ordinal_maps
    from tests.explain.conftest import planted_lesions

    keras.utils.set_random_seed(1)
    inputs = keras.Input((64, 64, 3))
    h = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv")(inputs)
    grade = keras.layers.Dense(1, name="grade")(keras.layers.GlobalAveragePooling2D()(h))
    model = keras.Model(inputs, grade)
    x, _, _ = planted_lesions(2, seed=2, positive_fraction=1.0)
    signed, _ = ordinal_maps(model, x, np.array([3, 0]), "conv", regression=True)
    assert signed.shape == (2, 64, 64) and np.isfinite(signed).all()
    assert np.abs(signed).max() == pytest.approx(1.0)
