"""`retina serve` started as TF Serving's own integration test starts `tensorflow_model_server`, checked
with TF Serving's own example models (tests/serving/tfserving_testdata), the official
`tensorflow_serving.apis` stubs and a real HTTP client — the behaviours of tensorflow_model_server_test.py
plus status codes, limits, batching, metrics and the client without TensorFlow.

One server process serves the module (TF is imported once in it); the test process only builds protos.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import pytest

from serving import protos

pytestmark = pytest.mark.slow
TESTDATA = Path(__file__).parent / "tfserving_testdata"
ROOT = Path(__file__).resolve().parents[2]


def _argv(*args: str) -> list[str]:
    code = "import sys; from components.cli import main; sys.exit(main(sys.argv[1:]))"
    return [sys.executable, "-c", code, *args]


ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def _ready(port: int) -> bool:
    """TF Serving's WaitForServerReady: a Predict for a missing model answers 'Servable ...' once up."""
    protos.load()
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(f"localhost:{port}"))
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "intentionally_missing_model"
    try:
        stub.Predict(request, 2)
    except grpc.RpcError as error:
        return "Servable" in (error.details() or "")
    return False


@pytest.fixture(scope="module")
def tfs(tmp_path_factory):
    """`retina serve` with TF Serving's test flags: config of three example models, REST, Unix socket,
    monitoring, channel arguments, batching, and an ignored GPU flag."""
    from components.common.processes import ManagedProcess, free_port

    tmp = tmp_path_factory.mktemp("tfs")
    config = tmp / "models.config"
    config.write_text(
        "model_config_list: {\n"
        f'  config: {{ name: "default", base_path: "{TESTDATA / "saved_model_half_plus_two_cpu"}", '
        'model_platform: "tensorflow" },\n'
        f'  config: {{ name: "half_plus_three", base_path: "{TESTDATA / "saved_model_half_plus_three"}", '
        'model_platform: "tensorflow" },\n'
        f'  config: {{ name: "tf2", base_path: "{TESTDATA / "saved_model_half_plus_two_tf2_cpu"}", '
        'model_platform: "tensorflow" }\n}\n')
    batching = tmp / "batching.txt"
    batching.write_text("max_batch_size { value: 16 }\nbatch_timeout_micros { value: 30000 }\n"
                        "num_batch_threads { value: 1 }\nmax_enqueued_batches { value: 8 }\n")
    port = free_port()
    rest = free_port(taken=[port])
    sock = tmp / "tf-serving.sock"
    log = tmp / "server.log"
    server = ManagedProcess("retina serve", _argv(
        "serve", f"--port={port}", f"--rest_api_port={rest}", "--rest_api_timeout_in_ms=5000",
        f"--grpc_socket_path={sock}", f"--model_config_file={config}",
        f"--monitoring_config_file={TESTDATA / 'monitoring_config.txt'}", "--enable_batching",
        f"--batching_parameters_file={batching}", "--per_process_gpu_memory_fraction=0.5",
        "--grpc_channel_arguments=grpc.max_connection_age_ms=2000,grpc.lb_policy_name=grpclb,grpc.so_reuseaddr=1"),
        env=ENV, log_file=log, cwd=ROOT)
    with server:
        server.wait_until(lambda: _ready(port), timeout_s=180)
        yield {"grpc": f"localhost:{port}", "rest": f"http://localhost:{rest}", "uds": f"unix:{sock}", "log": log}


def _stub(address: str):
    from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

    channel = grpc.insecure_channel(address)
    return prediction_service_pb2_grpc.PredictionServiceStub(channel), model_service_pb2_grpc.ModelServiceStub(channel)


def _x_request(model="default", shape=(1,), signature="serving_default", dtype=1, values=(2.0,)):
    """TF Serving's VerifyPredictRequest: x as float_val with shape [1] (or [1, 1])."""
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    request.inputs["x"].dtype = dtype
    if dtype == 1:
        request.inputs["x"].float_val.extend(values)
    else:
        request.inputs["x"].string_val.append(b"2")
    for size in shape:
        request.inputs["x"].tensor_shape.dim.add().size = size
    return request


def _rest(url: str, body=None) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _code(call) -> tuple[str, str]:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value.code().name, err.value.details()


@pytest.mark.parametrize("channel", ["grpc", "uds"])
def test_predict_example_models_like_tf_serving(tfs, channel):
    predict, _ = _stub(tfs[channel])
    for model, expected in (("default", 3.0), ("half_plus_three", 4.0), ("tf2", 3.0)):
        for shape in ((1,), (1, 1)):
            request = _x_request(model, shape)
            request.output_filter.append("y")
            result = predict.Predict(request, 5)
            assert list(result.outputs["y"].float_val) == [expected]  # typed field, as TF Serving answers
            assert result.model_spec.version.value == 123  # folder 00000123
            assert result.model_spec.signature_name == "serving_default"


