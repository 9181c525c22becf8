"""Write small datasets in the preprocessing output contract (gzip TFRecords + manifest.json).

Used by the train/evaluate tests to build shard sets (and deliberately broken ones) directly.
Records are built with TensorFlow's own Example proto and TFRecordWriter (GZIP), as Beam writes them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np

from components.common.config import CLASS_NAMES


def example_bytes(features: dict[str, bytes | int | list[int]]) -> bytes:
    """A serialized tf.train.Example; bytes -> bytes_list, int/list[int] -> int64_list."""
    from tensorflow.core.example import example_pb2

    ex = example_pb2.Example()
    for key, value in features.items():
        feat = ex.features.feature[key]
        if isinstance(value, bytes):
            feat.bytes_list.value.append(value)
        elif isinstance(value, int):
            feat.int64_list.value.append(value)
        else:
            feat.int64_list.value.extend(value)
    return ex.SerializeToString()


def write_shard(path: Path, examples: Iterable[bytes]) -> None:
    import tensorflow as tf

    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path), options="GZIP") as writer:
        for payload in examples:
            writer.write(payload)


def png(image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", image if image.ndim == 2 else image[..., ::-1])
    assert ok
    return buf.tobytes()


def record(image: np.ndarray, label: int, image_id: str, patient_id: str, modality: str) -> bytes:
    return example_bytes({"image": png(image), "label": int(label), "image_id": image_id.encode(),
                          "patient_id": patient_id.encode(), "modality": modality.encode()})


def write_dataset(root: Path, modality: str, splits: dict[str, list[tuple[np.ndarray, int]]],
                  image_size: int, shards_per_split: int = 2) -> dict:
    """Write `<root>/<split>/<split>-0000i-of-0000n.tfrecord.gz` and `manifest.json`; returns the manifest."""
    names = CLASS_NAMES[modality]
    manifest = {"modality": modality, "image_size": image_size, "class_names": names, "splits": {},
                "parameters": {"modality": modality, "image_size": image_size}, "code_version": "test",
                "rejected_count": 0, "patients_moved": 0}
    for split, items in splits.items():
        shards = []
        for s in range(shards_per_split):
            rel = f"{split}/{split}-{s:05d}-of-{shards_per_split:05d}.tfrecord.gz"
            chunk = items[s::shards_per_split]
            write_shard(root / rel, (record(img, lab, f"{split}_{s}_{i}", f"p{s}_{i}", modality)
                                     for i, (img, lab) in enumerate(chunk)))
            shards.append(rel)
        per_class = {n: sum(1 for _, lab in items if lab == k) for k, n in enumerate(names)}
        manifest["splits"][split] = {"count": len(items), "per_class": per_class, "shards": shards}
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest


# ----------------------------------------------------------------------------- simple drawings
def draw_oct(label: int, rng: np.random.Generator, size: int) -> np.ndarray:
    """A layered grey B-scan with speckle; DRUSEN bumps, DME dark pockets, CNV a bright subretinal blob."""
    y = np.arange(size)[:, None].astype(np.float32)
    x = np.arange(size)[None, :].astype(np.float32)
    base = size * (0.55 + 0.05 * np.sin(x / size * 2 * np.pi + rng.uniform(0, 6)))
    img = np.where((y > base - size * 0.18) & (y < base), 140.0, 40.0) * np.ones((1, size))
    rpe = base.copy()
    if label == 3:  # DRUSEN: bumps lifting the RPE
        for cx in rng.uniform(0.2, 0.8, 3) * size:
            rpe = rpe - size * 0.08 * np.exp(-((x - cx) ** 2) / (2 * (size * 0.05) ** 2))
    img = np.where(np.abs(y - rpe) < size * 0.03, 230.0, img)
    if label == 2:  # DME: dark fluid pockets inside the retina
        for _ in range(3):
            cx, cy = rng.uniform(0.25, 0.75) * size, base[0, int(rng.uniform(0.25, 0.75) * size)] - size * 0.09
            img = np.where((x - cx) ** 2 + (y - cy) ** 2 < (size * 0.05) ** 2, 10.0, img)
    if label == 1:  # CNV: bright irregular blob under the RPE
        cx = rng.uniform(0.3, 0.7) * size
        cy = base[0, int(cx)] + size * 0.08
        img = np.where(((x - cx) / 1.8) ** 2 + (y - cy) ** 2 < (size * 0.07) ** 2, 250.0, img)
    img = img * rng.gamma(6.0, 1 / 6.0, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def draw_fundus(grade: int, rng: np.random.Generator, size: int) -> np.ndarray:
    """Orange disc on black with a bright optic disc; lesions whose number and kind rise with the grade."""
    img = np.zeros((size, size, 3), np.uint8)
    c = size // 2
    cv2.circle(img, (c, c), int(size * 0.46), (200, 90, 40), -1)
    angle = rng.uniform(0, 2 * np.pi)
    cv2.circle(img, (int(c + 0.25 * size * np.cos(angle)), int(c + 0.25 * size * np.sin(angle))),
               int(size * 0.07), (250, 220, 150), -1)
    counts = [0, 3, 8, 14, 14][grade]
    for _ in range(counts):
        r, a = rng.uniform(0, 0.38) * size, rng.uniform(0, 2 * np.pi)
        p = (int(c + r * np.cos(a)), int(c + r * np.sin(a)))
        cv2.circle(img, p, max(1, int(size * 0.025)), (90, 10, 10), -1)  # haemorrhages / microaneurysms
    if grade >= 3:
        for _ in range(6):
            r, a = rng.uniform(0, 0.35) * size, rng.uniform(0, 2 * np.pi)
            cv2.circle(img, (int(c + r * np.cos(a)), int(c + r * np.sin(a))), max(1, int(size * 0.03)),
                       (255, 255, 120), -1)  # hard exudates
    if grade == 4:
        for _ in range(3):
            r, a = rng.uniform(0, 0.3) * size, rng.uniform(0, 2 * np.pi)
            p = (int(c + r * np.cos(a)), int(c + r * np.sin(a)))
            for _ in range(4):
                q = (p[0] + int(rng.integers(-4, 5)), p[1] + int(rng.integers(-4, 5)))
                cv2.line(img, p, q, (140, 0, 60), 1)  # neovascular tufts
    noise = rng.normal(0, 6, img.shape)
    return np.clip(img.astype(np.float32) + noise, 0, 255).astype(np.uint8)


def make_samples(modality: str, n: int, seed: int, size: int) -> list[tuple[np.ndarray, int]]:
    rng = np.random.default_rng(seed)
    k = len(CLASS_NAMES[modality])
    draw = draw_oct if modality == "oct" else draw_fundus
    labels = [i % k for i in range(n)]
    return [(draw(lab, rng, size), lab) for lab in labels]
