"""Perturbation explanations of a served model: images/s through gRPC vs the same method in process.

One DeepSense-like model is exported as a TF Serving SavedModel and served by the project's server on a
loopback port. RISE and occlusion explain the same images twice with the same masks: once with the
Keras model called in this process through a traced `tf.function` (the baseline: the same graph, no transport), once through batched Predict requests
(`components.explain.served.ServedModel`). The maps are the same (checked); the ratio is the price of
explaining a model you can only reach over the network. Each timing is the best of `--repeat` after a
warm-up, all in one run.

    .venv/bin/python benchmarks/explain.py --grpc [--size 128] [--images 4] [--masks 256]
    .venv/bin/python benchmarks/explain_served.py [same flags]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _best(fn, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def _serving_package() -> None:
    """`benchmarks/serving.py` shadows the `serving` package when this folder is on the import path."""
    here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
    if "serving" in sys.modules and not hasattr(sys.modules["serving"], "__path__"):
        del sys.modules["serving"]


def run(size: int = 128, images: int = 4, masks: int = 256, batch: int = 64, repeat: int = 1, width: float = 0.5) -> None:
    _serving_package()
    import keras

    from components.explain.perturbation import PerturbationConfig, explain_with_predictions
    from components.explain.served import ServedModel
    from components.preprocess.ops import PreprocessParams
    from components.train.models import build_model
    from serving.export import export_saved_model
    from serving.server import start_server

    keras.utils.set_random_seed(0)
    model = build_model("deepsense", "fundus", size, 5, width=width)
    info = {"modality": "fundus", "model_name": "deepsense", "class_names": [str(i) for i in range(5)],
            "image_size": size, "head": "softmax", "preprocessing": PreprocessParams(image_size=size).to_dict()}
    x = np.random.default_rng(0).random((images, size, size, 3)).astype(np.float32)
    config = PerturbationConfig(masks=masks, batch_size=batch)
    with tempfile.TemporaryDirectory() as tmp:
        export_saved_model(model, info, Path(tmp) / "bench" / "1")
        server = start_server(model_base_path=str(Path(tmp) / "bench"), model_name="bench", port=0, poll_interval_s=30)
        try:
            served = ServedModel(server.address, "bench")

            import tensorflow as tf

            compiled = tf.function(lambda b: model(b, training=False), reduce_retracing=True)

            def local(b: np.ndarray) -> np.ndarray:  # the fastest in-process call: a traced graph, as served
                return np.asarray(compiled(tf.constant(b)), np.float32)

            print(f"deepsense width {width}, {images} images of {size}px, {masks} RISE masks, occlusion "
                  f"{config.window:g}/{config.stride:g}, {batch} images per Predict request")
            for method in ("rise", "occlusion"):
                maps = {}

                def in_process(method: str = method, maps: dict = maps) -> None:
                    maps["local"] = explain_with_predictions(local, x, [method], config=config)[method].cams

                def through_grpc(method: str = method, maps: dict = maps) -> None:
                    maps["grpc"] = explain_with_predictions(served, x, [method], config=config)[method].cams

                t_local = _best(in_process, repeat)
                t_grpc = _best(through_grpc, repeat)
                same = float(np.abs(maps["local"] - maps["grpc"]).max())
                print(json.dumps({"method": method, "in_process_images_per_s": round(images / t_local, 3),
                                  "grpc_images_per_s": round(images / t_grpc, 3),
                                  "grpc_over_in_process_time": round(t_grpc / t_local, 3),
                                  "max_map_difference": round(same, 6)}))
            served.close()
        finally:
            server.stop(grace=1.0)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", type=int, default=4, help="images explained (served benchmark)")
    parser.add_argument("--masks", type=int, default=256, help="RISE masks per image (served benchmark)")
    parser.add_argument("--predict-batch", type=int, default=64, help="images per Predict request (served benchmark)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--width", type=float, default=0.5)
    parser.add_argument("--repeat", type=int, default=1)
    add_arguments(parser)
    args = parser.parse_args()
    run(args.size, args.images, args.masks, args.predict_batch, args.repeat, args.width)


if __name__ == "__main__":
    main()