def test_classify_regress_multi_inference_tf1_and_tf2(tfs):
    from tensorflow_serving.apis import classification_pb2, inference_pb2, regression_pb2

    predict, _ = _stub(tfs["grpc"])
    for model in ("default", "tf2"):
        request = classification_pb2.ClassificationRequest()
        request.model_spec.name, request.model_spec.signature_name = model, "classify_x_to_y"
        request.input.example_list.examples.add().features.feature["x"].float_list.value.append(2.0)
        result = predict.Classify(request, 5).result
        assert [[c.score for c in r.classes] for r in result.classifications] == [[3.0]]
        regress = regression_pb2.RegressionRequest()
        regress.model_spec.name, regress.model_spec.signature_name = model, "regress_x_to_y"
        regress.input.CopyFrom(request.input)
        assert [r.value for r in predict.Regress(regress, 5).result.regressions] == [3.0]
        multi = inference_pb2.MultiInferenceRequest()
        multi.input.CopyFrom(request.input)
        for signature, method in (("regress_x_to_y", "regress"), ("classify_x_to_y", "classify")):
            task = multi.tasks.add()
            task.model_spec.name, task.model_spec.signature_name = model, signature
            task.method_name = f"tensorflow/serving/{method}"
        results = predict.MultiInference(multi, 5).results
        assert results[0].regression_result.regressions[0].value == 3.0
        assert results[1].classification_result.classifications[0].classes[0].score == 3.0


def test_status_codes_as_tf_serving(tfs):
    from tensorflow_serving.apis import get_model_status_pb2

    predict, models = _stub(tfs["grpc"])
    unknown_version = _x_request()
    unknown_version.model_spec.version.value = 7
    unknown_label = _x_request()
    unknown_label.model_spec.version_label = "nope"
    missing = _x_request()
    missing.inputs["extra"].CopyFrom(missing.inputs["x"])
    del missing.inputs["x"]
    cases = {
        "NOT_FOUND": [_x_request("nope"), unknown_version],
        "INVALID_ARGUMENT": [unknown_label, _x_request(dtype=7), missing],
        "FAILED_PRECONDITION": [_x_request(signature="no_such_signature")],
    }
    for code, requests in cases.items():
        for request in requests:
            assert _code(lambda r=request: predict.Predict(r, 5))[0] == code
    status = get_model_status_pb2.GetModelStatusRequest()
    status.model_spec.name = "default"
    version = models.GetModelStatus(status, 5).model_version_status
    assert [(v.version, v.state, v.status.error_code) for v in version] == [(123, 30, 0)]
    status.model_spec.version.value = 5
    assert _code(lambda: models.GetModelStatus(status, 5))[0] == "NOT_FOUND"


def test_batching_session_refuses_a_scalar_as_tf_serving(tfs):
    """With --enable_batching, TF Serving's batching session refuses inputs it cannot merge
    (batching_util.h ComputeTensorBatchSize) before the model runs."""
    predict, _ = _stub(tfs["grpc"])
    assert _code(lambda: predict.Predict(_x_request(shape=()), 5)) == (
        "INVALID_ARGUMENT", "Batching Run() input tensors must have at least one dimension")


