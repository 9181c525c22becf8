"""CAM family: localisation on planted lesions, batch safety, nested/Sequential models, any target class."""

from __future__ import annotations

import numpy as np
import pytest

from tests.explain.conftest import planted_lesions

pytestmark = pytest.mark.slow

GRADIENT_METHODS = ("gradcam", "gradcam++", "hirescam", "layercam")


def test_gradcam_peak_lands_in_planted_lesion(trained_model):
    from components.explain.cam import GradCAM
    from components.explain.faithfulness import pointing_game

    images, labels, masks = planted_lesions(40, seed=123, positive_fraction=1.0)
    result = GradCAM(trained_model)(images, targets=labels)
    scores = pointing_game(result.cams, masks)
    hit_rate = float(np.nanmean(scores["pointing_hit"]))
    chance = float(np.nanmean(scores["mask_fraction"]))
    assert chance < 0.05
    assert hit_rate >= 0.8, f"pointing game {hit_rate:.2f} (chance {chance:.3f})"
    assert float(np.nanmean(scores["energy_in_mask"])) > 1.5 * chance  # maps are diffuse; the peak is what counts


@pytest.mark.parametrize("method", ["hirescam", "layercam", "scorecam"])
def test_other_methods_point_at_lesion_well_above_chance(trained_model, method):
    from components.explain.cam import METHODS
    from components.explain.faithfulness import pointing_game

    images, labels, masks = planted_lesions(16, seed=321, positive_fraction=1.0)
    result = METHODS[method](trained_model)(images, targets=labels)
    scores = pointing_game(result.cams, masks)
    assert float(np.nanmean(scores["pointing_hit"])) >= 0.6
    assert float(np.nanmean(scores["pointing_hit"])) > 10 * float(np.nanmean(scores["mask_fraction"]))


