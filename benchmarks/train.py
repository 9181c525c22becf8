"""Training cost per image: model FLOPs at production sizes, and the train step measured on this CPU.

Prints, for the architectures and input sizes the pipelines use (infra/SCALING.md reads these):
- forward FLOPs per image, counted by TensorFlow's profiler on the frozen inference graph of the Keras
  model (a multiply-add counts 2), and parameters;
- a training step's FLOPs per image taken as 3x forward (forward + two backward matmuls/convs: input
  and weight gradients) — checked here, not assumed: the measured ratio of train-step time to
  forward-only time on the same batch is printed beside it;
- measured on this CPU for one small configuration: images/s of `model.predict_on_batch` (baseline)
  and `model.train_on_batch` (the step), their ratio, and the FLOP/s the train step reached;
- the training input pipeline (`components.common.shards.make_dataset`: gzip TFRecord read, PNG decode,
  augmentation) on real-photo records (skimage's retina through the project's preprocessing, 512 px):
  images/s on this machine's cores, and the record's size on disk (what a preprocessed dataset weighs).

    .venv/bin/python benchmarks/train.py            # ~2 minutes on 2 cores
    .venv/bin/python benchmarks/train.py --quick    # FLOPs table + a shorter CPU measurement
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# (model, modality, input size, classes): what the training pipeline runs at full scale.
PRODUCTION = [
    ("deepsense", "fundus", 512, 5),
    ("efficientnetb0", "fundus", 512, 5),
    ("resnet50", "fundus", 512, 5),
    ("oct_cnn", "oct", 224, 4),
    ("efficientnetb0", "oct", 224, 4),
]


def forward_flops(model, image_size: int) -> int:
    """FLOPs of one image's forward pass (inference graph, variables frozen), by TensorFlow's profiler."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2
    from tensorflow.python.profiler import model_analyzer, option_builder

    fn = tf.function(lambda x: model(x, training=False))
    concrete = fn.get_concrete_function(tf.TensorSpec([1, image_size, image_size, 3], tf.float32))
    frozen = convert_variables_to_constants_v2(concrete)
    opts = option_builder.ProfileOptionBuilder(option_builder.ProfileOptionBuilder.float_operation())
    opts = opts.with_empty_output().build()
    return int(model_analyzer.profile(frozen.graph, options=opts).total_float_ops)


def flops_table() -> None:
    from components.train.models import build_model

    print(f"{'model':15s} {'modality':8s} {'size':>5s} {'params':>10s} {'fwd GFLOP/img':>14s} {'train GFLOP/img':>16s}")
    for name, modality, size, classes in PRODUCTION:
        model = build_model(name, modality, size, classes)
        fwd = forward_flops(model, size)
        print(f"{name:15s} {modality:8s} {size:5d} {model.count_params():10,d} {fwd / 1e9:14.2f} "
              f"{3 * fwd / 1e9:16.2f}")


def time_steps(step, n: int) -> float:
    step()  # trace / warm up
    step()
    start = time.perf_counter()
    for _ in range(n):
        step()
    return (time.perf_counter() - start) / n


def cpu_measurement(name: str, size: int, batch: int, steps: int) -> None:
    import keras

    from components.train.models import build_model

    model = build_model(name, "fundus", size, 5)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=keras.losses.SparseCategoricalCrossentropy())
    rng = np.random.default_rng(0)
    x = rng.random((batch, size, size, 3), dtype=np.float32)
    y = rng.integers(0, 5, batch)
    forward_s = time_steps(lambda: model.predict_on_batch(x), steps)
    train_s = time_steps(lambda: model.train_on_batch(x, y), steps)
    fwd = forward_flops(model, size)
    print(f"\nCPU ({os.cpu_count()} cores), {name} at {size} px, batch {batch}, {steps} timed steps:")
    print(f"  forward only (baseline) : {batch / forward_s:8.1f} images/s")
    print(f"  train step              : {batch / train_s:8.1f} images/s   "
          f"time ratio train/forward {train_s / forward_s:.2f}x (FLOP model: 3x)")
    print(f"  train step reached      : {3 * fwd * batch / train_s / 1e9:8.1f} GFLOP/s "
          f"({fwd / 1e9:.3f} GFLOP forward per image)")


def input_pipeline(size: int, n: int, batch: int) -> None:
    import tempfile
    from pathlib import Path

    import cv2
    import tensorflow as tf
    from skimage import data

    from components.common.shards import make_dataset
    from components.preprocess.ops import PreprocessParams, preprocess_fundus

    image = preprocess_fundus(data.retina(), PreprocessParams(modality="fundus", image_size=size)).image
    variants = [np.ascontiguousarray(np.rot90(image, k)) for k in range(4)]
    pngs = [cv2.imencode(".png", v[..., ::-1])[1].tobytes() for v in variants]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench-00000-of-00001.tfrecord.gz"
        with tf.io.TFRecordWriter(str(path), options="GZIP") as writer:
            for i in range(n):
                ex = tf.train.Example(features=tf.train.Features(feature={
                    "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[pngs[i % 4]])),
                    "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[i % 5]))}))
                writer.write(ex.SerializeToString())
        per_record = path.stat().st_size / n
        ds = make_dataset([path], "fundus", size, batch, training=True)
        for _ in ds:  # warm-up epoch (tracing, file cache)
            pass
        start = time.perf_counter()
        for _ in ds:
            pass
        rate = n / (time.perf_counter() - start)
    print(f"\ninput pipeline ({os.cpu_count()} cores), {size} px fundus PNG records, batch {batch}, training=True:")
    print(f"  {rate:8.1f} images/s ({rate / (os.cpu_count() or 1):.1f} per core); "
          f"{per_record / 1024:.0f} KiB per record on disk (gzip TFRecord)")


def main() -> None:
    print(f"load average at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores "
          "(a shared machine: per-core rates below are lower bounds when it exceeds the core count)\n")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--model", default="deepsense")
    parser.add_argument("--size", type=int, default=None, help="CPU measurement input size (default 256; quick 128)")
    args = parser.parse_args()
    flops_table()
    size = args.size or (128 if args.quick else 256)
    cpu_measurement(args.model, size, batch=16, steps=3 if args.quick else 8)
    input_pipeline(512, n=64 if args.quick else 256, batch=16)
    print(f"\nload average at end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
