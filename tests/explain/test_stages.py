"""Each stage of the explanation job on its own: config -> inputs -> attributions -> visuals -> report."""

from __future__ import annotations

import argparse

import numpy as np
import pytest

from components.common.errors import RetinaError
from components.explain.config import ExplainConfig, add_arguments, from_args


# --------------------------------------------------------------------------- config (no TF)
def test_config_checks_its_fields_before_any_work():
    with pytest.raises(RetinaError, match="unknown CAM method"):
        ExplainConfig(methods="gradcam,nope")
    with pytest.raises(RetinaError, match="input range"):
        ExplainConfig(input_range="0-2")
    with pytest.raises(RetinaError, match="max_images"):
        ExplainConfig(max_images=0)
    with pytest.raises(RetinaError, match="threshold"):
        ExplainConfig(thresholds="pointing_game>>x")
    with pytest.raises(TypeError, match="unknown explain parameter"):
        ExplainConfig().replace(max_imgs=3)


def test_config_normalises_lists_and_scales_the_pointing_tolerance():
    cfg = ExplainConfig(methods=["layercam", "gradcam", "layercam"], layers="a, b,")
    assert cfg.method_names == ["layercam", "gradcam"] and cfg.layers == ("a", "b")
    assert ExplainConfig().tolerance_px(224) == 15  # Zhang et al.: 15 px at 224 px
    assert ExplainConfig().tolerance_px(128) == 9 and ExplainConfig().tolerance_px(64) == 4
    assert ExplainConfig(pointing_tolerance=0).tolerance_px(128) == 0


def test_cli_flags_are_generated_from_the_config_with_its_defaults():
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    defaults = from_args(parser.parse_args([]))
    assert defaults == ExplainConfig()
    cfg = from_args(parser.parse_args(["--methods", "hirescam", "--filters", "2", "--layers", "c1,c2",
                                       "--pointing-tolerance", "0"]))
    assert (cfg.methods, cfg.filter_count, cfg.layers, cfg.pointing_tolerance) == ("hirescam", 2, ("c1", "c2"), 0.0)


# --------------------------------------------------------------------------- inputs (no model)
def test_inputs_stage_reads_images_and_masks_and_lists_the_unreadable(planted_folder):
    from types import SimpleNamespace

    from components.explain.inputs import read_inputs

    info = SimpleNamespace(preprocessing={}, modality="")
    images, problems = read_inputs(str(planted_folder), info, 32, max_images=20, progress=False)
    assert [name for name, _ in problems] == ["broken.jpg"]
    lesions = [im for im in images if im.image_id.startswith("lesion_")]
    assert len(lesions) == 6 and all(im.mask is not None and im.mask.shape == (32, 32) for im in lesions)
    assert all(im.model_input.shape == (32, 32, 3) and im.model_input.dtype == np.uint8 for im in images)


# --------------------------------------------------------------------------- model stages (TF)
@pytest.fixture(scope="module")
def subject(trained_model):
    from components.explain.explanation import Subject

    return Subject(model=trained_model, info=argparse.Namespace(head="softmax"), uri="mem://planted", image_size=64,
                   class_names=["no lesion", "lesion"], name="planted_cnn", version="1")


@pytest.fixture(scope="module")
def planted_inputs():
    from components.explain.inputs import InputImage
    from tests.explain.conftest import planted_lesions

    images, labels, masks = planted_lesions(6, seed=21, positive_fraction=0.67)
    u8 = (images * 255).astype(np.uint8)
    return [InputImage(f"i{i}", f"i{i}.png", u8[i], u8[i], masks[i] if labels[i] else None, int(labels[i]))
            for i in range(len(u8))]


