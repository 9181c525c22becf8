"""`tf.data` input from the preprocessing shards, and the checks that run before any training.

Contract (components/INTERFACES.md): gzip TFRecords `<data>/<split>/*.tfrecord.gz` with `image` (PNG),
`label` (int64), `image_id`, `patient_id`, `modality`, optional `mask`, plus `manifest.json`.
TensorFlow 2.21 ships no S3 filesystem, so `s3://` datasets are staged to a local cache first
(`stage_dataset`); tf.data then reads local files only.

Every shard is scanned once before training (`scan_shards`): a wrong or missing feature, a label out of
range or an unreadable file stops the run with a message naming the shard, before a model exists.
The scan reads labels only (no image decode), so its cost is one pass of I/O.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components.common import storage
from components.common.errors import DatasetError

MANIFEST = "manifest.json"
SHARD_SUFFIX = ".tfrecord.gz"
_STAGED_MARKER = ".retina-staged"


def read_manifest(data_uri: str) -> dict[str, Any]:
    uri = storage.join(data_uri, MANIFEST)
    if not storage.exists(uri):
        raise DatasetError(f"no {MANIFEST} in dataset (run `retina preprocess` first): {data_uri}")
    return storage.read_json(uri)


def default_cache_dir() -> Path:
    return Path(os.environ.get("RETINA_CACHE", Path(tempfile.gettempdir()) / "retina-cache"))


def stage_dataset(data_uri: str, cache_dir: str | Path | None = None) -> Path:
    """A local folder holding the dataset: the folder itself when local, a cached download for s3://.

    The cache key is the URI; a finished download leaves a marker (the manifest's hash) so a restarted
    (preempted) pod reuses it, while a dataset rewritten at the same URI is downloaded again.
    """
    data_uri = str(data_uri)
    if not storage.is_s3(data_uri):
        root = Path(data_uri)
        if not root.is_dir():
            raise DatasetError(f"no such dataset folder: {data_uri}")
        return root
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    local = cache / hashlib.sha1(data_uri.rstrip("/").encode()).hexdigest()[:16]
    manifest_uri = storage.join(data_uri, MANIFEST)
    if not storage.exists(manifest_uri):
        raise DatasetError(f"no {MANIFEST} in dataset (run `retina preprocess` first): {data_uri}")
    # the manifest's hash tells a finished download of this very dataset from a stale one at the same URI
    fingerprint = hashlib.sha1(storage.read_bytes(manifest_uri)).hexdigest()
    marker = local / _STAGED_MARKER
    if marker.exists() and marker.read_text() == fingerprint:
        return local
    shutil.rmtree(local, ignore_errors=True)
    storage.download_dir(data_uri, local)
    marker.write_text(fingerprint)
    return local


def split_shards(root: str | Path, split: str, manifest: dict[str, Any] | None = None) -> list[Path]:
    """Shard files of one split (from the manifest when it lists them, else by glob); empty -> DatasetError."""
    root = Path(root)
    listed = ((manifest or {}).get("splits", {}).get(split) or {}).get("shards")
    if listed:
        shards = [root / rel for rel in listed]
        missing = [str(s) for s in shards if not s.exists()]
        if missing:
            raise DatasetError(f"shard listed in the manifest is missing: {missing[0]}")
    else:
        shards = sorted((root / split).glob(f"*{SHARD_SUFFIX}"))
    if not shards:
        raise DatasetError(f"split {split!r} is empty: no {SHARD_SUFFIX} shards under {root / split}")
    return shards


@dataclass
class ShardScan:
    """Record counts found by `scan_shards` (the manifest's counts are not trusted for class weights)."""

    count: int = 0
    per_class: list[int] = field(default_factory=list)
    per_shard: dict[str, int] = field(default_factory=dict)


def scan_shards(shards: list[Path], num_classes: int, modality: str | None = None,
                check_decode: bool = True) -> ShardScan:
    """Read every record's features once; raise DatasetError naming the shard on the first problem."""
    import tensorflow as tf

    scan = ShardScan(per_class=[0] * num_classes)
    for shard in shards:
        n = 0
        try:
            for raw in tf.data.TFRecordDataset(str(shard), compression_type="GZIP"):
                example = tf.train.Example.FromString(raw.numpy())
                _check_example(example, shard, n, num_classes, modality, check_decode and n == 0)
                scan.per_class[example.features.feature["label"].int64_list.value[0]] += 1
                n += 1
        except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as exc:
            raise DatasetError(f"shard {shard} is not a readable gzip TFRecord file (record {n}): "
                               f"{exc.message.splitlines()[0]}") from exc
        if n == 0:
            raise DatasetError(f"shard {shard} holds no records")
        scan.per_shard[str(shard)] = n
        scan.count += n
    return scan


def _check_example(example: Any, shard: Path, index: int, num_classes: int, modality: str | None,
                   check_decode: bool) -> None:
    import tensorflow as tf

    feats = example.features.feature
    where = f"shard {shard}, record {index}"
    for name in ("image", "image_id"):
        if name not in feats or not feats[name].bytes_list.value:
            raise DatasetError(f"{where}: missing or wrong-typed feature {name!r} (expected bytes)")
    if "label" not in feats or len(feats["label"].int64_list.value) != 1:
        raise DatasetError(f"{where}: missing or wrong-typed feature 'label' (expected one int64)")
    label = feats["label"].int64_list.value[0]
    if not 0 <= label < num_classes:
        raise DatasetError(f"{where}: label {label} out of range 0..{num_classes - 1}")
    if modality and "modality" in feats and feats["modality"].bytes_list.value:
        found = feats["modality"].bytes_list.value[0].decode("utf-8", "replace")
        if found != modality:
            raise DatasetError(f"{where}: modality {found!r}, expected {modality!r}")
    if check_decode:
        try:
            tf.io.decode_png(feats["image"].bytes_list.value[0])
        except tf.errors.InvalidArgumentError as exc:
            raise DatasetError(f"{where}: 'image' is not a PNG") from exc


def class_weights(per_class: list[int], max_weight: float = 10.0) -> list[float]:
    """Balanced weights total / (K * n_k), capped so a class with a handful of images cannot dominate.

    Classes absent from the split get weight 1 (they contribute nothing anyway).
    """
    total = sum(per_class)
    present = sum(1 for c in per_class if c > 0)
    return [min(max_weight, total / (present * c)) if c > 0 else 1.0 for c in per_class]


# ----------------------------------------------------------------------------- augmentation
BACKGROUND_GREY = 128.0 / 255.0  # outside the retina after Ben Graham preprocessing (the `offset` 128)


def _rotate(image: Any, angle: Any) -> Any:
    """Rotate about the centre by `angle` radians (bilinear). The uncovered corners get the 50 % grey that
    Ben Graham's preprocessing gives everything outside the retina: black corners would be a bright-to-dark
    edge no real input has, and a CAM learns to look at it (Grad-CAM lit the image border)."""
    import tensorflow as tf

    h = tf.cast(tf.shape(image)[0], tf.float32)
    w = tf.cast(tf.shape(image)[1], tf.float32)
    cos, sin = tf.cos(angle), tf.sin(angle)
    x_offset = ((w - 1) - (cos * (w - 1) - sin * (h - 1))) / 2.0
    y_offset = ((h - 1) - (sin * (w - 1) + cos * (h - 1))) / 2.0
    transform = tf.stack([cos, -sin, x_offset, sin, cos, y_offset, 0.0, 0.0])[None, :]
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=image[None], transforms=transform, output_shape=tf.shape(image)[:2],
        interpolation="BILINEAR", fill_mode="CONSTANT", fill_value=BACKGROUND_GREY,
    )
    return out[0]


def augment(image: Any, seed: Any, modality: str, max_angle_deg: float = 15.0) -> Any:
    """Modality-suited, stateless (reproducible) augmentation of one float [0,1] image.

    Fundus photos have no canonical orientation (left/right eyes, camera rotation): flips, 90° turns,
    small rotations, small brightness/contrast changes. OCT B-scans have a fixed up (vitreous) and down
    (choroid): only a horizontal flip keeps them realistic.
    """
    import tensorflow as tf

    seeds = tf.random.experimental.stateless_split(seed, num=6)
    image = tf.image.stateless_random_flip_left_right(image, seeds[0])
    if modality == "oct":
        return image
    image = tf.image.stateless_random_flip_up_down(image, seeds[1])
    k = tf.random.stateless_uniform([], seeds[2], minval=0, maxval=4, dtype=tf.int32)
    image = tf.image.rot90(image, k)
    angle = tf.random.stateless_uniform([], seeds[3], -1.0, 1.0) * (max_angle_deg * math.pi / 180.0)
    image = _rotate(image, angle)
    image = tf.image.stateless_random_brightness(image, 0.08, seeds[4])
    image = tf.image.stateless_random_contrast(image, 0.9, 1.1, seeds[5])
    return tf.clip_by_value(image, 0.0, 1.0)


# ----------------------------------------------------------------------------- tf.data
def decode_record(raw: Any, image_size: int) -> tuple[Any, Any]:
    """Serialized Example -> (float32 [S,S,3] in [0,1], int64 label); OCT grey is replicated to RGB."""
    import tensorflow as tf

    parsed = tf.io.parse_single_example(
        raw, {"image": tf.io.FixedLenFeature([], tf.string), "label": tf.io.FixedLenFeature([], tf.int64)}
    )
    image = tf.io.decode_png(parsed["image"], channels=3)
    image = tf.image.convert_image_dtype(image, tf.float32)
    same = tf.logical_and(tf.equal(tf.shape(image)[0], image_size), tf.equal(tf.shape(image)[1], image_size))
    image = tf.cond(
        same,
        lambda: image,
        lambda: tf.clip_by_value(tf.image.resize(image, [image_size, image_size], antialias=True), 0.0, 1.0),
    )
    image = tf.ensure_shape(image, [image_size, image_size, 3])
    return image, parsed["label"]


def make_dataset(shards: list[Path], modality: str, image_size: int, batch_size: int, training: bool = False,
                 seed: int = 0, weights: list[float] | None = None, regression: bool = False,
                 shuffle_buffer: int = 2048) -> Any:
    """Batched, prefetched dataset of `(image, label)` or, with `weights`, `(image, label, sample_weight)`.

    Training shuffles shard order and records and augments; decoding runs in parallel. Order and
    augmentation are reproducible for a given seed (stateless random ops keyed per element).
    Labels are float32 for the regression head, int32 otherwise.
    """
    import tensorflow as tf

    autotune = tf.data.AUTOTUNE
    files = tf.data.Dataset.from_tensor_slices([str(s) for s in shards])
    if training:
        files = files.shuffle(len(shards), seed=seed, reshuffle_each_iteration=True)
    ds = files.interleave(
        lambda f: tf.data.TFRecordDataset(f, compression_type="GZIP"),
        cycle_length=min(len(shards), 8), num_parallel_calls=autotune, deterministic=True,
    )
    if training:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    ds = ds.map(lambda r: decode_record(r, image_size), num_parallel_calls=autotune)
    if training:
        element_seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        ds = tf.data.Dataset.zip((ds, element_seeds)).map(
            lambda pair, s: (augment(pair[0], s, modality), pair[1]), num_parallel_calls=autotune
        )
    label_dtype = tf.float32 if regression else tf.int32
    if weights is not None:
        table = tf.constant(weights, dtype=tf.float32)
        ds = ds.map(lambda x, y: (x, tf.cast(y, label_dtype), tf.gather(table, y)))
    else:
        ds = ds.map(lambda x, y: (x, tf.cast(y, label_dtype)))
    return ds.batch(batch_size).prefetch(autotune)


def manifest_summary(manifest: dict[str, Any]) -> str:
    """One line for logs: modality, size and per-split counts."""
    splits = {k: v.get("count") for k, v in manifest.get("splits", {}).items()}
    return json.dumps({"modality": manifest.get("modality"), "image_size": manifest.get("image_size"),
                       "splits": splits})


def collect_predictions(model: Any, dataset: Any) -> tuple[Any, Any]:
    """(labels, model outputs) over a finite `(image, label)` dataset, as numpy arrays."""
    import numpy as np

    labels, outputs = [], []
    for batch in dataset:
        x, y = batch[0], batch[1]
        outputs.append(np.asarray(model.predict_on_batch(x)))
        labels.append(np.asarray(y))
    if not labels:
        raise DatasetError("no records to predict on")
    return np.concatenate(labels).astype("int64"), np.concatenate(outputs)
