"""Feature maps of every convolutional layer, from one forward pass, rendered as grids.

The OCT seed's "pass any model, find all its conv layers, plot 32 maps of each": the conv layers are
found through the traced graph (`surgery.conv_layers`, nested backbones included) and a single probe
model returns all of their outputs at once, instead of one truncated model and one forward pass per
layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from components.common.errors import RetinaError
from components.explain import surgery

SELECTIONS = ("first", "most_active")


@dataclass
class LayerMaps:
    layer: str
    maps: np.ndarray  # [N, h, w, k] float32 (raw activations of the chosen channels)
    channels: np.ndarray  # [N, k] channel index of each map
    num_channels: int  # channels the layer has


def feature_maps(
    model: Any,
    images: Any,
    layers: Sequence[str] | None = None,
    maps_per_layer: int = 32,
    selection: str = "first",
    batch_size: int = 8,
) -> list[LayerMaps]:
    """Activations of `maps_per_layer` channels of every conv layer (or of `layers`) for each image.

    `selection="first"` keeps channels 0..k-1 (comparable across images); `"most_active"` keeps, per
    image, the k channels with the largest mean activation (what the layer responds to here).
    """
    if selection not in SELECTIONS:
        raise RetinaError(f"unknown feature-map selection {selection!r}: expected one of {', '.join(SELECTIONS)}")
    if layers:
        refs = [surgery.find_layer(model, name) for name in layers]
        flat = [r for r in refs if r.rank != 4]
        if flat:
            raise RetinaError(f"layer {flat[0].path!r} has no spatial output (shape {flat[0].shape})")
    else:
        refs = surgery.conv_layers(model)
        if not refs:
            raise RetinaError(f"model {model.name!r} has no convolutional layer")
    paths = [r.path for r in refs]
    probe = surgery.build_probe(model, paths, pre_softmax=False)
    images = np.asarray(images, dtype=np.float32)
    collected: dict[str, list[np.ndarray]] = {p: [] for p in paths}
    chosen: dict[str, list[np.ndarray]] = {p: [] for p in paths}
    totals: dict[str, int] = {}
    for start in range(0, len(images), batch_size):
        outs, _ = probe.forward(images[start : start + batch_size])  # one compiled pass for all layers
        for path, out in zip(paths, outs, strict=True):
            channels = int(out.shape[-1])
            totals[path] = channels
            k = min(maps_per_layer, channels)
            if selection == "first":  # a slice: only the kept channels are copied out
                idx = np.tile(np.arange(k), (int(out.shape[0]), 1))
                collected[path].append(np.asarray(out if k == channels else out[..., :k], dtype=np.float32))
            else:
                arr = np.asarray(out, dtype=np.float32)
                idx = np.argsort(-arr.mean(axis=(1, 2)), axis=-1)[:, :k]
                collected[path].append(np.take_along_axis(arr, idx[:, None, None, :], axis=-1))
            chosen[path].append(idx)
    return [LayerMaps(p, _joined(collected[p]), _joined(chosen[p]), totals[p]) for p in paths]


def _joined(parts: list[np.ndarray]) -> np.ndarray:
    """One array from the batches' parts, without copying when there is one batch (maps are large)."""
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def colorize(values: np.ndarray, colormap: str = "viridis") -> np.ndarray:
    """[H, W] floats in [0, 1] -> uint8 RGB through an OpenCV colour map."""
    import cv2

    cmap = {"viridis": cv2.COLORMAP_VIRIDIS, "jet": cv2.COLORMAP_JET, "inferno": cv2.COLORMAP_INFERNO}[colormap]
    u8 = np.clip(values * 255.0, 0, 255).astype(np.uint8)
    return cv2.cvtColor(cv2.applyColorMap(u8, cmap), cv2.COLOR_BGR2RGB)


def tile_grid(tiles: Sequence[np.ndarray], columns: int = 8, pad: int = 2, background: int = 255) -> np.ndarray:
    """Equal-sized uint8 RGB tiles -> one grid image with `pad` px gutters."""
    if not tiles:
        raise RetinaError("nothing to put in a grid")
    h, w = tiles[0].shape[:2]
    columns = max(1, min(columns, len(tiles)))
    rows = -(-len(tiles) // columns)
    grid = np.full((rows * (h + pad) + pad, columns * (w + pad) + pad, 3), background, dtype=np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, columns)
        y, x = pad + r * (h + pad), pad + c * (w + pad)
        grid[y : y + h, x : x + w] = tile if tile.ndim == 3 else tile[..., None]
    return grid


def render_maps_grid(maps: np.ndarray, tile_size: int = 64, columns: int = 8) -> np.ndarray:
    """[h, w, k] activations -> grid of k colour tiles, each min-max scaled on its own."""
    import cv2

    tiles = []
    for j in range(maps.shape[-1]):
        m = maps[..., j]
        lo, hi = float(m.min()), float(m.max())
        norm = (m - lo) / (hi - lo) if hi - lo > 1e-12 else np.zeros_like(m)
        interp = cv2.INTER_NEAREST if m.shape[0] < tile_size else cv2.INTER_AREA
        tiles.append(colorize(cv2.resize(norm.astype(np.float32), (tile_size, tile_size), interpolation=interp)))
    return tile_grid(tiles, columns=columns)