def test_rest_api_routes_formats_and_errors(tfs):
    base = tfs["rest"] + "/v1/models"
    assert _rest(f"{base}/default:predict", {"instances": [2.0, 3.0, 4.0]}) == (200, {"predictions": [3.0, 3.5, 4.0]})
    assert _rest(f"{base}/default:predict", {"inputs": [2.0, 3.0, 4.0]}) == (200, {"outputs": [3.0, 3.5, 4.0]})
    assert _rest(f"{base}/default/versions/123:predict", {"instances": [[2.0]]}) == (200, {"predictions": [[3.0]]})
    assert _rest(f"{base}/default:classify", {"signature_name": "classify_x_to_y", "examples": [{"x": 2.0}]}) == (
        200, {"results": [[["", 3.0]]]})
    assert _rest(f"{base}/default:regress", {"signature_name": "regress_x_to_y", "examples": [{"x": 2.0}]}) == (
        200, {"results": [3.0]})
    assert _rest(f"{base}/default") == (200, {"model_version_status": [
        {"version": "123", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]})
    code, metadata = _rest(f"{base}/default/metadata")
    expected = json.loads((TESTDATA / "half_plus_two_model_metadata.json").read_text())
    assert code == 200 and _sorted(metadata) == _sorted(expected)
    for url, body, status in [(f"{base}/nope:predict", {"instances": [1.0]}, 404),
                              (f"{base}/default/versions/9:predict", {"instances": [1.0]}, 404),
                              (f"{base}/default/labels/x:predict", {"instances": [1.0]}, 400),
                              (f"{base}/default:predict", {"instances": []}, 400),
                              (f"{base}/default:predict", {"nothing": 1}, 400),
                              (f"{base}/default:predict", {"instances": [[1.0], [1.0, 2.0]]}, 400),
                              (tfs["rest"] + "/v1/other", None, 400)]:
        got, answer = _rest(url, body)
        assert got == status and set(answer) == {"error"} and answer["error"], (url, got, answer)


def _sorted(obj):
    if isinstance(obj, dict):
        return sorted((k, _sorted(v)) for k, v in obj.items())
    if isinstance(obj, list):
        return sorted(_sorted(x) for x in obj)
    return obj


def test_hostile_sizes_refused_and_server_keeps_serving(tfs):
    predict, _ = _stub(tfs["grpc"])
    huge = _x_request(shape=(1_000_000_000, 1))  # one value declared as 4 GB
    assert _code(lambda: predict.Predict(huge, 5))[0] == "RESOURCE_EXHAUSTED"
    short = _x_request(shape=(3, 1))
    short.inputs["x"].ClearField("float_val")
    short.inputs["x"].tensor_content = b"\0" * 5
    assert _code(lambda: predict.Predict(short, 5))[0] == "INVALID_ARGUMENT"
    assert list(predict.Predict(_x_request(), 5).outputs["y"].float_val) == [3.0]


def test_batching_merges_concurrent_requests_and_metrics_have_tf_serving_names(tfs):
    from concurrent.futures import ThreadPoolExecutor

    predict, _ = _stub(tfs["grpc"])
    before = _batch_counts(tfs)
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda i: predict.Predict(_x_request(values=(float(i),)), 10), range(32)))
    assert [a.outputs["y"].float_val[0] for a in answers] == [0.5 * i + 2 for i in range(32)]
    batches, rows = (a - b for a, b in zip(_batch_counts(tfs), before, strict=True))
    assert rows == 32 and batches < 32, "concurrent requests were not merged into larger batches"
    page = urllib.request.urlopen(tfs["rest"] + "/monitoring/prometheus/metrics", timeout=10).read().decode()
    assert "# TYPE :tensorflow:serving:request_count counter" in page
    assert ':tensorflow:serving:request_count{model_name="default",status="OK"}' in page
    assert ':tensorflow:serving:request_latency_bucket{API="Predict",entrypoint="REST"' in page or (
        'entrypoint="GRPC"' in page)


def _runtime_counts(tfs, model: str) -> dict[str, int]:
    """runtime_latency observation counts of `model` by its API label, from the metrics page."""
    page = urllib.request.urlopen(tfs["rest"] + "/monitoring/prometheus/metrics", timeout=10).read().decode()
    counts = {}
    for line in page.splitlines():
        if line.startswith(":tensorflow:serving:runtime_latency_count{") and f'model_name="{model}"' in line:
            api = line.split('API="')[1].split('"')[0]
            counts[api] = int(float(line.split()[-1]))
    return counts


def test_runtime_latency_is_labelled_with_the_api_that_ran_the_model(tfs):
    """TF Serving records runtime_latency in predict_util.cc, classifier.cc and regressor.cc with
    API = Predict / Classify / Regress; MultiInference and GetModelMetadata record none."""
    from tensorflow_serving.apis import (
        classification_pb2,
        get_model_metadata_pb2,
        inference_pb2,
        regression_pb2,
    )

    predict, _ = _stub(tfs["grpc"])
    before = _runtime_counts(tfs, "default")
    classify = classification_pb2.ClassificationRequest()
    classify.model_spec.name, classify.model_spec.signature_name = "default", "classify_x_to_y"
    classify.input.example_list.examples.add().features.feature["x"].float_list.value.append(2.0)
    predict.Classify(classify, 10)
    regress = regression_pb2.RegressionRequest()
    regress.model_spec.name, regress.model_spec.signature_name = "default", "regress_x_to_y"
    regress.input.CopyFrom(classify.input)
    predict.Regress(regress, 10)
    predict.Regress(regress, 10)
    multi = inference_pb2.MultiInferenceRequest()
    multi.input.CopyFrom(classify.input)
    task = multi.tasks.add()
    task.model_spec.name, task.model_spec.signature_name = "default", "regress_x_to_y"
    task.method_name = "tensorflow/serving/regress"
    predict.MultiInference(multi, 10)
    metadata = get_model_metadata_pb2.GetModelMetadataRequest()
    metadata.model_spec.name = "default"
    metadata.metadata_field.append("signature_def")
    predict.GetModelMetadata(metadata, 10)
    predict.Predict(_x_request(), 10)
    after = _runtime_counts(tfs, "default")
    grown = {api: after[api] - before.get(api, 0) for api in after if after[api] != before.get(api, 0)}
    assert grown == {"Classify": 1, "Regress": 2, "Predict": 1}


