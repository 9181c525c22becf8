"""Explanation speed against its floors and against the peer users would pick instead (tf-keras-vis).

For a batch of N images at S px on a DeepSense-like model (`components.train.models.build_model`):
- floor: one forward + backward pass of the batch through the probe, compiled (the least any
  Grad-CAM costs);
- ours: `GradCAM(model)(images)` — surgery done once, one tape, weighting, upsampling, normalisation;
- loop: the Keras `grad_cam` example's way, one image at a time (one tape per image);
- feature maps of every conv layer (one multi-output pass) vs one forward pass of the model
  (`model.predict_on_batch`, Keras's compiled inference path);
- tf-keras-vis 0.8.7 `Gradcam` and `Scorecam` (the `bench` extra) on the same model, images, targets and
  layer as ours, when it is installed. Score-CAM uses the same number of channels (`max_N`) on both sides.
All timings from the same run; each is the best of `--repeat` after one warm-up.

    .venv/bin/python benchmarks/explain.py [--size 128] [--batch 64] [--model deepsense] [--width 0.25]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np


def best_of(fn: Callable[[], object], repeat: int) -> float:
    fn()  # warm-up (graph tracing, allocations)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def best_of_interleaved(fns: dict[str, Callable[[], object]], repeat: int) -> dict[str, float]:
    """Best time of each function, the functions taking turns in every round: on a shared machine the
    load drifts, and timing A's rounds and then B's would compare A and B under different loads."""
    for fn in fns.values():
        fn()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: min(ts) for name, ts in times.items()}


def peer_cams(model, images, targets, layer: str, channels: int) -> dict[str, Callable[[], object]] | None:
    """tf-keras-vis's Grad-CAM and Score-CAM as a user would call them, or None when not installed."""
    try:
        from tf_keras_vis.gradcam import Gradcam
        from tf_keras_vis.scorecam import Scorecam
        from tf_keras_vis.utils.model_modifiers import ReplaceToLinear
        from tf_keras_vis.utils.scores import CategoricalScore
    except ImportError:
        return None
    score = CategoricalScore([int(t) for t in targets])
    gradcam = Gradcam(model, model_modifier=ReplaceToLinear(), clone=True)
    scorecam = Scorecam(model, model_modifier=ReplaceToLinear(), clone=True)
    return {
        "gradcam": lambda: gradcam(score, images, penultimate_layer=layer),
        "scorecam": lambda: scorecam(score, images, penultimate_layer=layer, max_N=channels),
    }


def gradcam_timings(cam, images, targets, repeat: int) -> dict[str, float]:
    """Floor (compiled forward+backward), ours batched, and the Keras example's per-image loop."""
    import tensorflow as tf

    probe = cam.probe
    x = tf.constant(images)

    @tf.function(reduce_retracing=True)
    def floor_fn(batch):
        with tf.GradientTape() as tape:
            acts, scores = probe.probe(batch)
            total = tf.reduce_sum(tf.reduce_max(scores, axis=-1))
        return tape.gradient(total, acts[0])

    def per_image_loop() -> None:  # the Keras example: one image, one tape, at a time
        for i in range(len(images)):
            with tf.GradientTape() as tape:
                acts, scores = probe.probe(x[i : i + 1])
                top = tf.reduce_max(scores[0])
            grads = tape.gradient(top, acts[0])
            heat = tf.nn.relu(tf.reduce_sum(acts[0][0] * tf.reduce_mean(grads, axis=(0, 1, 2)), -1))
            (heat / (tf.reduce_max(heat) + 1e-8)).numpy()

    timings = best_of_interleaved({"floor": lambda: floor_fn(x).numpy(),
                                   "ours": lambda: cam(images, targets=targets, batch_size=len(images))}, repeat)
    return timings | {"loop": best_of(per_image_loop, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--model", default="deepsense")
    parser.add_argument("--width", type=float, default=0.25, help="filter multiplier for deepsense/oct_cnn")
    parser.add_argument("--scorecam-images", type=int, default=8, help="images for the Score-CAM comparison")
    parser.add_argument("--channels", type=int, default=32, help="Score-CAM channels (ours max_channels, peer max_N)")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--grpc", action="store_true",
                        help="instead: occlusion/RISE of a served model through gRPC vs in process (explain_served.py)")
    from explain_served import add_arguments, run

    add_arguments(parser)
    args = parser.parse_args()
    if args.grpc:
        run(args.size, args.images, args.masks, args.predict_batch, args.repeat, args.width)
        return

    import keras

    from components.explain.cam import GradCAM, ScoreCAM
    from components.explain.feature_maps import feature_maps
    from components.train.models import build_model

    keras.utils.set_random_seed(0)
    model = build_model(args.model, "fundus", args.size, 5, width=args.width)
    images = np.random.default_rng(0).random((args.batch, args.size, args.size, 3)).astype(np.float32)
    cam = GradCAM(model)
    targets = np.asarray(model.predict_on_batch(images)).argmax(-1)
    t = gradcam_timings(cam, images, targets, args.repeat)
    t |= best_of_interleaved({"forward": lambda: np.asarray(model.predict_on_batch(images)),
                              "maps": lambda: feature_maps(model, images, batch_size=args.batch)}, args.repeat)
    n_conv = len(feature_maps(model, images[:1], maps_per_layer=1))
    print(f"model {args.model} width {args.width}, {args.batch} images of {args.size}px, CAM layer {cam.probe.layer}")
    print(f"  forward+backward floor   {t['floor'] * 1000:9.1f} ms")
    print(f"  batched Grad-CAM         {t['ours'] * 1000:9.1f} ms   {t['ours'] / t['floor']:5.2f}x the floor")
    print(f"  per-image loop           {t['loop'] * 1000:9.1f} ms   {t['loop'] / t['ours']:5.2f}x slower than batched")
    print(f"  one forward pass         {t['forward'] * 1000:9.1f} ms")
    print(f"  feature maps, {n_conv:2d} layers  {t['maps'] * 1000:9.1f} ms   {t['maps'] / t['forward']:5.2f}x one forward pass")

    few, few_targets = images[: args.scorecam_images], targets[: args.scorecam_images]
    score = ScoreCAM(probe=cam.probe, max_channels=args.channels)
    t["scorecam"] = best_of(lambda: score(few, targets=few_targets), 1)
    peer = peer_cams(model, images, targets, cam.probe.layer, args.channels)
    if peer is None:
        print("  tf-keras-vis not installed (pip install '.[bench]'): no peer comparison")
        return
    peer_few = peer_cams(model, few, few_targets, cam.probe.layer, args.channels)
    t["peer_gradcam"] = best_of(peer["gradcam"], args.repeat)
    t["peer_scorecam"] = best_of(peer_few["scorecam"], 1)
    print(f"  tf-keras-vis Grad-CAM    {t['peer_gradcam'] * 1000:9.1f} ms   ours is {t['peer_gradcam'] / t['ours']:5.2f}x as fast")
    print(f"  Score-CAM ({len(few)} images, {args.channels} channels): ours {t['scorecam'] * 1000:.0f} ms, "
          f"tf-keras-vis {t['peer_scorecam'] * 1000:.0f} ms   ours is {t['peer_scorecam'] / t['scorecam']:5.2f}x as fast")


if __name__ == "__main__":
    main()
