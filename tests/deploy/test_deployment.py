"""Deploy: registry version -> private check on a real local gRPC model server -> TF Serving repository."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from components.common import storage
from components.deploy.deployment import CanaryFailed, DeployError, deploy_model

pytestmark = [pytest.mark.stack, pytest.mark.slow]


def _config(base: str) -> dict[str, object]:
    from serving.model_repository import read_models_config

    return {e.name: e for e in read_models_config(storage.join(base, "models.config"))}


def _start_server(base: str):
    """A real local TF-Serving-compatible server reading `<base>/models.config` (polled twice a second)."""
    from serving.model_repository import write_models_config
    from serving.server import start_server

    config_uri = storage.join(base, "models.config")
    if not storage.exists(config_uri):
        write_models_config(config_uri, [])
    # No --allow_version_labels_for_unavailable_models: TF Serving's strictest label rule (a label only on a
    # version AVAILABLE when the config arrives), so a push that ever labels a version not loaded yet fails.
    return start_server(model_config_file=config_uri, poll_interval_s=0.3)


def _predict_by_label(address: str, model: str, label: str, image: bytes):
    """Predict through the official stubs, addressing the version by label as a client would."""
    import grpc
    import numpy as np
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.version_label = label
    request.model_spec.signature_name = "predict_image"
    request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto([image], dtype=tf.string))
    with grpc.insecure_channel(address) as channel:
        response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=30)
    return response.model_spec.version.value, np.asarray(tf.make_ndarray(response.outputs["probabilities"]))


def _wait_for_label(address: str, model: str, label: str, version: int, image: bytes, timeout_s: float = 30):
    """The server applies the rewritten models.config on its next poll; wait until the label answers."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            served, probabilities = _predict_by_label(address, model, label, image)
            if served == version:
                return probabilities
        except Exception:  # noqa: BLE001 - NOT_FOUND until the poll applies the config
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            raise AssertionError(f"label {label} of {model} still not on version {version}")
        time.sleep(0.3)


def _image() -> bytes:
    """The real fundus photo from scikit-image, downscaled, as JPEG bytes."""
    import cv2
    import skimage.data

    ok, buf = cv2.imencode(".jpg", skimage.data.retina()[::8, ::8, ::-1])
    assert ok
    return buf.tobytes()


def test_deploy_without_server_checks_privately_and_moves_stable(stack, register_version, model_name, tmp_path):
    version = register_version()
    base = str(tmp_path / "repo")

    serving_version, endpoint = deploy_model(model_name, base, version=version)

    assert serving_version == int(version)
    assert (Path(base) / model_name / version / "saved_model.pb").exists()
    entry = _config(base)[model_name]
    assert entry.labels == {"stable": int(version)}  # no `canary` label: nothing unverified is ever listed
    assert entry.versions == [int(version)]
    assert entry.base_path == str(Path(base) / model_name)
    assert endpoint == str(Path(base) / model_name / version)
    # deploying the same version again: a new export of the same weights, so the folder is reused
    stamp = (Path(base) / model_name / version / "saved_model.pb").stat().st_mtime_ns
    assert deploy_model(model_name, base, version=version).serving_version == serving_version
    assert (Path(base) / model_name / version / "saved_model.pb").stat().st_mtime_ns == stamp


def test_champion_alias_is_the_default_and_server_base_path_goes_into_the_config(
    stack, register_version, model_name, tmp_path, monkeypatch
):
    register_version(0.6)
    champion = register_version(0.9)
    base = str(tmp_path / "repo")

    serving_version, _ = deploy_model(model_name, base, server_base_path="/models")

    assert serving_version == int(champion)
    assert _config(base)[model_name].base_path == f"/models/{model_name}"
    # on a cluster the step environment names the server's view of the repository
    monkeypatch.setenv("RETINA_SERVER_BASE_PATH", "/mnt/repo")
    deploy_model(model_name, base)
    assert _config(base)[model_name].base_path == f"/mnt/repo/{model_name}"


def test_canary_passes_on_a_local_repo_and_stable_moves(stack, register_version, model_name, tmp_path):
    base = str(tmp_path / "repo")
    image = _image()
    v1 = register_version(0.7)
    server = _start_server(base)
    try:
        assert (
            deploy_model(model_name, base, version=v1, server_address=server.address, canary_timeout_s=60)[0]
            == 1
        )
        assert _config(base)[model_name].labels == {"stable": 1}
        probabilities = _wait_for_label(server.address, model_name, "stable", 1, image)
        assert probabilities.shape == (1, 4)

        v2 = register_version(0.8)
        serving_version, endpoint = deploy_model(
            model_name, base, version=v2, server_address=server.address, canary_timeout_s=60
        )
        assert serving_version == 2 and endpoint.endswith(f"/{model_name}/versions/2")
        entry = _config(base)[model_name]
        assert entry.labels == {"stable": 2}
        assert entry.versions == [1, 2]  # the previous stable stays loaded for a rollback
        _wait_for_label(server.address, model_name, "stable", 2, image)
    finally:
        server.stop()


