"""Each builder gives the contract's input/output shapes and the `probabilities` softmax after the logits."""

import numpy as np
import pytest

from components.common.errors import RetinaError
from components.train.models import build_model, deepsense_blocks


def test_deepsense_depth_follows_input_size():
    assert deepsense_blocks(512) == 6  # last convolutions at 16x16 (lesion-sized cells for the CAMs)
    assert deepsense_blocks(128) == 4
    assert deepsense_blocks(64) == 3
    assert deepsense_blocks(32) == 2
    assert deepsense_blocks(16) == 2
    assert deepsense_blocks(512, final_conv_size=4) == 7


def test_unknown_names_are_user_errors():
    with pytest.raises(RetinaError, match="vgg99"):
        build_model("vgg99", "oct", 64, 4)
    with pytest.raises(RetinaError, match="regression"):
        build_model("oct_cnn", "oct", 64, 4, head="regression")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "modality", "size", "classes"),
    [("deepsense", "fundus", 64, 5), ("oct_cnn", "oct", 48, 4), ("efficientnetb0", "oct", 32, 4),
     ("resnet50", "fundus", 32, 5)],
)
def test_builder_output_shape_and_softmax_head(name, modality, size, classes):
    import keras

    model = build_model(name, modality, size, classes, width=0.25)
    assert tuple(model.input_shape) == (None, size, size, 3)
    probs = np.asarray(model(np.random.default_rng(0).random((2, size, size, 3), dtype=np.float32)))
    assert probs.shape == (2, classes)
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    softmax = model.get_layer("probabilities")
    assert isinstance(softmax, keras.layers.Softmax)
    logits = model.get_layer("logits")
    assert logits.get_config()["activation"] == "linear"
    assert any(isinstance(layer, keras.layers.Conv2D) or isinstance(layer, keras.Model) for layer in model.layers)


@pytest.mark.slow
def test_regression_head_outputs_one_grade_per_image():
    model = build_model("deepsense", "fundus", 48, 5, head="regression", width=0.25)
    out = np.asarray(model(np.zeros((3, 48, 48, 3), np.float32)))
    assert out.shape == (3, 1)


@pytest.mark.slow
def test_backbone_weights_come_from_a_local_file_only(tmp_path):
    with pytest.raises(RetinaError, match="local file"):
        build_model("resnet50", "oct", 32, 4, weights="imagenet")
    # a real weights file made from one backbone loads into a second one
    import keras

    first = keras.applications.EfficientNetB0(include_top=False, weights=None, input_shape=(32, 32, 3))
    path = tmp_path / "effnet.weights.h5"
    first.save_weights(str(path))
    model = build_model("efficientnetb0", "oct", 32, 4, weights=str(path))
    loaded = model.get_layer(first.name).get_layer("stem_conv").get_weights()[0]
    assert np.array_equal(loaded, first.get_layer("stem_conv").get_weights()[0])
