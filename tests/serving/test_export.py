"""SavedModel export: both signatures, and parity of the TF-op preprocessing with the OpenCV pipeline."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.serving.conftest import (
    FUNDUS_CLASSES,
    IMAGE_SIZE,
    build_tiny_model,
    encode,
    fundus_images,
    model_info,
)

pytestmark = pytest.mark.slow

# Documented tolerances (serving/tf_preprocess.py): model outputs of the two paths agree within 0.02;
# preprocessed images within PSNR >= 30 dB (typically 38-47 dB; the gap is resize/blur rounding).
MAX_PROBABILITY_GAP = 0.02
MIN_PSNR_DB = 30.0


def _numpy_path(data: bytes, info: dict) -> np.ndarray:
    """What training saw: the project's decode (reduced DCT) + ops.preprocess_image, as float [0, 1]."""
    from components.preprocess.decode import decode_image
    from components.preprocess.ops import PreprocessParams, preprocess_image

    params = PreprocessParams.from_dict(info["preprocessing"])
    image = decode_image(data, "parity", target_size=params.image_size, color=params.modality == "fundus")
    out = preprocess_image(image, params).image
    if out.ndim == 2:
        out = np.repeat(out[..., None], 3, axis=2)
    return out


def test_both_signatures_agree_on_real_and_synthetic_fundus(export_cache, tiny_models):
    import tensorflow as tf

    from components.preprocess.ops import psnr
    from serving.tf_preprocess import make_preprocess_fn

    info = tiny_models[1][1]
    loaded = tf.saved_model.load(str(export_cache[1]))
    preprocess = make_preprocess_fn("fundus", info["preprocessing"], IMAGE_SIZE)
    images = fundus_images()
    reference = {name: _numpy_path(data, info) for name, data in images.items()}
    tensor_out = loaded.signatures["serving_default"](
        images=tf.constant(np.stack(list(reference.values())) / 255.0, tf.float32))
    bytes_out = loaded.signatures["predict_image"](image_bytes=tf.constant(list(images.values())))
    p_tensor, p_bytes = tensor_out["probabilities"].numpy(), bytes_out["probabilities"].numpy()
    assert p_tensor.shape == (len(images), len(FUNDUS_CLASSES))
    gap = np.abs(p_tensor - p_bytes).max()
    assert gap <= MAX_PROBABILITY_GAP, f"max |Δp| {gap:.4f}"
    # the model tells these images apart by far more than the two paths differ: agreement is not trivial
    spread = np.abs(p_tensor - p_tensor.mean(axis=0)).max()
    assert spread > 5 * gap, f"spread {spread:.4f} vs gap {gap:.4f}"
    for name, data in images.items():
        served = np.round(preprocess(tf.constant(data)).numpy() * 255).astype(np.uint8)
        assert psnr(reference[name], served) >= MIN_PSNR_DB, name
    names = bytes_out["class_names"].numpy()
    assert names.shape == (len(images), len(FUNDUS_CLASSES))
    assert [n.decode() for n in names[0]] == FUNDUS_CLASSES
    np.testing.assert_array_equal(bytes_out["class_id"].numpy(), p_bytes.argmax(axis=1))


def test_oct_parity_on_synthetic_b_scans(tmp_path):
    import tensorflow as tf

    from infra.local.synthetic import render_oct
    from serving.export import export_saved_model

    info = model_info(modality="oct")
    model = build_tiny_model(num_classes=4, seed=3)
    path = export_saved_model(model, info, tmp_path / "1")
    loaded = tf.saved_model.load(str(path))
    rng = np.random.default_rng(3)
    scans = [encode(render_oct(label, rng, size=256)[0]) for label in range(4)]
    reference = np.stack([_numpy_path(s, info) for s in scans]) / 255.0
    p_tensor = loaded.signatures["serving_default"](images=tf.constant(reference, tf.float32))["probabilities"]
    p_bytes = loaded.signatures["predict_image"](image_bytes=tf.constant(scans))["probabilities"]
    assert np.abs(p_tensor.numpy() - p_bytes.numpy()).max() <= MAX_PROBABILITY_GAP


def test_regression_head_maps_grade_to_class_by_thresholds(tmp_path):
    import tensorflow as tf

    from serving.export import export_saved_model

    model = build_tiny_model(head="regression", seed=4)
    info = model_info(head="regression")
    loaded = tf.saved_model.load(str(export_saved_model(model, info, tmp_path / "1")))
    images = tf.random.stateless_uniform([6, IMAGE_SIZE, IMAGE_SIZE, 3], seed=[1, 2])
    out = loaded.signatures["serving_default"](images=images)
    grade = model(images).numpy()[:, 0]
    expected = np.searchsorted(np.array(info["thresholds"]), grade, side="right")
    np.testing.assert_array_equal(out["class_id"].numpy(), expected)
    np.testing.assert_allclose(out["grade"].numpy(), grade, atol=1e-5)
    probabilities = out["probabilities"].numpy()
    np.testing.assert_array_equal(probabilities.argmax(axis=1), expected)
    np.testing.assert_array_equal(probabilities.sum(axis=1), np.ones(6))  # one-hot


def test_export_writes_metadata_and_classify_signature(export_cache):
    from tensorflow.core.protobuf import saved_model_pb2

    path = export_cache[1]
    assert (path / "assets" / "class_names.txt").read_text().split("\n")[:5] == FUNDUS_CLASSES
    assert json.loads((path / "assets.extra" / "retina_model.json").read_text())["class_names"] == FUNDUS_CLASSES
    saved = saved_model_pb2.SavedModel()
    saved.ParseFromString((path / "saved_model.pb").read_bytes())
    signatures = saved.meta_graphs[0].signature_def
    assert signatures["classify"].method_name == "tensorflow/serving/classify"
    assert signatures["serving_default"].method_name == "tensorflow/serving/predict"
    assert set(signatures["predict_image"].inputs) == {"image_bytes"}
    assert {"probabilities", "class_id", "class_names"} <= set(signatures["predict_image"].outputs)


def test_export_loads_as_tf_serving_loads_it_and_replays_its_warmup_records(export_cache):
    """A session load (TF Serving's way: restore op + run by tensor names) must find every variable the
    signatures read, and the warmup file export writes must run on it — as `--enable_model_warmup` does."""
    from serving import inference
    from serving.servable import LoadedVersion, load_session, read_warmup_records

    path = export_cache[1]
    session, meta_graph = load_session(path)
    version = LoadedVersion("m", 1, path, session, meta_graph)
    records = read_warmup_records(path)
    try:
        kinds = sorted(r.WhichOneof("log_type") for r in records)
        assert kinds == ["classify_log", "predict_log", "predict_log"]
        assert inference.replay_warmup(version, records, 1, 1 << 30) == 3
    finally:
        version.close()


def test_export_refuses_to_overwrite_and_nlm_oct(export_cache, tiny_models, tmp_path):
    from components.common.errors import RetinaError
    from serving.export import export_saved_model

    model, info = tiny_models[1]
    with pytest.raises(RetinaError, match="overwrite"):
        export_saved_model(model, info, export_cache[1])
    oct_info = model_info(modality="oct")
    oct_info["preprocessing"]["denoise"] = "nlm"
    with pytest.raises(RetinaError, match="non-local-means"):
        export_saved_model(build_tiny_model(num_classes=4), oct_info, tmp_path / "1")