def test_canary_passes_on_an_s3_repo(stack, register_version, model_name):
    base = f"s3://models/deploy-test-{model_name}"
    version = register_version()
    server = _start_server(base)
    try:
        serving_version, _ = deploy_model(
            model_name, base, version=version, server_address=server.address, canary_timeout_s=60
        )
        assert storage.is_published(storage.join(base, model_name, str(serving_version)))
        assert storage.exists(storage.join(base, model_name, str(serving_version), "saved_model.pb"))
        assert _config(base)[model_name].labels == {"stable": serving_version}
        _wait_for_label(server.address, model_name, "stable", serving_version, _image())
    finally:
        server.stop()


def test_canary_whose_predict_is_wrong_leaves_stable_unchanged(
    stack, register_version, model_name, tmp_path, make_model_dir
):
    """Version 2's SavedModel answers with 3 classes where the registry says 4: the canary Predict fails."""
    from serving.export import export_saved_model

    base = str(tmp_path / "repo")
    v1 = register_version(0.7)
    server = _start_server(base)
    try:
        deploy_model(model_name, base, version=v1, server_address=server.address, canary_timeout_s=60)
        v2 = register_version(0.9)
        wrong_dir = make_model_dir(tmp_path / "wrong", num_classes=3)

        def export_wrong_model(model, info, export_dir):
            from components.common.model_store import load_model

            wrong_model, wrong_info = load_model(str(wrong_dir))
            return export_saved_model(wrong_model, wrong_info, export_dir)

        # the private check stops it: nothing is published, the production config never names it
        with pytest.raises(CanaryFailed, match="version 2 returned no 4 class probabilities"):
            deploy_model(
                model_name,
                base,
                version=v2,
                server_address=server.address,
                canary_timeout_s=60,
                export_fn=export_wrong_model,
            )
        entry = _config(base)[model_name]
        assert entry.labels == {"stable": 1}
        assert 2 not in entry.versions
        assert not (Path(base) / model_name / "2").exists()
        _wait_for_label(server.address, model_name, "stable", 1, _image())
    finally:
        server.stop()


def test_production_server_that_never_loads_it_restores_the_previous_entry(
    stack, register_version, model_name, tmp_path
):
    """A server that serves another repository never reports the new version: timeout, previous entry back."""
    base = str(tmp_path / "repo")
    other = _start_server(str(tmp_path / "other-repo"))
    try:
        v1 = register_version()
        deploy_model(model_name, base, version=v1)  # checked privately, stable (no production server named)
        v2 = register_version(0.9)
        with pytest.raises(CanaryFailed, match="not AVAILABLE on the server after 3s"):
            deploy_model(model_name, base, version=v2, server_address=other.address, canary_timeout_s=3)
        assert _config(base)[model_name].labels == {"stable": 1}
        assert (Path(base) / model_name / v1 / "saved_model.pb").exists()
        assert not (Path(base) / model_name / v2).exists()  # published by the failed call: taken back
    finally:
        other.stop()


def test_corrupt_saved_model_never_becomes_available(stack, register_version, model_name, tmp_path):
    from serving.export import export_saved_model

    base = str(tmp_path / "repo")
    v1 = register_version(0.7)
    server = _start_server(base)
    try:
        deploy_model(model_name, base, version=v1, server_address=server.address, canary_timeout_s=60)
        v2 = register_version(0.9)

        def export_corrupt(model, info, export_dir):
            path = export_saved_model(model, info, export_dir)
            (path / "saved_model.pb").write_bytes(b"not a SavedModel")
            return path

        with pytest.raises(CanaryFailed, match="version 2"):  # never loads in the private server
            deploy_model(
                model_name,
                base,
                version=v2,
                server_address=server.address,
                canary_timeout_s=5,
                export_fn=export_corrupt,
            )
        assert _config(base)[model_name].labels == {"stable": 1}
        _wait_for_label(server.address, model_name, "stable", 1, _image())
    finally:
        server.stop()


def test_unknown_version_is_a_user_error(stack, register_version, model_name, tmp_path):
    register_version()
    with pytest.raises(DeployError, match="has no version 99"):
        deploy_model(model_name, str(tmp_path / "repo"), version="99")
    with pytest.raises(DeployError, match="has no alias @nope"):
        deploy_model(model_name, str(tmp_path / "repo"), alias="nope")
