"""What filters look for: first-layer kernels as colour tiles, and activation maximisation.

Activation maximisation (Erhan et al. 2009; Olah et al. 2017 for the regularisers): start from grey
noise and follow the gradient of a filter's mean activation with respect to the input, with an L2
pull towards grey, a Gaussian blur every few steps and random jitter (rolls), which keep the result
from turning into high-frequency adversarial noise. All requested filters of a layer are optimised
together as one batch (image i maximises filter i), so N filters cost one probe and N-image steps.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from components.common.errors import RetinaError
from components.explain import surgery
from components.explain.feature_maps import tile_grid


def first_conv_kernels(model: Any) -> tuple[str, np.ndarray]:
    """(layer path, kernel [kh, kw, in, out]) of the first Conv2D in graph order."""
    import keras

    for ref in surgery.conv_layers(model):
        if isinstance(ref.layer, keras.layers.Conv2D) and not isinstance(ref.layer, keras.layers.DepthwiseConv2D):
            return ref.path, np.asarray(ref.layer.kernel)
    raise RetinaError(f"model {model.name!r} has no Conv2D layer")


def kernel_tiles(kernel: np.ndarray, tile_size: int = 32, max_filters: int = 64, columns: int = 8) -> np.ndarray:
    """First-layer kernels as colour tiles: each filter's [kh, kw, 3] weights min-max scaled to RGB.

    Kernels with other than 3 input channels are shown as grey (their mean over inputs).
    """
    import cv2

    k = kernel[..., :max_filters]
    tiles = []
    for j in range(k.shape[-1]):
        w = k[..., j]
        w = w if w.shape[-1] == 3 else np.repeat(w.mean(-1, keepdims=True), 3, axis=-1)
        lo, hi = float(w.min()), float(w.max())
        w = (w - lo) / (hi - lo) if hi - lo > 1e-12 else np.full_like(w, 0.5)
        tile = cv2.resize((w * 255).astype(np.uint8), (tile_size, tile_size), interpolation=cv2.INTER_NEAREST)
        tiles.append(tile)
    return tile_grid(tiles, columns=columns)


def _gaussian_kernel(sigma: float, channels: int) -> np.ndarray:
    radius = max(1, int(round(2 * sigma)))
    x = np.arange(-radius, radius + 1, dtype=np.float32)
    g = np.exp(-(x**2) / (2 * sigma**2))
    g /= g.sum()
    k2 = np.outer(g, g)[:, :, None, None]
    return np.repeat(k2, channels, axis=2).astype(np.float32)


def maximize_activations(
    model: Any,
    layer: str,
    filters: Sequence[int] | int = 16,
    steps: int = 64,
    step_size: float = 0.05,
    l2: float = 1e-3,
    blur_every: int = 4,
    blur_sigma: float = 0.5,
    jitter: int = 2,
    seed: int = 0,
    image_size: int | None = None,
) -> np.ndarray:
    """Gradient ascent on the input for each filter of `layer`; returns images [F, S, S, 3] in [0, 1].

    `filters` is a list of channel indices or a count (the first N channels).
    """
    import tensorflow as tf

    ref = surgery.find_layer(model, layer)
    if ref.rank != 4:
        raise RetinaError(f"layer {ref.path!r} has no spatial output (shape {ref.shape})")
    channels = int(ref.shape[-1])
    idx = list(range(min(filters, channels))) if isinstance(filters, int) else [int(f) for f in filters]
    bad = [f for f in idx if not 0 <= f < channels]
    if bad:
        raise RetinaError(f"layer {ref.path!r} has {channels} filters; no filter {bad[0]}")
    probe = surgery.build_probe(model, [ref.path], pre_softmax=False)
    in_shape = model.inputs[0].shape
    size = image_size or int(in_shape[1])
    depth = int(in_shape[-1])
    rng = np.random.default_rng(seed)
    x = tf.Variable(0.5 + 0.05 * rng.standard_normal((len(idx), size, size, depth)).astype(np.float32))
    onehot = tf.one_hot(idx, channels, dtype=tf.float32)[:, None, None, :]
    blur = tf.constant(_gaussian_kernel(blur_sigma, depth))
    radius = blur.shape[0] // 2
    reflect = [[0, 0], [radius, radius], [radius, radius], [0, 0]]
    for step in range(steps):
        dy, dx = (int(v) for v in rng.integers(-jitter, jitter + 1, size=2)) if jitter else (0, 0)
        with tf.GradientTape() as tape:
            shifted = tf.roll(x, shift=(dy, dx), axis=(1, 2))
            acts, _ = probe(shifted)
            act = tf.cast(acts[0], tf.float32)
            objective = tf.reduce_mean(act * onehot, axis=(1, 2, 3)) * channels
            loss = tf.reduce_sum(objective) - l2 * tf.reduce_sum(tf.square(x - 0.5))
        grad = tape.gradient(loss, x)
        norm = tf.sqrt(tf.reduce_mean(tf.square(grad), axis=(1, 2, 3), keepdims=True)) + 1e-8
        x.assign(tf.clip_by_value(x + step_size * grad / norm, 0.0, 1.0))
        if blur_every and (step + 1) % blur_every == 0:
            padded = tf.pad(x, reflect, mode="REFLECT")  # no dark frame from zero padding
            x.assign(tf.nn.depthwise_conv2d(padded, blur, strides=[1, 1, 1, 1], padding="VALID"))
    return x.numpy()


def images_grid(images: np.ndarray, tile_size: int = 64, columns: int = 8) -> np.ndarray:
    """[F, S, S, C] images in [0, 1] (each contrast-stretched) -> one uint8 RGB grid."""
    import cv2

    tiles = []
    for img in images:
        lo, hi = float(img.min()), float(img.max())
        img = (img - lo) / (hi - lo) if hi - lo > 1e-12 else img
        u8 = (np.clip(img, 0, 1) * 255).astype(np.uint8)
        if u8.shape[-1] == 1:
            u8 = np.repeat(u8, 3, axis=-1)
        tiles.append(cv2.resize(u8, (tile_size, tile_size), interpolation=cv2.INTER_AREA))
    return tile_grid(tiles, columns=columns)
