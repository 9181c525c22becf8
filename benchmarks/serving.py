"""`retina serve` against its baselines, measured side by side in one run; ratios printed.

The server runs as its own process (`retina serve`, as users run it); clients use the official
`tensorflow_serving.apis` stubs (gRPC) and urllib (REST). Printed:

1. latency at batch 1, p50: gRPC Predict vs the in-process call of the same SavedModel signature
   (a session callable, what the server itself runs) — the cost of the wire; target <= 1.2x or +1 ms;
2. REST p50 vs gRPC p50 (JSON encoding + HTTP);
3. throughput with `--clients` (16) concurrent batch-1 clients, `--enable_batching` off vs on
   (`--batching_parameters_file`: max_batch_size 16, one batch thread, timeout 5 ms); target >= 2x;
4. server req/s (batching off) as a fraction of the in-process ceiling, cores / per-call time.

Which model and why batching pays: an MLP of `--layers` dense layers `--width` wide (default 2 x 4096,
134 MB of float32 weights, far above the CPU caches). At batch 1 each call streams every weight from memory to multiply one
vector (a matrix-vector product, memory-bound); at batch 16 the same weights are read once for 16 rows
(a matrix-matrix product), so a merged call costs little more than a single one. A small CNN on small
images is compute-bound per row and gains far less: batching only pays where per-call cost dominates.

    .venv/bin/python benchmarks/serving.py [--quick] [--clients 16] [--seconds 6]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

# This file is named like the `serving` package it measures; drop its own folder from the import path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
ROOT = Path(__file__).resolve().parents[1]


def percentile(samples: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(samples) * 1000.0, q)) if samples else float("nan")


def build_mlp(path: Path, width: int, layers: int) -> None:
    """A SavedModel `serving_default`: x float32 [?, width] -> y float32 [?, width] (plain tf.Variables)."""
    import tensorflow as tf

    rng = np.random.default_rng(0)
    module = tf.Module()
    module.weights = [tf.Variable(rng.normal(0, 1 / np.sqrt(width), (width, width)).astype(np.float32))
                      for _ in range(layers)]

    @tf.function(input_signature=[tf.TensorSpec([None, width], tf.float32, name="x")])
    def serve(x):
        for w in module.weights:
            x = tf.nn.relu(tf.matmul(x, w))
        return {"y": x}

    module.serve = serve
    tf.saved_model.save(module, str(path / "mlp" / "1"), signatures={"serving_default": serve})


def in_process(path: Path):
    """The SavedModel loaded as the server loads it; call `.run("serving_default", {"x": x}, ["y"])`."""
    from serving.servable import LoadedVersion, load_session

    session, meta_graph = load_session(path / "mlp" / "1")
    return LoadedVersion("mlp", 1, path, session, meta_graph)


def interleaved(calls: dict, n: int) -> dict[str, list[float]]:
    """Each call timed in turn, round after round, so a change in the machine's load hits all alike."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    for i in range(n + 5):
        for name, fn in calls.items():
            t0 = time.perf_counter()
            fn()
            if i >= 5:
                times[name].append(time.perf_counter() - t0)
    return times


def start_server(path: Path, batching: bool, clients: int = 16) -> tuple[object, int, int]:
    """`retina serve` as its own process (components.common.processes); returns (process, gRPC, REST port)."""
    from components.common.processes import ManagedProcess, free_port

    port = free_port()
    rest = free_port(taken=[port])
    args = [f"--port={port}", f"--rest_api_port={rest}", f"--model_base_path={path / 'mlp'}", "--model_name=mlp",
            "--file_system_poll_wait_seconds=0",
            # TF Serving's default is 4 gRPC threads per core (8 here): room for every client's call at once
            f"--grpc_max_threads={max(8, 2 * clients)}"]
    monitoring = path / "monitoring.txt"
    monitoring.write_text('prometheus_config { enable: true, path: "/metrics" }\n')
    args.append(f"--monitoring_config_file={monitoring}")
    if batching:
        params = path / "batching.txt"
        params.write_text("max_batch_size { value: 16 }\nbatch_timeout_micros { value: 5000 }\n"
                          "num_batch_threads { value: 1 }\nmax_enqueued_batches { value: 64 }\n")
        args += ["--enable_batching", f"--batching_parameters_file={params}"]
    code = "import sys; from components.cli import main; sys.exit(main(sys.argv[1:]))"
    proc = ManagedProcess("retina serve", [sys.executable, "-c", code, "serve", *args], cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, log_file=path / "server.log").start()
    stub = grpc_stub(f"127.0.0.1:{port}")

    def up() -> bool:
        try:
            stub.Predict(request(np.zeros((1, 8), np.float32), "absent"), timeout=2)
        except Exception as exc:  # noqa: BLE001 - NOT_FOUND means it is up
            return "Servable" in str(getattr(exc, "details", lambda: "")())
        return False

    try:
        proc.wait_until(up, timeout_s=180)
    except Exception:
        proc.stop()
        raise
    return proc, port, rest


