"""Feature maps of every conv layer (nested included) in one pass; filter views."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.slow


def _conv_layers_by_walking(model) -> list[str]:
    """Independent count: walk `.layers` recursively and keep conv types."""
    import keras

    types = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.SeparableConv2D)
    found = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            found += [f"{layer.name}/{p}" for p in _conv_layers_by_walking(layer)]
        elif isinstance(layer, types):
            found.append(layer.name)
    return found


@pytest.mark.parametrize("name", ["deepsense", "oct_cnn", "efficientnetb0", "resnet50"])
def test_all_conv_layers_found_for_each_model_builder(name):
    from components.explain.surgery import conv_layers
    from components.train.models import build_model

    model = build_model(name, "fundus" if name != "oct_cnn" else "oct", 32, 4)
    found = [r.path for r in conv_layers(model)]
    expected = _conv_layers_by_walking(model)
    assert sorted(found) == sorted(expected)
    assert len(found) >= {"deepsense": 3, "oct_cnn": 4, "efficientnetb0": 60, "resnet50": 50}[name]
    if name in ("efficientnetb0", "resnet50"):
        assert all(p.startswith(f"{name}/") for p in found)  # they live inside the nested backbone


def test_feature_maps_of_all_layers_in_one_pass_match_truncated_models(trained_model):
    import keras

    from components.explain.feature_maps import feature_maps
    from tests.explain.conftest import planted_lesions

    images, _, _ = planted_lesions(3, seed=4)
    maps = feature_maps(trained_model, images, maps_per_layer=32)
    assert [m.layer for m in maps] == ["conv1", "conv2", "conv3", "conv4"]
    for lm in maps:
        ref = keras.Model(trained_model.inputs, trained_model.get_layer(lm.layer).output)(images).numpy()
        k = min(32, ref.shape[-1])
        assert lm.maps.shape == (3, *ref.shape[1:3], k) and lm.num_channels == ref.shape[-1]
        np.testing.assert_allclose(lm.maps, ref[..., :k], atol=1e-5)


def test_most_active_selection_picks_the_strongest_channels(trained_model):
    from components.explain.feature_maps import feature_maps
    from tests.explain.conftest import planted_lesions

    images, _, _ = planted_lesions(2, seed=4)
    first = feature_maps(trained_model, images, layers=["conv3"], maps_per_layer=32)[0]
    top = feature_maps(trained_model, images, layers=["conv3"], maps_per_layer=4, selection="most_active")[0]
    means = first.maps.mean(axis=(1, 2))  # conv3 has exactly 32 channels -> all of them
    for i in range(2):
        assert set(top.channels[i]) == set(np.argsort(-means[i])[:4])
        np.testing.assert_allclose(top.maps[i].mean(axis=(0, 1)), np.sort(means[i])[::-1][:4], rtol=1e-5)


def test_feature_maps_reach_into_nested_backbone():
    import keras

    from components.explain.feature_maps import feature_maps, render_maps_grid
    from components.train.models import build_model

    keras.utils.set_random_seed(0)
    model = build_model("efficientnetb0", "fundus", 32, 5)
    images = np.random.default_rng(0).random((1, 32, 32, 3)).astype(np.float32)
    maps = feature_maps(model, images, maps_per_layer=8)
    assert len(maps) > 60 and maps[0].layer == "efficientnetb0/stem_conv"
    grid = render_maps_grid(maps[0].maps[0], tile_size=16, columns=4)
    assert grid.dtype == np.uint8 and grid.shape == (2 * 18 + 2, 4 * 18 + 2, 3)


def test_first_layer_kernels_become_colour_tiles(trained_model):
    from components.explain.filters import first_conv_kernels, kernel_tiles

    path, kernel = first_conv_kernels(trained_model)
    assert path == "conv1" and kernel.shape == (3, 3, 3, 16)
    grid = kernel_tiles(kernel, tile_size=12, columns=8)
    assert grid.shape == (2 * 14 + 2, 8 * 14 + 2, 3)
    assert len(np.unique(grid.reshape(-1, 3), axis=0)) > 16  # real colours, not a flat fill


def test_activation_maximisation_raises_each_filters_activation(trained_model):
    import keras

    from components.explain.filters import maximize_activations

    filters = [0, 3, 7]
    out = maximize_activations(trained_model, "conv3", filters, steps=24, seed=0)
    assert out.shape == (3, 64, 64, 3) and out.min() >= 0 and out.max() <= 1
    layer = keras.Model(trained_model.inputs, trained_model.get_layer("conv3").output)
    start = np.full_like(out, 0.5) + 0.05 * np.random.default_rng(0).standard_normal(out.shape).astype(np.float32)
    before = layer(np.clip(start, 0, 1)).numpy().mean(axis=(1, 2))
    after = layer(out).numpy().mean(axis=(1, 2))
    for i, f in enumerate(filters):
        assert after[i, f] > before[i, f] + 1e-3
