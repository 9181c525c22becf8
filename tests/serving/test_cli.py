"""`retina predict` / `retina serve` through the real CLI entry point, and the S3 model repository."""

from __future__ import annotations

import json

import pytest

from components.cli import main
from tests.serving.conftest import FUNDUS_CLASSES, MODEL_NAME, encode


def test_serve_accepts_tf_serving_flag_spellings():
    from components.cli import build_parser

    args = build_parser().parse_args(["serve", "--model_base_path", "/m/x", "--model_name", "x", "--port", "9000",
                                      "--file_system_poll_wait_seconds", "5", "--enable_batching=true"])
    assert (args.model_base_path, args.model_name, args.port, args.file_system_poll_wait_seconds,
            args.enable_batching) == ("/m/x", "x", 9000, 5.0, True)
    dashed = build_parser().parse_args(["serve", "--model-config-file", "models.config", "--enable-batching"])
    assert dashed.model_config_file == "models.config" and dashed.enable_batching is True
    # TF Serving's defaults, and flags without meaning here accepted (recorded, logged as ignored at start)
    from serving.options import options_from_args

    options = options_from_args(build_parser().parse_args(
        ["serve", "--model_base_path=/m/x", "--per_process_gpu_memory_fraction=0.4", "--enable_profiler=false",
         "--allow_version_labels_for_unavailable_models=true", "--rest_api_port=8501"]))
    assert (options.port, options.model_name, options.file_system_poll_wait_seconds, options.enable_model_warmup,
            options.max_num_load_retries, options.load_retry_interval_micros, options.rest_api_timeout_in_ms) == (
        8500, "default", 1, True, 5, 60_000_000, 30000)
    assert options.allow_version_labels_for_unavailable_models and options.rest_api_port == 8501
    assert set(options.ignored) == {"per_process_gpu_memory_fraction", "enable_profiler"}


def test_predict_reports_unreadable_files_before_calling(tmp_path, capsys):
    bad = tmp_path / "notes.txt"
    bad.write_text("hello")
    assert main(["predict", "--server", "127.0.0.1:1", "--model", MODEL_NAME, str(tmp_path / "missing.jpg")]) == 2
    assert "missing.jpg" in capsys.readouterr().err
    assert main(["predict", "--server", "127.0.0.1:1", "--model", MODEL_NAME, str(bad)]) == 2
    err = capsys.readouterr().err
    assert "not a JPEG or PNG" in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_predict_prints_table_and_json_for_a_real_image(server, tmp_path, capsys):
    import skimage.data

    image = tmp_path / "retina.jpg"
    image.write_bytes(encode(skimage.data.retina()))
    assert main(["predict", "--server", server.address, "--model", MODEL_NAME, str(image)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:2] == ["image", "class"] and "Proliferative" in table[0]
    row = table[2]
    assert row.startswith("retina.jpg") and any(name in row for name in FUNDUS_CLASSES)
    assert main(["predict", "--server", server.address, "--model", MODEL_NAME, "--version", "1", "--json",
                 str(image)]) == 0
    result = json.loads(capsys.readouterr().out)
    prediction = result["predictions"][0]
    assert result["version"] == 1 and set(prediction["probabilities"]) == set(FUNDUS_CLASSES)
    assert prediction["class_name"] == max(prediction["probabilities"], key=prediction["probabilities"].get)
    assert sum(prediction["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    # the same through TF Serving's REST API: same classes, same probabilities, the served version
    assert main(["predict", "--rest", "--server", f"127.0.0.1:{server.rest_port}", "--model", MODEL_NAME,
                 "--json", str(image)]) == 0
    over_rest = json.loads(capsys.readouterr().out)
    assert over_rest["version"] == 1 and over_rest["predictions"][0]["class_name"] == prediction["class_name"]
    for name, p in prediction["probabilities"].items():
        assert over_rest["predictions"][0]["probabilities"][name] == pytest.approx(p, abs=1e-6)


@pytest.mark.slow
def test_predict_one_line_errors_for_unknown_model_and_unreachable_server(server, tmp_path, capsys):
    import socket

    import skimage.data

    image = tmp_path / "retina.jpg"
    image.write_bytes(encode(skimage.data.retina()))
    assert main(["predict", "--server", server.address, "--model", "retina-nope", str(image)]) == 2
    err = capsys.readouterr().err.strip()
    assert "not found" in err and "retina-nope" in err and len(err.splitlines()) == 1
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    assert main(["predict", "--server", f"127.0.0.1:{free}", "--model", MODEL_NAME, "--timeout", "3",
                 str(image)]) == 2
    err = capsys.readouterr().err.strip()
    assert "cannot reach the model server" in err and len(err.splitlines()) == 1


@pytest.mark.slow
@pytest.mark.stack
def test_server_loads_versions_from_s3_and_polls_for_new_ones(stack, tmp_path, export_cache):
    import time

    import numpy as np

    from components.common import storage
    from serving.client import ServingClient
    from serving.model_repository import list_versions, model_entry, write_models_config
    from serving.server import start_server

    base = "s3://models/serving-test"
    storage.publish_folder(export_cache[1], f"{base}/{MODEL_NAME}/1", last=["saved_model.pb"])
    assert list_versions(base, MODEL_NAME) == [1]
    config = f"{base}/models.config"
    write_models_config(config, [model_entry(base, MODEL_NAME, labels={"stable": 1}, version_policy="all")])
    running = start_server(model_config_file=config, port=0, poll_interval_s=0.3,
                           allow_version_labels_for_unavailable_models=True)  # the first config's label
    images = np.zeros((1, 48, 48, 3), np.float32)
    try:
        with ServingClient(running.address) as client:
            assert client.predict_tensor(MODEL_NAME, images, label="stable")["version"] == 1
            storage.publish_folder(export_cache[2], f"{base}/{MODEL_NAME}/2", last=["saved_model.pb"])
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and client.predict_tensor(MODEL_NAME, images)["version"] != 2:
                time.sleep(0.3)
            assert client.predict_tensor(MODEL_NAME, images)["version"] == 2
            assert client.predict_tensor(MODEL_NAME, images, label="stable")["version"] == 1
    finally:
        running.stop()
