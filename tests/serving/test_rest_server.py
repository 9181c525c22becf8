"""The REST server's own limits, without TensorFlow: `--rest_api_timeout_in_ms`, `--rest_api_num_threads`,
the body-size cap, the Prometheus path and TF Serving's path rules (404 outside /v1, 400 inside)."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request

import pytest

from serving.metrics import Metrics
from serving.rest import RestApi, RestServer, build_app


class _Handlers:
    def __init__(self) -> None:
        self.metrics = Metrics()
        self.metrics.request("m", "Predict", "REST", "OK", 1234.0)


class _SlowApi(RestApi):
    """Answers every /v1 request after `delay` seconds; records how many ran at once."""

    def __init__(self, delay: float):
        super().__init__(_Handlers(), prometheus_path="/monitoring/prometheus/metrics")
        self.delay = delay
        self.running = 0
        self.most = 0
        self.lock = threading.Lock()

    def handle(self, method: str, path: str, body: bytes) -> tuple[int, str]:
        if path != "/v1/models/m:predict":
            return super().handle(method, path, body)
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
        time.sleep(self.delay)
        with self.lock:
            self.running -= 1
        return 200, json.dumps({"predictions": [len(body)]})


def _get(url: str, body: bytes | None = None) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=body), timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.fixture
def rest():
    servers = []

    def start(api: RestApi, threads: int = 4, timeout_ms: int = 30000, max_body: int = 1 << 20) -> str:
        server = RestServer(build_app(api, threads, timeout_ms, max_body), "127.0.0.1", 0)
        server.start()
        servers.append(server)
        return f"http://127.0.0.1:{server.port}"

    yield start
    for server in servers:
        server.stop()


def test_timeout_answers_504_with_a_json_error(rest):
    base = rest(_SlowApi(1.0), timeout_ms=200)
    t0 = time.perf_counter()
    status, body = _get(base + "/v1/models/m:predict", b"{}")
    assert status == 504 and "error" in json.loads(body) and time.perf_counter() - t0 < 0.9


def test_num_threads_bounds_requests_running_at_once(rest):
    api = _SlowApi(0.2)
    base = rest(api, threads=2)
    threads = [threading.Thread(target=_get, args=(base + "/v1/models/m:predict", b"{}")) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert api.most == 2


def test_paths_body_cap_and_prometheus(rest):
    base = rest(_SlowApi(0.0), max_body=1000)
    assert _get(base + "/v1/models/m:predict", b"x" * 10)[0] == 200
    status, body = _get(base + "/v1/models/m:predict", b"x" * 5000)
    assert status == 429 and "limit" in json.loads(body)["error"]
    assert _get(base + "/elsewhere")[0] == 404  # outside /v1: not TF Serving's API
    status, body = _get(base + "/v1/models/m/versions/x")  # inside /v1 but malformed
    assert status == 400 and json.loads(body)["error"].startswith("Malformed request")
    status, page = _get(base + "/monitoring/prometheus/metrics")
    assert status == 200 and "# TYPE :tensorflow:serving:request_count counter" in page
    assert ':tensorflow:serving:request_latency_count{API="Predict",entrypoint="REST",model_name="m"} 1' in page
