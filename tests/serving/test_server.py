"""The local TF-Serving-compatible server, driven with the official tensorflow_serving.apis stubs."""

from __future__ import annotations

import threading
import time

import grpc
import numpy as np
import pytest

from tests.serving.conftest import FUNDUS_CLASSES, IMAGE_SIZE, MODEL_NAME, encode, install_version

pytestmark = pytest.mark.slow


def _stubs(address: str):
    from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

    channel = grpc.insecure_channel(address)
    return prediction_service_pb2_grpc.PredictionServiceStub(channel), model_service_pb2_grpc.ModelServiceStub(channel)


def _predict_request(name=MODEL_NAME, signature="serving_default", inputs=None, version=None, label=None):
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = version
    if label:
        request.model_spec.version_label = label
    if inputs is None:
        inputs = {"images": np.random.default_rng(0).random((2, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.float32)}
    for key, value in inputs.items():
        request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
    return request


def _hostile(request):
    """Declares 16 x 10^6 images of 48 x 48 x 3 floats (443 GB) while sending one value."""
    tensor = request.inputs["images"]
    tensor.ClearField("tensor_content")
    tensor.float_val.append(0.0)
    tensor.tensor_shape.dim[0].size = 16_000_000
    return request


def _retina_jpeg() -> bytes:
    import skimage.data

    return encode(skimage.data.retina())


def test_predict_round_trip_with_official_stubs(server):
    import tensorflow as tf

    predict, _ = _stubs(server.address)
    response = predict.Predict(_predict_request(), timeout=30)
    probabilities = tf.make_ndarray(response.outputs["probabilities"])
    assert probabilities.shape == (2, len(FUNDUS_CLASSES))
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(tf.make_ndarray(response.outputs["class_id"]), probabilities.argmax(axis=1))
    assert response.model_spec.name == MODEL_NAME and response.model_spec.version.value == 1
    image_response = predict.Predict(
        _predict_request(signature="predict_image", inputs={"image_bytes": np.array([_retina_jpeg()], object)}),
        timeout=30)
    names = tf.make_ndarray(image_response.outputs["class_names"])
    assert [n.decode() for n in names[0]] == FUNDUS_CLASSES


def test_metadata_exposes_signature_defs(server):
    from tensorflow_serving.apis import get_model_metadata_pb2

    predict, _ = _stubs(server.address)
    request = get_model_metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name = MODEL_NAME
    request.metadata_field.append("signature_def")
    response = predict.GetModelMetadata(request, timeout=30)
    sig_map = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(sig_map)
    assert {"serving_default", "predict_image", "classify"} <= set(sig_map.signature_def)
    shape = [d.size for d in sig_map.signature_def["serving_default"].inputs["images"].tensor_shape.dim]
    assert shape == [-1, IMAGE_SIZE, IMAGE_SIZE, 3]


def test_model_status_reports_available_version(server):
    from tensorflow_serving.apis import get_model_status_pb2

    _, models = _stubs(server.address)
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = MODEL_NAME
    response = models.GetModelStatus(request, timeout=30)
    states = {s.version: s.state for s in response.model_version_status}
    assert states[1] == get_model_status_pb2.ModelVersionStatus.AVAILABLE
    assert all(s.status.error_code == 0 for s in response.model_version_status)


@pytest.mark.parametrize(("name", "version"), [("retina-nothing", None), (MODEL_NAME, 99)], ids=["model", "version"])
def test_status_and_metadata_of_unknown_model_or_version_are_not_found(server, name, version):
    from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2

    predict, models = _stubs(server.address)
    status = get_model_status_pb2.GetModelStatusRequest()
    metadata = get_model_metadata_pb2.GetModelMetadataRequest()
    metadata.metadata_field.append("signature_def")
    for request in (status, metadata):
        request.model_spec.name = name
        if version is not None:
            request.model_spec.version.value = version
    for call, request in ((models.GetModelStatus, status), (predict.GetModelMetadata, metadata)):
        with pytest.raises(grpc.RpcError) as failure:
            call(request, timeout=30)
        assert failure.value.code() == grpc.StatusCode.NOT_FOUND, failure.value.details()
        assert (name if version is None else str(version)) in failure.value.details()


def test_classify_on_classify_signature_and_refusal_elsewhere(server):
    from tensorflow_serving.apis import classification_pb2

    predict, _ = _stubs(server.address)
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = MODEL_NAME
    request.model_spec.signature_name = "classify"
    example = request.input.example_list.examples.add()
    example.features.feature["image/encoded"].bytes_list.value.append(_retina_jpeg())
    response = predict.Classify(request, timeout=30)
    classes = response.result.classifications[0].classes
    assert [c.label for c in classes] == FUNDUS_CLASSES
    assert sum(c.score for c in classes) == pytest.approx(1.0, abs=1e-5)
    request.model_spec.signature_name = "serving_default"
    with pytest.raises(grpc.RpcError) as refused:
        predict.Classify(request, timeout=30)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # TF Serving's words, in its order (classifier.cc PreProcessClassification): the output count is checked
    # before the input's name, and serving_default has three outputs
    assert refused.value.details() == "Expected one or two output Tensors, found 3"


@pytest.mark.parametrize(
    ("case", "code"),
    [
        ("unknown_model", grpc.StatusCode.NOT_FOUND),
        ("unknown_version", grpc.StatusCode.NOT_FOUND),
        ("unknown_label", grpc.StatusCode.INVALID_ARGUMENT),  # TF Serving: "Unrecognized servable version label"
        ("wrong_dtype", grpc.StatusCode.INVALID_ARGUMENT),
        ("wrong_shape", grpc.StatusCode.INVALID_ARGUMENT),
        ("wrong_rank", grpc.StatusCode.INVALID_ARGUMENT),
        ("missing_input", grpc.StatusCode.INVALID_ARGUMENT),
        ("unknown_input", grpc.StatusCode.INVALID_ARGUMENT),
        ("hostile_declared_size", grpc.StatusCode.RESOURCE_EXHAUSTED),
        ("undecodable_bytes", grpc.StatusCode.INVALID_ARGUMENT),
        ("unknown_signature", grpc.StatusCode.FAILED_PRECONDITION),
    ],
)
def test_malformed_requests_get_tf_serving_status_codes(server, case, code):
    good = np.zeros((1, IMAGE_SIZE, IMAGE_SIZE, 3), np.float32)
    requests = {
        "unknown_model": lambda: _predict_request(name="no-such-model"),
        "unknown_version": lambda: _predict_request(version=99),
        "unknown_label": lambda: _predict_request(label="canary"),
        "wrong_dtype": lambda: _predict_request(inputs={"images": good.astype(np.int32)}),
        "wrong_shape": lambda: _predict_request(inputs={"images": np.zeros((1, 20, 20, 3), np.float32)}),
        # a rank the graph was not built for can abort TensorFlow: refused before it runs
        "wrong_rank": lambda: _predict_request(inputs={"images": np.zeros((IMAGE_SIZE, IMAGE_SIZE, 3), np.float32)}),
        "missing_input": lambda: _predict_request(inputs={}),
        "unknown_input": lambda: _predict_request(inputs={"images": good, "extra": good}),
        "hostile_declared_size": lambda: _hostile(_predict_request()),
        "undecodable_bytes": lambda: _predict_request(signature="predict_image",
                                                      inputs={"image_bytes": np.array([b"not an image"], object)}),
        "unknown_signature": lambda: _predict_request(signature="nope"),
    }
    predict, _ = _stubs(server.address)
    with pytest.raises(grpc.RpcError) as failure:
        predict.Predict(requests[case](), timeout=30)
    assert failure.value.code() == code, failure.value.details()
    assert failure.value.details()


@pytest.mark.parametrize("batching", [False, True], ids=["unbatched", "batching"])
def test_new_version_swapped_in_under_load_without_failures(tmp_path, export_cache, batching):
    """8 client threads hammer the server while version 2 is dropped in: no request fails, v2 wins.

    With server-side batching the old version's batcher is closed mid-stream: requests queued on it
    must still be answered."""
    from serving.client import ServingClient
    from serving.server import start_server

    install_version(export_cache, tmp_path, 1)
    running = start_server(model_base_path=str(tmp_path / MODEL_NAME), model_name=MODEL_NAME, port=0,
                           poll_interval_s=0.2, max_batch_size=8, enable_batching=batching)
    images = np.random.default_rng(1).random((2, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.float32)
    failures: list[str] = []
    versions_seen: list[int] = []
    stop = threading.Event()

    def hammer() -> None:
        with ServingClient(running.address, timeout=30) as client:
            while not stop.is_set():
                try:
                    versions_seen.append(client.predict_tensor(MODEL_NAME, images)["version"])
                except Exception as exc:  # noqa: BLE001 - every failure is recorded and fails the test
                    failures.append(repr(exc))

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    try:
        for t in threads:
            t.start()
        time.sleep(1.0)
        install_version(export_cache, tmp_path, 2)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (not versions_seen or versions_seen[-1] != 2):
            time.sleep(0.2)
        time.sleep(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    try:
        assert not any(t.is_alive() for t in threads), "a request never got an answer"
        assert not failures, failures[:3]
        assert 1 in versions_seen and versions_seen[-1] == 2
        with ServingClient(running.address) as client:
            statuses = {s["version"]: s["state"] for s in client.model_status(MODEL_NAME)}
        assert statuses[2] == "AVAILABLE" and statuses[1] == "END"  # latest-1 policy unloaded v1 after the swap
    finally:
        running.stop()


def test_labels_reload_config_and_batching(tmp_path, export_cache):
    from serving.client import ServingClient, ServingError
    from serving.model_repository import model_entry, write_models_config
    from serving.server import start_server

    install_version(export_cache, tmp_path, 1)
    install_version(export_cache, tmp_path, 2)
    config = tmp_path / "models.config"
    write_models_config(str(config), [model_entry(str(tmp_path), MODEL_NAME, labels={"stable": 1, "canary": 2},
                                                  version_policy="all")])
    # the first config's labels name versions not loaded yet: TF Serving starts only with the cluster's flag
    running = start_server(model_config_file=str(config), port=0, poll_interval_s=0.2, enable_batching=True,
                           max_batch_size=8, config_poll_interval_s=0,  # a polled file would revert the reloads
                           allow_version_labels_for_unavailable_models=True)
    images = np.random.default_rng(2).random((1, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.float32)
    try:
        with ServingClient(running.address) as client:
            assert client.predict_tensor(MODEL_NAME, images, label="stable")["version"] == 1
            assert client.predict_tensor(MODEL_NAME, images, label="canary")["version"] == 2
            assert client.predict_tensor(MODEL_NAME, images)["version"] == 2
            p1 = client.predict_tensor(MODEL_NAME, images, version=1)["probabilities"]
            p2 = client.predict_tensor(MODEL_NAME, images, version=2)["probabilities"]
            assert not np.allclose(p1, p2)
            # batched concurrent calls give each caller its own rows
            results: dict[int, np.ndarray] = {}

            def call(i: int) -> None:
                with ServingClient(running.address) as c:
                    results[i] = c.predict_tensor(MODEL_NAME, images * (i + 1) / 8, version=1)["probabilities"]

            threads = [threading.Thread(target=call, args=(i,)) for i in range(6)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            for i, probabilities in results.items():
                alone = client.predict_tensor(MODEL_NAME, images * (i + 1) / 8, version=1)["probabilities"]
                np.testing.assert_allclose(probabilities, alone, atol=1e-5)
            # a label pointing at a missing version is refused and changes nothing
            with pytest.raises(ServingError) as refused:
                client.reload_config([model_entry(str(tmp_path), MODEL_NAME, labels={"stable": 7},
                                                  version_policy="all")])
            assert refused.value.code == "FAILED_PRECONDITION"
            assert client.predict_tensor(MODEL_NAME, images, label="stable")["version"] == 1
            client.reload_config([model_entry(str(tmp_path), MODEL_NAME, labels={"stable": 2},
                                              version_policy="all")])
            assert client.predict_tensor(MODEL_NAME, images, label="stable")["version"] == 2
            with pytest.raises(ServingError) as gone:
                client.predict_tensor(MODEL_NAME, images, label="canary")
            assert gone.value.code == "INVALID_ARGUMENT"  # TF Serving: "Unrecognized servable version label"
    finally:
        running.stop()


def test_stop_drains_calls_in_flight(tmp_path, export_cache):
    from serving.client import ServingClient, ServingError
    from serving.server import start_server

    install_version(export_cache, tmp_path, 1)
    running = start_server(model_base_path=str(tmp_path), model_name=MODEL_NAME, port=0, poll_interval_s=0)
    data = _retina_jpeg()
    outcome: dict[str, object] = {}

    def slow_call() -> None:
        with ServingClient(running.address, timeout=60) as client:
            outcome["result"] = client.predict_images(MODEL_NAME, [data] * 8)

    caller = threading.Thread(target=slow_call)
    caller.start()
    time.sleep(0.3)
    running.stop(grace=30)
    caller.join(timeout=60)
    assert outcome["result"]["probabilities"].shape == (8, len(FUNDUS_CLASSES))
    with pytest.raises(ServingError) as after, ServingClient(running.address, timeout=5) as client:
        client.predict_images(MODEL_NAME, [data])
    assert after.value.code == "UNAVAILABLE"