def test_gradcam_plus_plus_follows_the_closed_form():
    """Grad-CAM++ is checked against the paper's formula in numpy (on a global-max-pooled model its
    weights tend to 1/sum(A) per channel, so it is not part of the pointing-game tests)."""
    import tensorflow as tf

    from components.explain.cam import GradCAMPlusPlus

    rng = np.random.default_rng(0)
    a = np.maximum(rng.standard_normal((2, 5, 5, 4)), 0).astype(np.float32)
    g = (0.3 * rng.standard_normal((2, 5, 5, 4))).astype(np.float32)
    g2, g3 = g**2, g**3
    denom = 2 * g2 + a.sum(axis=(1, 2), keepdims=True) * g3
    alpha = np.where(np.abs(denom) > 1e-7, g2 / np.where(denom == 0, 1, denom), g2)
    weights = (alpha * np.maximum(g, 0)).sum(axis=(1, 2), keepdims=True)
    expected = np.maximum((weights * a).sum(-1), 0)
    got = GradCAMPlusPlus.weigh(None, tf.constant(a), tf.constant(g)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("method", GRADIENT_METHODS + ("scorecam",))
def test_batched_and_per_image_results_agree(trained_model, method):
    from components.explain.cam import METHODS

    images, _, _ = planted_lesions(6, seed=5)
    cam = METHODS[method](trained_model)
    batched = cam(images, batch_size=6)
    single = [cam(images[i : i + 1]) for i in range(len(images))]
    np.testing.assert_allclose(batched.cams, np.concatenate([s.cams for s in single]), atol=2e-4)
    np.testing.assert_array_equal(batched.targets, np.concatenate([s.targets for s in single]))


def test_batch_mixing_would_change_maps(trained_model):
    """The Keras-example reduction (mean over the batch axis) gives other maps than ours: the test above is not vacuous."""
    import tensorflow as tf

    from components.explain.cam import CamProbe, GradCAM, upsample_and_normalize

    images, _, _ = planted_lesions(6, seed=5, positive_fraction=0.5)
    probe = CamProbe(trained_model)
    acts, grads, _, _ = probe.activations_and_gradients(images)
    mixed_weights = tf.reduce_mean(grads, axis=(0, 1, 2))
    mixed = upsample_and_normalize(tf.nn.relu(tf.reduce_sum(acts * mixed_weights, -1)), images.shape[1:3])
    ours = GradCAM(probe=probe)(images).cams
    assert np.abs(mixed - ours).max() > 0.1


def test_gradients_are_taken_on_logits_not_probabilities(trained_model):
    from components.explain.cam import CamProbe

    probe = CamProbe(trained_model)
    images, _, _ = planted_lesions(4, seed=2)
    assert probe.score_kind == "logits"
    _, scores = probe.probe(images)
    logits_layer = trained_model.get_layer("logits")
    import keras

    reference = keras.Model(trained_model.inputs, logits_layer.output)(images)
    np.testing.assert_allclose(np.asarray(scores), np.asarray(reference), rtol=1e-5, atol=1e-5)


def test_classifier_wrapped_in_an_outer_model_still_gives_logits_and_finds_the_lesion(trained_model):
    """A softmax inside a nested model (a classifier behind a Rescaling wrapper) is still skipped: with
    gradients of a saturated softmax the maps would go flat and miss the lesion."""
    import keras

    from components.explain.cam import GradCAM
    from components.explain.faithfulness import pointing_game

    inputs = keras.Input(trained_model.inputs[0].shape[1:])
    wrapped = keras.Model(inputs, trained_model(keras.layers.Rescaling(1.0)(inputs)), name="wrapped")
    images, labels, masks = planted_lesions(16, seed=124, positive_fraction=1.0)
    cam = GradCAM(wrapped)
    assert cam.probe.score_kind == "logits" and cam.probe.layer.endswith("/conv4")
    inner = GradCAM(trained_model)(images, targets=labels).cams
    outer = cam(images, targets=labels).cams
    np.testing.assert_allclose(outer, inner, atol=1e-4)
    assert float(np.nanmean(pointing_game(outer, masks)["pointing_hit"])) >= 0.8


def test_any_target_class_can_be_explained(trained_model):
    from components.explain.cam import GradCAM

    images, _, _ = planted_lesions(4, seed=11, positive_fraction=1.0)
    cam = GradCAM(trained_model)
    lesion = cam(images, targets=[1, 1, 1, 1])
    background = cam(images, targets=[0, 0, 0, 0])
    assert list(lesion.targets) == [1, 1, 1, 1] and list(background.targets) == [0, 0, 0, 0]
    assert np.abs(lesion.cams - background.cams).mean() > 0.05
    default = cam(images)
    np.testing.assert_array_equal(default.targets, default.probabilities.argmax(-1))


def test_randomized_weights_change_the_cam(trained_model):
    from components.explain.cam import GradCAM
    from components.explain.faithfulness import randomization_check, randomized_clone

    images, labels, _ = planted_lesions(8, seed=17, positive_fraction=1.0)
    trained = GradCAM(trained_model)(images, targets=labels).cams
    clone = randomized_clone(trained_model, seed=3)
    assert not np.allclose(clone.get_layer("conv4").kernel.numpy(), trained_model.get_layer("conv4").kernel.numpy())
    ssim = randomization_check(lambda m, x, t: GradCAM(m)(x, targets=t).cams, trained_model, images, labels, trained)
    same = randomization_check(lambda m, x, t: trained, trained_model, images, labels, trained)
    np.testing.assert_allclose(same, 1.0, atol=1e-6)
    assert float(ssim.mean()) < 0.5


def _tiny_backbone_model(size: int = 48):
    """A keras.applications backbone nested inside a functional model, softmax on top."""
    import keras

    from components.train.models import build_model

    keras.utils.set_random_seed(0)
    return build_model("efficientnetb0", "fundus", size, 5)


def test_nested_backbone_cam_matches_manual_gradient():
    """Surgery reaches inside the nested EfficientNet: the probe's maps equal a hand-written Grad-CAM
    that calls the backbone and the head separately."""
    import keras
    import tensorflow as tf

    from components.explain.cam import GradCAM, upsample_and_normalize

    model = _tiny_backbone_model()
    rng = np.random.default_rng(0)
    images = rng.random((3, 48, 48, 3)).astype(np.float32)
    cam = GradCAM(model)
    assert cam.probe.layer == "efficientnetb0/top_activation"
    assert cam.probe.score_kind == "logits"
    result = cam(images, targets=[0, 2, 4])

    backbone = model.get_layer("efficientnetb0")
    x = model.get_layer("to_0_255")(images)
    with tf.GradientTape() as tape:
        a = backbone(x, training=False)
        tape.watch(a)
        logits = model.get_layer("logits")(model.get_layer("global_avg")(a))
        total = tf.reduce_sum(tf.gather(logits, [0, 2, 4], axis=1, batch_dims=1))
    grads = tape.gradient(total, a)
    manual = upsample_and_normalize(
        tf.nn.relu(tf.reduce_sum(a * tf.reduce_mean(grads, axis=(1, 2), keepdims=True), -1)), (48, 48)
    )
    np.testing.assert_allclose(result.cams, manual, atol=1e-4)
    np.testing.assert_allclose(keras.ops.softmax(result.scores), model(images), atol=1e-5)


def test_inner_layer_of_nested_model_can_be_named():
    from components.explain.cam import GradCAM

    model = _tiny_backbone_model()
    images = np.random.default_rng(1).random((2, 48, 48, 3)).astype(np.float32)
    by_bare_name = GradCAM(model, target_layer="block6a_expand_activation")
    by_path = GradCAM(model, target_layer="efficientnetb0/block6a_expand_activation")
    assert by_bare_name.probe.layer == by_path.probe.layer == "efficientnetb0/block6a_expand_activation"
    np.testing.assert_allclose(by_bare_name(images).cams, by_path(images).cams, atol=1e-6)


def test_sequential_model_with_softmax_dense_uses_its_pre_activation():
    import keras

    from components.explain.cam import LayerCAM

    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((32, 32, 3)),
        keras.layers.Conv2D(8, 3, activation="relu", name="c1"),
        keras.layers.Conv2D(8, 3, name="c2"),
        keras.layers.BatchNormalization(name="bn"),
        keras.layers.Flatten(),
        keras.layers.Dense(3, activation="softmax", name="out"),
    ])
    images = np.random.default_rng(2).random((4, 32, 32, 3)).astype(np.float32)
    cam = LayerCAM(model)
    assert cam.probe.layer == "bn"  # last layer whose output tensor is 4-D (not the last conv)
    assert cam.probe.score_kind == "logits"
    result = cam(images)
    np.testing.assert_allclose(result.probabilities, model(images), atol=1e-5)
    assert result.cams.shape == (4, 32, 32) and result.cams.min() >= 0 and result.cams.max() <= 1