@pytest.mark.slow
def test_attributions_stage_scores_each_method_against_the_masks(subject, planted_inputs):
    from components.explain.explanation import compute_attributions

    cfg = ExplainConfig(methods="gradcam,layercam", faithfulness_steps=4, progress=False)
    att = compute_attributions(subject, planted_inputs, cfg)
    n = len(planted_inputs)
    assert set(att.cams) == {"gradcam", "layercam"} and att.cams["gradcam"].shape == (n, 64, 64)
    with_mask = [im.mask is not None for im in planted_inputs]
    hits = att.per_image["gradcam"]["pointing_hit"]
    assert np.isnan(hits[~np.array(with_mask)]).all() and not np.isnan(hits[np.array(with_mask)]).any()
    assert att.summary["pointing_game_tolerance"]["px"] == 4  # 15 px at 224 -> 4 px at 64
    assert att.summary["pointing_game"] >= 0.75
    assert att.summary["best_pointing_method"] in {"gradcam", "layercam"}
    assert att.per_image["gradcam"]["randomization_ssim"].shape == (n,)
    assert "passed" in att.summary["gate"]


@pytest.mark.slow
def test_visuals_stage_overlays_every_method_and_grids_the_layers(subject, planted_inputs):
    from components.explain.explanation import Attributions, build_visuals

    n = len(planted_inputs)
    cams = np.random.default_rng(0).uniform(size=(n, 64, 64)).astype(np.float32)
    att = Attributions(methods=["gradcam"], cams={"gradcam": cams}, targets=np.zeros(n, int),
                       outputs=np.full((n, 2), 0.5, np.float32), predicted=np.zeros(n, int), cam_layer="conv4",
                       score_kind="logits", per_image={"gradcam": {"pointing_hit": np.ones(n)}}, summary={})
    cfg = ExplainConfig(maps_per_layer=2, filter_count=1, filter_steps=1, progress=False)
    visuals = build_visuals(subject, planted_inputs, att, cfg)
    assert len(visuals.entries) == n and all(set(e.overlays) == {"gradcam"} for e in visuals.entries)
    assert visuals.entries[0].metrics == {"gradcam": {"pointing_hit": 1.0}}
    assert [g.title.split(" · ")[0] for g in visuals.feature_maps] == ["conv1", "conv2", "conv3", "conv4"]
    assert visuals.filters[0].title.endswith("kernels") and "activation maximisation" in visuals.filters[1].title


def test_report_stage_without_readable_images_lists_the_problems():
    from components.explain.explanation import Subject, assemble_report

    subject = Subject(model=None, info=None, uri="m", image_size=64, class_names=["a", "b"], name="m", version="1")
    report = assemble_report(subject, "imgs", "r", [("x.jpg", "truncated")], None, None, ExplainConfig())
    assert report.entries == [] and report.problems == [("x.jpg", "truncated")]
    assert report.summary["pointing_game"] is None and report.summary["class_names"] == ["a", "b"]
    assert report.methods == ExplainConfig().method_names


def test_report_is_named_from_the_model_ref():
    from types import SimpleNamespace

    from components.explain.explanation import model_identity

    info = SimpleNamespace(model_name="deepsense", run_id="0123456789abcdef")
    assert model_identity("models:/retina-fundus/3", info) == ("retina-fundus", "3")
    assert model_identity("runs:/fedcba9876543210/model", info) == ("deepsense", "run-fedcba98")
    assert model_identity("/tmp/x/model", info) == ("deepsense", "run-01234567")
    assert model_identity("/tmp/x/any.keras", SimpleNamespace(model_name="", run_id="")) == ("any", "local")


def test_the_kfp_component_defaults_are_the_config_defaults():
    """KFP ships a lightweight component's source alone, so its defaults are literals; they must stay the
    ExplainConfig's, or the pipeline would explain with other methods than `retina explain`."""
    import inspect

    from components.explain.component import explain
    from components.explain.config import ExplainConfig

    defaults = {n: p.default for n, p in inspect.signature(explain.python_func).parameters.items()
                if p.default is not inspect.Parameter.empty}
    config = ExplainConfig.__dataclass_fields__
    for name, value in defaults.items():
        if name in config:
            assert value == config[name].default, name
    assert defaults["methods"].split(",")[0] == "layercam-fused"