def _metric_values(tfs, prefix: str) -> dict[str, float]:
    """Lines of the metrics page starting with `prefix`: the rest of the name with labels -> value."""
    page = urllib.request.urlopen(tfs["rest"] + "/monitoring/prometheus/metrics", timeout=10).read().decode()
    return {line[len(prefix):].rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in page.splitlines() if line.startswith(prefix)}


def test_request_metrics_meter_the_calls_tf_serving_meters(tfs):
    """gRPC (prediction_service_impl.cc): request_count / request_latency for Predict, Classify and
    Regress only. REST (http_server.cc): every request, API = the URL's verb, "" for a GET route."""
    from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2

    predict, models = _stub(tfs["grpc"])
    latency = ":tensorflow:serving:request_latency_count"
    count = ':tensorflow:serving:request_count{model_name="half_plus_three",status="OK"}'
    before = {**_metric_values(tfs, latency), **_metric_values(tfs, count)}
    metadata = get_model_metadata_pb2.GetModelMetadataRequest()
    metadata.model_spec.name = "half_plus_three"
    metadata.metadata_field.append("signature_def")
    predict.GetModelMetadata(metadata, 10)
    status = get_model_status_pb2.GetModelStatusRequest()
    status.model_spec.name = "half_plus_three"
    models.GetModelStatus(status, 10)
    predict.Predict(_x_request("half_plus_three"), 10)
    assert _rest(tfs["rest"] + "/v1/models/half_plus_three")[0] == 200
    assert _rest(tfs["rest"] + "/v1/models/half_plus_three:predict", {"instances": [1.0]})[0] == 200
    after = {**_metric_values(tfs, latency), **_metric_values(tfs, count)}
    grown = {key: after[key] - before.get(key, 0) for key in after if after[key] != before.get(key, 0)}
    assert grown == {"": 3,  # the request_count line: gRPC Predict, REST GET, REST predict
                     '{API="Predict",entrypoint="GRPC",model_name="half_plus_three"}': 1,
                     '{API="",entrypoint="REST",model_name="half_plus_three"}': 1,
                     '{API="predict",entrypoint="REST",model_name="half_plus_three"}': 1}


def _batch_counts(tfs) -> tuple[int, int]:
    page = urllib.request.urlopen(tfs["rest"] + "/monitoring/prometheus/metrics", timeout=10).read().decode()
    count = total = 0
    for line in page.splitlines():
        if line.startswith(':tensorflow:serving:batching_session:processed_batch_size_count{model_name="default"'):
            count = int(float(line.split()[-1]))
        if line.startswith(':tensorflow:serving:batching_session:processed_batch_size_sum{model_name="default"'):
            total = int(float(line.split()[-1]))
    return count, total


def test_health_ignored_flag_logged_and_client_without_tensorflow(tfs):
    from serving.servicers import health_messages

    channel = grpc.insecure_channel(tfs["grpc"])
    check = channel.unary_unary("/grpc.health.v1.Health/Check",
                                request_serializer=health_messages()["HealthCheckRequest"].SerializeToString,
                                response_deserializer=health_messages()["HealthCheckResponse"].FromString)
    assert check(health_messages()["HealthCheckRequest"](), timeout=5).status == 1  # SERVING
    assert "per_process_gpu_memory_fraction" in tfs["log"].read_text()
    code = ("import sys, time; t = time.perf_counter(); import numpy as np; from serving.client import ServingClient\n"
            f"c = ServingClient('{tfs['grpc']}'); y = c.predict('default', {{'x': np.array([[2.0]], np.float32)}})\n"
            "print(float(y['y'][0][0]), 'tensorflow.python' in sys.modules, time.perf_counter() - t)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT)
    value, tf_loaded, seconds = out.stdout.split()
    assert (float(value), tf_loaded) == (3.0, "False"), out.stderr
    assert float(seconds) < 1.0 and not out.stderr.strip(), (seconds, out.stderr)


def test_bad_model_config_exits_with_tf_serving_error():
    done = subprocess.run(_argv("serve", f"--model_config_file={TESTDATA / 'bad_model_config.txt'}", "--port=0"),
                          capture_output=True, env=ENV, cwd=ROOT, timeout=120)
    err = done.stderr
    assert done.returncode != 0
    assert b"Error parsing text-format tensorflow.serving.ModelServerConfig" in err
    assert b"I0000" not in err and b"cudart_stub" not in err  # no TensorFlow C++ log lines