def test_layer_without_spatial_output_is_refused(trained_model):
    from components.common.errors import RetinaError
    from components.explain.cam import GradCAM

    with pytest.raises(RetinaError, match="global_max"):
        GradCAM(trained_model, target_layer="global_max")
    with pytest.raises(RetinaError, match="no layer 'nope'"):
        GradCAM(trained_model, target_layer="nope")


def test_unknown_method_names_the_method():
    from components.common.errors import RetinaError
    from components.explain.cam import parse_methods

    assert parse_methods("gradcam, GradCAM++,gradcam") == ["gradcam", "gradcam++"]
    with pytest.raises(RetinaError, match="smoothcam"):
        parse_methods("gradcam,smoothcam")


def test_default_cam_layer_steps_back_over_the_final_pooling():
    """DeepSense ends conv -> leaky ReLU -> max-pool: the CAM reads the 16x16 activation, not the 8x8 pool."""
    from components.explain.cam import CamProbe
    from components.train.models import build_model

    model = build_model("deepsense", "fundus", 128, 5, width=0.125)
    probe = CamProbe(model)
    assert probe.layer == "block4_leaky_relu2"
    acts, _, _, _ = probe.activations_and_gradients(np.zeros((1, 128, 128, 3), np.float32))
    assert tuple(acts.shape[1:3]) == (16, 16)