def grpc_stub(address: str):
    import grpc

    from serving import protos

    protos.load()
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    return prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(address))


def request(x: np.ndarray, model: str = "mlp"):
    from tensorflow_serving.apis import predict_pb2

    from serving import tensors

    req = predict_pb2.PredictRequest()
    req.model_spec.name = model
    tensors.from_array(x, req.inputs["x"])
    return req


def load_test(port: int, x: np.ndarray, clients: int, seconds: float) -> tuple[float, int]:
    """`clients` threads, each with its own channel, sending batch-1 Predicts; (req/s, errors)."""
    req = request(x)
    counts, errors = [0] * clients, [0] * clients
    deadline = [0.0]
    start = threading.Barrier(clients + 1, action=lambda: deadline.__setitem__(0, time.perf_counter() + seconds))

    def worker(i: int) -> None:
        stub = grpc_stub(f"127.0.0.1:{port}")
        stub.Predict(req, timeout=30)
        start.wait()
        while time.perf_counter() < deadline[0]:
            try:
                stub.Predict(req, timeout=30)
                counts[i] += 1
            except Exception:  # noqa: BLE001 - counted and reported
                errors[i] += 1

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    return sum(counts) / (time.perf_counter() - t0), sum(errors)


def mean_batch_size(rest_port: int) -> float:
    """Rows per model call, from the server's own `processed_batch_size` histogram."""
    page = urllib.request.urlopen(f"http://127.0.0.1:{rest_port}/metrics", timeout=10).read().decode()
    values = {line.split("{")[0].rsplit("_", 1)[-1]: float(line.split()[-1]) for line in page.splitlines()
              if line.startswith(":tensorflow:serving:batching_session:processed_batch_size_s")
              or line.startswith(":tensorflow:serving:batching_session:processed_batch_size_c")}
    return values.get("sum", 0.0) / values["count"] if values.get("count") else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=4096)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--requests", type=int, default=200, help="sequential requests per latency series")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--quick", action="store_true", help="fewer requests, shorter runs")
    args = parser.parse_args()
    if args.quick:
        args.requests, args.seconds = 50, 3.0

    from components.common import quiet

    quiet.import_tensorflow()
    with tempfile.TemporaryDirectory(prefix="retina-bench-serving-") as tmp:
        measure(Path(tmp), args)


def measure(work: Path, args: argparse.Namespace) -> None:
    from components.common import quiet

    with quiet.captured_stderr():
        build_mlp(work, args.width, args.layers)
    x = np.random.default_rng(1).random((1, args.width), dtype=np.float32)
    local_version = in_process(work)

    proc, port, rest = start_server(work, batching=False, clients=args.clients)
    try:
        stub, req = grpc_stub(f"127.0.0.1:{port}"), request(x)
        body = json.dumps({"instances": x.tolist()}).encode()
        url = f"http://127.0.0.1:{rest}/v1/models/mlp:predict"
        times = interleaved({
            "local": lambda: local_version.run("serving_default", {"x": x}, ["y"]),
            "grpc": lambda: stub.Predict(req, timeout=30),
            "rest": lambda: urllib.request.urlopen(urllib.request.Request(url, data=body)).read(),
        }, args.requests)
        local_version.close()
        off, off_errors = load_test(port, x, args.clients, args.seconds)
    finally:
        proc.stop()
    proc, port, rest = start_server(work, batching=True, clients=args.clients)
    try:
        on, on_errors = load_test(port, x, args.clients, args.seconds)
        rows_per_call = mean_batch_size(rest)
    finally:
        proc.stop()

    p_local, p_grpc, p_rest = (percentile(times[k], 50) for k in ("local", "grpc", "rest"))
    cores = os.cpu_count() or 1
    ceiling = cores / (p_local / 1000.0)
    print(f"model: MLP {args.layers} x {args.width} (float32 weights {args.layers * args.width ** 2 * 4 / 1e6:.0f} MB), "
          f"{cores} cores")
    print(f"batch-1 p50: in-process {p_local:.2f} ms | gRPC {p_grpc:.2f} ms | REST {p_rest:.2f} ms")
    print(f"  gRPC / in-process = {p_grpc / p_local:.2f}x (+{p_grpc - p_local:.2f} ms; target <= 1.2x or +1 ms)")
    print(f"  REST / gRPC       = {p_rest / p_grpc:.2f}x")
    print(f"{args.clients} clients: batching off {off:.0f} req/s ({off_errors} errors) | on {on:.0f} req/s "
          f"({on_errors} errors) -> on/off = {on / off:.2f}x (target >= 2x); {rows_per_call:.1f} rows per model call")
    print(f"server req/s (batching off) / in-process ceiling (cores / per-call = {ceiling:.0f} req/s) = "
          f"{off / ceiling:.2f}; with batching {on / ceiling:.2f}")


if __name__ == "__main__":
    main()
