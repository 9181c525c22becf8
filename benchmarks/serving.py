"""gRPC Predict latency vs the in-process call; throughput under 16 concurrent clients, batching on vs off.

A model from `components.train.models.build_model` is exported with `serving.export.export_saved_model`
into a TF Serving repository and served by `serving.server.start_server` on 127.0.0.1 (the same server
`retina serve` runs). Measured in one run:

- latency at batch 1 (`serving_default`, float32 `[1, S, S, 3]`): p50 / p99 of
  - in-process: the loaded SavedModel's `serving_default` called directly (what the server itself runs),
  - gRPC: `ServingClient.predict_tensor` through the official `tensorflow_serving.apis` stubs,
  and their ratio (the cost of the wire: serialisation, gRPC, thread hand-off);
- the same for `predict_image` (encoded JPEG bytes, decode + preprocessing in TF ops) over gRPC;
- throughput: `--clients` threads (default 16), each with its own channel, sending batch-1 requests
  for `--seconds`, against a server with `--enable_batching` off and then on; requests/s, p50/p99, and
  the on/off ratio.

    .venv/bin/python benchmarks/serving.py [--model oct_cnn] [--size 128] [--width 0.5] [--clients 16]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

# This file is named like the `serving` package it measures; drop its own folder from the import path so
# `import serving` finds the package, not this script.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]


def percentiles(samples: list[float]) -> tuple[float, float]:
    arr = np.asarray(samples) * 1000.0
    return float(np.percentile(arr, 50)), float(np.percentile(arr, 99))


def timed(fn, n: int, warmup: int = 5) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def load_test(address: str, model: str, image: np.ndarray, clients: int, seconds: float) -> dict[str, float]:
    """`clients` threads, each with its own channel, send batch-1 Predicts until the deadline."""
    from serving.client import ServingClient

    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients
    deadline = [0.0]
    # The clock starts when every client is connected and warm: the barrier's action sets the deadline
    # before any thread is released.
    start = threading.Barrier(clients + 1, action=lambda: deadline.__setitem__(0, time.perf_counter() + seconds))

    def worker(i: int) -> None:
        with ServingClient(address) as client:
            client.predict_tensor(model, image)  # connect + warm before the clock starts
            start.wait()
            while time.perf_counter() < deadline[0]:
                t0 = time.perf_counter()
                try:
                    client.predict_tensor(model, image)
                except Exception:  # noqa: BLE001 - counted and reported, never hidden
                    errors[i] += 1
                    continue
                latencies[i].append(time.perf_counter() - t0)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    flat = [x for per in latencies for x in per]
    p50, p99 = percentiles(flat) if flat else (float("nan"), float("nan"))
    return {"requests": len(flat), "errors": sum(errors), "rps": len(flat) / elapsed, "p50": p50, "p99": p99}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="oct_cnn", help="builder name (deepsense, oct_cnn, ...)")
    parser.add_argument("--modality", default="oct", choices=["fundus", "oct"])
    parser.add_argument("--size", type=int, default=128, help="model input size in px")
    parser.add_argument("--width", type=float, default=0.5, help="filter multiplier for deepsense/oct_cnn")
    parser.add_argument("--requests", type=int, default=200, help="sequential requests per latency series")
    parser.add_argument("--clients", type=int, default=16, help="concurrent client threads for throughput")
    parser.add_argument("--seconds", type=float, default=8.0, help="length of each throughput run")
    parser.add_argument("--max-batch-size", type=int, default=32, help="server's largest merged batch")
    parser.add_argument("--quick", action="store_true", help="fewer requests and shorter runs (smoke check)")
    args = parser.parse_args()
    if args.quick:
        args.requests, args.seconds = 40, 2.0

    import cv2
    import tensorflow as tf

    from components.common.config import CLASS_NAMES
    from components.preprocess.ops import PreprocessParams
    from components.train.models import build_model
    from infra.local.synthetic import render_fundus, render_oct
    from serving.client import ServingClient
    from serving.export import export_saved_model
    from serving.server import start_server

    tf.keras.utils.set_random_seed(0)
    class_names = list(CLASS_NAMES[args.modality])
    model = build_model(args.model, args.modality, args.size, len(class_names), width=args.width)
    info = {"modality": args.modality, "model_name": args.model, "class_names": class_names,
            "image_size": args.size, "head": "softmax",
            "preprocessing": PreprocessParams(modality=args.modality, image_size=args.size).to_dict()}
    name = f"bench-{args.modality}"

    rng = np.random.default_rng(0)
    image = rng.random((1, args.size, args.size, 3)).astype(np.float32)
    if args.modality == "fundus":
        raw = render_fundus(2, rng, size=max(2 * args.size, 256))[0][..., ::-1]
    else:
        raw = render_oct(1, rng, size=max(2 * args.size, 256))[0]
    jpeg = cv2.imencode(".jpg", np.ascontiguousarray(raw), [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()

    with tempfile.TemporaryDirectory(prefix="retina-bench-serving-") as tmp:
        repository = Path(tmp) / "repo"
        export_saved_model(model, info, repository / name / "1")

        loaded = tf.saved_model.load(str(repository / name / "1"))
        tensor_fn = loaded.signatures["serving_default"]
        x = tf.constant(image)
        in_process = timed(lambda: tensor_fn(images=x)["probabilities"].numpy(), args.requests)
        keras_call = timed(lambda: model(x, training=False).numpy(), args.requests)

        device = "GPU" if tf.config.list_physical_devices("GPU") else "CPU only"
        print(f"model {args.model} ({args.modality}, {args.size}px, width {args.width}), "
              f"{model.count_params():,} parameters, {device}")
        print("latency, batch 1, sequential requests (ms)")
        rows: list[tuple[str, list[float]]] = [("keras model(x) in process", keras_call),
                                               ("SavedModel serving_default in process", in_process)]

        server = start_server(model_base_path=str(repository / name), model_name=name, port=0,
                              poll_interval_s=0, max_batch_size=args.max_batch_size)
        try:
            with ServingClient(server.address) as client:
                over_grpc = timed(lambda: client.predict_tensor(name, image), args.requests)
                image_grpc = timed(lambda: client.predict_images(name, [jpeg]), args.requests)
            rows += [("gRPC Predict serving_default", over_grpc), ("gRPC Predict predict_image (JPEG)", image_grpc)]
            for label, samples in rows:
                p50, p99 = percentiles(samples)
                print(f"  {label:40s} p50 {p50:7.2f}  p99 {p99:7.2f}")
            base50, base99 = percentiles(in_process)
            grpc50, grpc99 = percentiles(over_grpc)
            print(f"  gRPC / in-process serving_default: p50 {grpc50 / base50:5.2f}x  p99 {grpc99 / base99:5.2f}x")
            off = load_test(server.address, name, image, args.clients, args.seconds)
        finally:
            server.stop(grace=2.0)

        server = start_server(model_base_path=str(repository / name), model_name=name, port=0,
                              poll_interval_s=0, max_batch_size=args.max_batch_size, enable_batching=True)
        try:
            on = load_test(server.address, name, image, args.clients, args.seconds)
        finally:
            server.stop(grace=2.0)

    print(f"throughput, {args.clients} concurrent clients, batch 1, {args.seconds:.0f} s each")
    for label, r in (("batching off", off), ("batching on", on)):
        print(f"  {label:13s} {r['rps']:8.1f} req/s  p50 {r['p50']:7.2f} ms  p99 {r['p99']:7.2f} ms  "
              f"({r['requests']} requests, {r['errors']} errors)")
    ratio = on["rps"] / off["rps"] if off["rps"] else float("nan")
    print(f"  batching on / off: {ratio:5.2f}x requests/s")


if __name__ == "__main__":
    main()
