"""Batched Grad-CAM vs its floor and vs a per-image loop; feature maps of every layer vs one forward pass.

For a batch of N images at S px on a DeepSense-like model (`components.train.models.build_model`):
- floor: one forward + backward pass of the batch through the probe (the least any Grad-CAM costs);
- ours: `GradCAM(model)(images)` — surgery done once, one tape, weighting, upsampling, normalisation;
- loop: the Keras `grad_cam` example's way, one image at a time (one tape per image);
- feature maps of every conv layer (one multi-output pass) vs one plain forward pass of the model.
All timings from the same run; each is the best of `--repeat` after one warm-up.

    .venv/bin/python benchmarks/explain.py [--size 224] [--batch 32] [--model deepsense] [--width 0.5]
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def best_of(fn, repeat: int) -> float:
    fn()  # warm-up (graph tracing, allocations)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--model", default="deepsense")
    parser.add_argument("--width", type=float, default=0.5, help="filter multiplier for deepsense/oct_cnn")
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()

    import tensorflow as tf

    from components.explain.cam import GradCAM
    from components.explain.feature_maps import feature_maps
    from components.train.models import build_model

    tf.keras.utils.set_random_seed(0)
    model = build_model(args.model, "fundus", args.size, 5, width=args.width)
    images = np.random.default_rng(0).random((args.batch, args.size, args.size, 3)).astype(np.float32)
    cam = GradCAM(model)
    probe = cam.probe
    x = tf.constant(images)

    def floor() -> None:
        with tf.GradientTape() as tape:
            acts, scores = probe.probe(x)
            total = tf.reduce_sum(tf.reduce_max(scores, axis=-1))
        tape.gradient(total, acts[0]).numpy()

    def batched() -> None:
        cam(images, batch_size=args.batch)

    def per_image_loop() -> None:  # the Keras example: one image, one tape, at a time
        for i in range(len(images)):
            with tf.GradientTape() as tape:
                acts, scores = probe.probe(x[i : i + 1])
                top = tf.reduce_max(scores[0])
            grads = tape.gradient(top, acts[0])
            weights = tf.reduce_mean(grads, axis=(0, 1, 2))
            heat = tf.nn.relu(tf.reduce_sum(acts[0][0] * weights, -1))
            (heat / (tf.reduce_max(heat) + 1e-8)).numpy()

    def forward() -> None:
        model(x, training=False).numpy()

    def all_maps() -> None:
        feature_maps(model, images, batch_size=args.batch)

    t_floor = best_of(floor, args.repeat)
    t_ours = best_of(batched, args.repeat)
    t_loop = best_of(per_image_loop, args.repeat)
    t_fwd = best_of(forward, args.repeat)
    t_maps = best_of(all_maps, args.repeat)
    n_conv = len(feature_maps(model, images[:1], maps_per_layer=1))
    print(f"model {args.model} width {args.width}, {args.batch} images of {args.size}px, CAM layer {cam.probe.layer}")
    print(f"  forward+backward floor   {t_floor * 1000:9.1f} ms")
    print(f"  batched Grad-CAM         {t_ours * 1000:9.1f} ms   {t_ours / t_floor:5.2f}x the floor")
    print(f"  per-image loop           {t_loop * 1000:9.1f} ms   {t_loop / t_ours:5.2f}x slower than batched")
    print(f"  one forward pass         {t_fwd * 1000:9.1f} ms")
    print(f"  feature maps, {n_conv:2d} layers  {t_maps * 1000:9.1f} ms   {t_maps / t_fwd:5.2f}x one forward pass")


if __name__ == "__main__":
    main()
