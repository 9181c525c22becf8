"""The explanation job's first stage: images (with labels and lesion masks when the source has them)
ready for the model, plus the ones that could not be read and why.

Inputs it understands:
- a preprocessed dataset folder (`manifest.json` present): TFRecord shards, labels, `mask` feature;
- a raw dataset in the EyePACS / Kermany layout (labels and `masks/<id>.png` via `read_dataset`);
- any folder / prefix of JPEG/PNG/TIFF/BMP files (masks at `masks/<stem>.png` when present).
An image that cannot be read is listed with the reason; the run goes on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from components.common import storage
from components.common.errors import ImageRejected, RetinaError, StorageError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")
DISPLAY_SIZE = 384  # originals are downscaled to this for the report (a 3888 px fundus is 20 MB as PNG)


@dataclass
class InputImage:
    image_id: str
    source: str
    original: np.ndarray  # uint8 as decoded (display copy)
    model_input: np.ndarray  # uint8 [S, S, 3]
    mask: np.ndarray | None  # uint8 [S, S] on the model-input grid, 255 = lesion
    label: int | None


# --------------------------------------------------------------------------- preprocessing
def make_preprocessor(info: Any, image_size: int) -> Callable[[np.ndarray, np.ndarray | None], tuple]:
    """(image, mask) -> (uint8 [S,S,3], mask [S,S] | None) with the model's own preprocessing.

    Uses `components.preprocess.ops.preprocess_image` with the parameters stored in the model's
    metadata; without metadata (any Keras file) it is a plain area resize, as the OCT seed did.
    """
    import cv2

    params = None
    preprocessing = getattr(info, "preprocessing", None) or {}
    if preprocessing:
        try:
            from components.preprocess.ops import PreprocessParams, preprocess_image

            params = PreprocessParams.from_dict(preprocessing)
        except ModuleNotFoundError:
            log.warning("components.preprocess is not installed: falling back to a plain resize")

    def to_rgb(img: np.ndarray) -> np.ndarray:
        return np.repeat(img[..., None], 3, axis=-1) if img.ndim == 2 else img[..., :3]

    def resize_mask(mask: np.ndarray | None) -> np.ndarray | None:
        if mask is None:
            return None
        m = mask[..., 0] if mask.ndim == 3 else mask
        if m.shape != (image_size, image_size):
            m = cv2.resize(m, (image_size, image_size), interpolation=cv2.INTER_NEAREST)
        return m

    def plain(img: np.ndarray, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
        img = to_rgb(img)
        if img.shape[:2] != (image_size, image_size):
            img = cv2.resize(img, (image_size, image_size), interpolation=cv2.INTER_AREA)
        return img, resize_mask(mask)

    if params is None:
        return plain

    def with_params(img: np.ndarray, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
        if getattr(params, "modality", "") == "oct" and img.ndim == 3:
            img = cv2.cvtColor(img[..., :3], cv2.COLOR_RGB2GRAY)
        out = preprocess_image(img, params, mask=mask)
        return plain(out.image, out.mask)

    return with_params


def decode(data: bytes, name: str) -> np.ndarray:
    """Encoded bytes -> uint8 RGB or grey; ImageRejected with the reason when it cannot be decoded."""
    import cv2

    if not data:
        raise ImageRejected(name, "empty file")
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ImageRejected(name, "not a decodable image (corrupt or unsupported format)")
    if img.dtype != np.uint8:
        img = cv2.convertScaleAbs(img, alpha=255.0 / max(1.0, float(img.max())))
    if img.ndim == 3:
        img = cv2.cvtColor(img[..., :3], cv2.COLOR_BGR2RGB)
    return img


def _display_copy(img: np.ndarray) -> np.ndarray:
    import cv2

    rgb = np.repeat(img[..., None], 3, axis=-1) if img.ndim == 2 else img
    scale = DISPLAY_SIZE / max(rgb.shape[:2])
    if scale < 1:
        rgb = cv2.resize(rgb, (round(rgb.shape[1] * scale), round(rgb.shape[0] * scale)), interpolation=cv2.INTER_AREA)
    return rgb


# --------------------------------------------------------------------------- inputs
@dataclass
class _Candidate:
    image_id: str
    uri: str
    label: int | None = None
    mask_uri: str | None = None


def _list_raw(images_uri: str, modality: str) -> tuple[list[_Candidate], list[tuple[str, str]]]:
    """Candidates from a recognised dataset layout, else every image file under the folder."""
    problems: list[tuple[str, str]] = []
    if modality:
        try:
            from components.common.datasets import read_dataset

            listing = read_dataset(images_uri, modality)
            if listing.records:
                problems += [(p.name, p.reason) for p in listing.problems]
                return [_Candidate(r.image_id, r.uri, r.label, r.mask_uri) for r in listing.records], problems
        except ModuleNotFoundError:
            pass
        except Exception as exc:  # noqa: BLE001 - not that layout: fall back to a plain listing
            log.debug("not a %s dataset layout (%s); listing image files", modality, exc)
    uris = storage.list_uris(images_uri)
    masks = {storage.basename(u): u for u in uris if "/masks/" in u.replace("\\", "/")}
    out = []
    for u in uris:
        if "/masks/" in u.replace("\\", "/"):
            continue
        name = storage.basename(u)
        if not name.lower().endswith(IMAGE_SUFFIXES):
            continue
        stem = name.rsplit(".", 1)[0]
        out.append(_Candidate(stem, u, None, masks.get(f"{stem}.png")))
    return out, problems


def _read_raw(
    candidates: list[_Candidate], preprocess: Callable, max_images: int, progress: bool
) -> tuple[list[InputImage], list[tuple[str, str]]]:
    """Read candidates in order until `max_images` could be used; the unusable ones are listed."""
    from tqdm import tqdm

    images: list[InputImage] = []
    problems: list[tuple[str, str]] = []
    bar = tqdm(total=min(max_images, len(candidates)), desc="read images", unit="img", disable=not progress)
    for c in candidates:
        if len(images) >= max_images:
            break
        name = storage.basename(c.uri)
        try:
            img = decode(storage.read_bytes(c.uri), name)
            mask = None
            if c.mask_uri:
                try:
                    mask = decode(storage.read_bytes(c.mask_uri), storage.basename(c.mask_uri))
                    mask = mask[..., 0] if mask.ndim == 3 else mask
                except (ImageRejected, StorageError) as exc:
                    log.warning("mask of %s unusable: %s", name, exc)
            model_input, model_mask = preprocess(img, mask)
        except ImageRejected as exc:
            problems.append((name, exc.reason))
            continue
        except StorageError as exc:
            problems.append((name, str(exc)))
            continue
        except Exception as exc:  # noqa: BLE001 - one bad image must not stop the batch
            problems.append((name, f"preprocessing failed: {type(exc).__name__}: {exc}"))
            continue
        images.append(InputImage(c.image_id, c.uri, _display_copy(img), model_input, model_mask, c.label))
        bar.update(1)
    bar.close()
    return images, problems


# A class-balanced sample needs a look past the first records: shards keep their writer's order, often
# one class after another. The look is bounded (these many records per image asked for, at least
# SCAN_MIN), so a gate on 16 images never reads a whole EyePACS-sized split.
SCAN_PER_IMAGE = 8
SCAN_MIN = 64


def _read_tfrecords(images_uri: str, image_size: int, max_images: int) -> tuple[list[InputImage], list[tuple[str, str]]]:
    """Already-preprocessed images from the dataset's shards, class-balanced (`_dealing_order`): test split
    first, then val and train, looking at most max(SCAN_PER_IMAGE · max_images, SCAN_MIN) records.

    The first `max_images` records of a class-sorted shard would be one or two classes; the explanation
    gate's mean over them says how the maps do on those classes only (a model could pass on its easiest
    class and fail on the rest, or fail on a class with nothing to point at, as "no disease"). Records are
    kept encoded while looking (at most `max_images` per class); only the chosen ones are decoded, and an
    unreadable one is listed and replaced by the next in the dealing order."""
    import tensorflow as tf

    from components.common.shards import read_manifest, split_shards, stage_dataset

    manifest = read_manifest(images_uri)
    root = stage_dataset(images_uri)
    splits = list(manifest.get("splits", {}))
    ordered = [s for s in ("test", "val", "train") if s in splits] + [s for s in splits if s not in ("test", "val", "train")]
    budget = max(SCAN_PER_IMAGE * max_images, SCAN_MIN)
    num_classes = len(manifest.get("class_names") or [])
    candidates: list[tuple[int | None, str, str, Any]] = []  # (label, "split/shard", record id, parsed features)
    kept: dict[int | None, int] = {}

    def records():
        for split in ordered:
            for shard in split_shards(root, split, manifest):
                for n, raw in enumerate(tf.data.TFRecordDataset(str(shard), compression_type="GZIP")):
                    yield f"{split}/{shard.name}", f"{shard.name}#{n}", raw

    for scanned, (source, record_id, raw) in enumerate(records()):
        if scanned >= budget or _balanced_enough(kept, max_images, num_classes):
            break
        ex = tf.train.Example.FromString(raw.numpy()).features.feature
        label = int(ex["label"].int64_list.value[0]) if "label" in ex and ex["label"].int64_list.value else None
        if kept.get(label, 0) >= max_images:
            continue  # this class already has all an answer could take from it
        kept[label] = kept.get(label, 0) + 1
        candidates.append((label, source, record_id, ex))

    chosen: list[tuple[int, InputImage]] = []
    problems: list[tuple[str, str]] = []
    for i in _dealing_order([label for label, *_ in candidates]):
        if len(chosen) >= max_images:
            break
        label, source, record_id, ex = candidates[i]
        image_id = ex["image_id"].bytes_list.value[0].decode() if "image_id" in ex else record_id
        try:
            img = decode(ex["image"].bytes_list.value[0], image_id)
            mask = None
            if "mask" in ex and ex["mask"].bytes_list.value:
                mask = decode(ex["mask"].bytes_list.value[0], image_id + " mask")
                mask = mask[..., 0] if mask.ndim == 3 else mask
            rgb = np.repeat(img[..., None], 3, axis=-1) if img.ndim == 2 else img
            model_input, model_mask = _resize_only(rgb, mask, image_size)
        except (ImageRejected, IndexError, KeyError) as exc:
            problems.append((image_id, getattr(exc, "reason", f"bad record: {exc}")))
            continue
        chosen.append((i, InputImage(image_id, source, rgb, model_input, model_mask, label)))
    return [image for _, image in sorted(chosen, key=lambda pair: pair[0])], problems


def _balanced_enough(kept: dict[int | None, int], max_images: int, num_classes: int) -> bool:
    """Every class of the manifest has its share of `max_images` (rounded up): looking on changes nothing."""
    if num_classes <= 0:
        return sum(kept.values()) >= max_images and None in kept and len(kept) == 1
    share = -(-max_images // num_classes)
    return all(kept.get(c, 0) >= share for c in range(num_classes))


def _dealing_order(labels: list[int | None]) -> list[int]:
    """Indices of `labels` dealt one class at a time (label order, unlabelled last; each class in reading
    order) until every class is used up. Deterministic."""
    queues: dict[int | None, list[int]] = {}
    for i, label in enumerate(labels):
        queues.setdefault(label, []).append(i)
    classes = sorted(queues, key=lambda c: (c is None, c if c is not None else 0))
    order: list[int] = []
    for rank in range(max((len(q) for q in queues.values()), default=0)):
        order.extend(queues[c][rank] for c in classes if rank < len(queues[c]))
    return order


def _resize_only(img: np.ndarray, mask: np.ndarray | None, size: int) -> tuple[np.ndarray, np.ndarray | None]:
    import cv2

    if img.shape[:2] != (size, size):
        img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
    if mask is not None and mask.shape[:2] != (size, size):
        mask = cv2.resize(mask, (size, size), interpolation=cv2.INTER_NEAREST)
    return img, mask


def read_inputs(
    images_uri: str, info: Any, image_size: int, max_images: int, progress: bool = True
) -> tuple[list[InputImage], list[tuple[str, str]]]:
    """Images (with labels/masks when the source has them) ready for the model, plus unreadable ones."""
    if not storage.exists(images_uri):
        raise StorageError(f"no such image folder or prefix: {images_uri}")
    if storage.exists(storage.join(images_uri, "manifest.json")):
        return _read_tfrecords(images_uri, image_size, max_images)
    candidates, problems = _list_raw(images_uri, getattr(info, "modality", "") or "")
    if not candidates and not problems:
        raise RetinaError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {images_uri}")
    images, bad = _read_raw(candidates, make_preprocessor(info, image_size), max_images, progress)
    return images, problems + bad
