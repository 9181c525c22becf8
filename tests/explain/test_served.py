"""Explaining a served model through Predict calls only, against the project's running model server.

The planted-lesion CNN is exported as a TF Serving SavedModel, served by `retina serve`'s server on a
free loopback port, and explained by `explain_served` / `retina explain --server`: the maps must find
the planted lesions, equal the same method run in process on the model file, and agree with the file's
Grad-CAM. Slow: TensorFlow, a trained model and a gRPC server.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow

MODEL = "planted"
FAST = {"masks": 96, "batch_size": 64}


@pytest.fixture(scope="module")
def served(trained_model, trained_model_dir, tmp_path_factory):
    from components.preprocess.ops import PreprocessParams
    from serving.export import export_saved_model
    from serving.server import start_server

    info = json.loads((trained_model_dir / "retina_model.json").read_text())
    # the raw-image signature needs a preprocessing at the model's size; the tensor signature, which the
    # explanation uses, takes the planted images as they are
    info["preprocessing"] = PreprocessParams(modality="fundus", image_size=info["image_size"]).to_dict()
    repo = tmp_path_factory.mktemp("serving-repo")
    export_saved_model(trained_model, info, repo / MODEL / "1")
    running = start_server(model_base_path=str(repo / MODEL), model_name=MODEL, port=0, poll_interval_s=5.0)
    try:
        yield running
    finally:
        running.stop(grace=2.0)


@pytest.fixture(scope="module")
def lesion_folder(tmp_path_factory) -> Path:
    import cv2

    from tests.explain.conftest import planted_lesions

    root = tmp_path_factory.mktemp("served-images")
    (root / "masks").mkdir()
    images, _, masks = planted_lesions(4, seed=11, positive_fraction=1.0)
    for i, (img, mask) in enumerate(zip(images, masks, strict=True)):
        cv2.imwrite(str(root / f"lesion_{i}.png"), cv2.cvtColor((img * 255).astype(np.uint8), cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(root / "masks" / f"lesion_{i}.png"), mask)
    return root


def test_served_model_is_explained_through_predict_and_agrees_with_its_file(served, trained_model_dir,
                                                                          lesion_folder, tmp_path):
    from components.explain.perturbation import PerturbationConfig
    from components.explain.served import explain_served

    result = explain_served(served.address, MODEL, str(lesion_folder), str(tmp_path / "reports"),
                            model_uri=str(trained_model_dir), run_name="served", config=PerturbationConfig(**FAST),
                            progress=False)
    out = Path(result.report_uri)
    assert out == tmp_path / "reports" / MODEL / "1" / "served"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_images"] == 4 and summary["class_names"] == ["no lesion", "lesion"]
    for method in ("occlusion", "rise"):
        assert summary["metrics"][method]["pointing_game"] >= 0.75, (method, summary["metrics"][method])
        assert summary["metrics"][method]["insertion_minus_deletion"] > 0
    for method in ("occlusion", "rise"):
        # the peaks agree (both on the lesion); the background ranks of a few-mask RISE map are noise, so the
        # global rank correlation is only required to be positive
        agreement = summary["agreement"][f"{method} (served) vs gradcam (file)"]
        assert agreement["peak_agreement"] >= 0.75 and agreement["spearman"] > 0, (method, agreement)
    assert result.requests == summary["predict_requests"] > 0
    assert "max |difference|" in (out / "index.html").read_text()
    assert summary["gate"]["metrics"]["outside_retina_share"]["passed"] is True
    from tests.explain.browser import chromium, inspect_page

    if chromium() is not None:
        seen = inspect_page(out / "index.html", tmp_path / "served-report-1280.png")
        print(f"\nserved report screenshot: {tmp_path / 'served-report-1280.png'}")
        assert seen["broken"] == [] and seen["opened"]["scroll"] <= 1280, seen


def test_served_maps_equal_the_same_method_in_process(served, trained_model, lesion_folder):
    """Same method, same masks, same images: only the transport differs, so the maps must match."""
    import cv2

    from components.explain.perturbation import PerturbationConfig, explain_with_predictions
    from components.explain.served import ServedModel

    x = np.stack([cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in sorted(lesion_folder.glob("*.png"))])
    x = x.astype(np.float32) / 255.0
    config = PerturbationConfig(masks=64, batch_size=32)
    remote = ServedModel(served.address, MODEL)
    try:
        via_grpc = explain_with_predictions(remote, x, config=config)
    finally:
        remote.close()
    local = explain_with_predictions(lambda b: np.asarray(trained_model(b, training=False)), x, config=config)
    for method in local:
        np.testing.assert_allclose(via_grpc[method].cams, local[method].cams, atol=1e-3)
    assert remote.image_size == x.shape[1] and remote.version == 1


def test_cli_explains_the_served_model(served, lesion_folder, tmp_path, capsys):
    from components.cli import main

    code = main(["explain", "--server", served.address, "--model", MODEL, "--images", str(lesion_folder),
                 "--out", str(tmp_path / "r"), "--methods", "occlusion", "--run-name", "cli", "--json"])
    assert code in (0, None)
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["report_uri"].endswith("planted/1/cli")
    assert printed["metrics"]["occlusion"]["pointing_game"] >= 0.75
    assert (Path(printed["report_uri"]) / "index.html").is_file()


def test_unknown_model_and_missing_server_fail_with_one_clear_line(served, lesion_folder, tmp_path):
    from components.common.errors import RetinaError
    from components.common.processes import free_port
    from components.explain.served import explain_served

    with pytest.raises(RetinaError, match="not found"):
        explain_served(served.address, "nope", str(lesion_folder), str(tmp_path))
    with pytest.raises(RetinaError, match="cannot reach"):
        explain_served(f"127.0.0.1:{free_port()}", MODEL, str(lesion_folder), str(tmp_path))
    assert not (tmp_path / MODEL).exists()
