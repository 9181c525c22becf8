"""Readers for the raw dataset layouts: EyePACS (Kaggle DR 2015) fundus photos and Kermany OCT2017.

Both read from a local folder or an `s3://` prefix through components.common.storage and return a
`DatasetListing`: the usable images as `ImageRecord`s plus a `Problem` for every file or row that
cannot be used (a CSV row without an image, an image without a row, an unknown label, a file name
that does not parse). Real datasets always have a few such entries; one bad entry must cost one
image, not the run, and the user must be told which file it was.

    EyePACS: <root>/train/<patient>_<left|right>.jpeg + <root>/trainLabels.csv (image,level)
    Kermany: <root>/{train,test,val}/{CNV,DME,DRUSEN,NORMAL}/<CLASS>-<patient>-<n>.jpeg
    Masks (synthetic sets): <root>/masks/<image_id>.png
"""

from __future__ import annotations

import csv
import io
import re
from collections import Counter
from dataclasses import dataclass, field

from components.common import storage
from components.common.config import CLASS_NAMES, MODALITIES, OCT_CLASS_INDEX
from components.common.errors import DatasetError, StorageError

EYEPACS_LABELS = "trainLabels.csv"
EYEPACS_IMAGE_DIR = "train"
KERMANY_SPLITS = ("train", "test", "val")
MASK_DIR = "masks"
# what both preprocessing paths (Beam and the serving graph) decode; anything else is a listing problem
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")

_EYEPACS_ID = re.compile(r"^(?P<patient>\d+)_(?P<eye>left|right)$")
_KERMANY_NAME = re.compile(r"^(?P<cls>[A-Z]+)-(?P<patient>\d+)-(?P<n>\d+)$")


@dataclass(frozen=True)
class ImageRecord:
    """One usable raw image: what it is, whose it is, and where it lives."""

    image_id: str
    patient_id: str
    label: int
    uri: str
    split: str | None = None
    mask_uri: str | None = None


@dataclass(frozen=True)
class Problem:
    """A file or CSV row that was left out, and why (`name` is the offending file name or image id)."""

    name: str
    reason: str

    def __str__(self) -> str:
        return f"{self.name}: {self.reason}"


@dataclass
class DatasetListing:
    records: list[ImageRecord] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.records)

    def label_counts(self) -> dict[int, int]:
        return dict(sorted(Counter(r.label for r in self.records).items()))

    def split_counts(self) -> dict[str, int]:
        return dict(sorted(Counter(r.split or "" for r in self.records).items()))


def _stem_and_suffix(name: str) -> tuple[str, str]:
    stem, dot, suffix = name.rpartition(".")
    return (stem, f".{suffix.lower()}") if dot else (name, "")


def _relative(root: str, uri: str) -> str:
    return uri[len(root.rstrip("/")) :].lstrip("/").replace("\\", "/")


def _masks(root: str) -> dict[str, str]:
    """image_id -> mask URI for `<root>/masks/<image_id>.png`."""
    out = {}
    for uri in storage.list_uris(storage.join(root, MASK_DIR), suffix=".png"):
        stem, _ = _stem_and_suffix(storage.basename(uri))
        out[stem] = uri
    return out


def _no_records(root: str, kind: str, problems: list[Problem]) -> DatasetError:
    shown = "; ".join(str(p) for p in problems[:3])
    more = f" (first problems: {shown})" if shown else ""
    return DatasetError(f"no usable {kind} images under {root}{more}")


# --------------------------------------------------------------------------- EyePACS
def read_eyepacs(root_uri: str) -> DatasetListing:
    """`<root>/train/<id>.jpeg` labelled by `<root>/trainLabels.csv`; patient = the number in `10_left`."""
    root = str(root_uri).rstrip("/") or str(root_uri)
    problems: list[Problem] = []
    labels, reported = _eyepacs_labels(root, problems)
    images = _eyepacs_images(root, problems)
    records = _eyepacs_records(images, labels, reported, _masks(root), problems)
    for image_id in labels:
        if image_id not in images:
            problems.append(Problem(image_id, f"no image file {EYEPACS_IMAGE_DIR}/{image_id}.jpeg"))
    if not records:
        raise _no_records(root, "EyePACS", problems)
    records.sort(key=lambda r: (int(r.patient_id), r.image_id))
    return DatasetListing(records, problems)


def _eyepacs_label_rows(root: str) -> csv.DictReader:
    csv_uri = storage.join(root, EYEPACS_LABELS)
    try:
        text = storage.read_bytes(csv_uri).decode("utf-8-sig")
    except StorageError as exc:
        raise DatasetError(f"no label file {csv_uri} (EyePACS layout needs {EYEPACS_LABELS})") from exc
    except UnicodeDecodeError as exc:
        raise DatasetError(f"label file is not UTF-8 text: {csv_uri}") from exc
    reader = csv.DictReader(io.StringIO(text))
    fields = [f.strip().lower() for f in (reader.fieldnames or [])]
    if "image" not in fields or "level" not in fields:
        raise DatasetError(f"{csv_uri} needs the columns image,level (found: {','.join(fields) or 'none'})")
    reader.fieldnames = fields
    return reader


def _eyepacs_labels(root: str, problems: list[Problem]) -> tuple[dict[str, int], set[str]]:
    """Grades by image id from trainLabels.csv, and the ids whose row is already reported as a problem
    (their file is not reported a second time)."""
    reader = _eyepacs_label_rows(root)
    labels: dict[str, int] = {}
    reported: set[str] = set()
    num_grades = len(CLASS_NAMES["fundus"])
    for line_no, row in enumerate(reader, start=2):
        image_id = (row.get("image") or "").strip()
        level = (row.get("level") or "").strip()
        if not image_id:
            problems.append(Problem(f"{EYEPACS_LABELS}:{line_no}", "row without an image id"))
        elif image_id in labels:
            problems.append(Problem(image_id, f"second row for the same image ({EYEPACS_LABELS}:{line_no})"))
        elif not level.isdigit() or int(level) >= num_grades:
            problems.append(Problem(image_id, f"unknown label {level!r} (expected 0..{num_grades - 1})"))
            reported.add(image_id)
        elif not _EYEPACS_ID.match(image_id):
            problems.append(Problem(image_id, "image id does not parse: expected <patient>_<left|right>"))
            reported.add(image_id)
        else:
            labels[image_id] = int(level)
    return labels, reported


def _eyepacs_images(root: str, problems: list[Problem]) -> dict[str, str]:
    """Image URIs by id directly under train/; other files are problems."""
    images: dict[str, str] = {}
    image_dir = storage.join(root, EYEPACS_IMAGE_DIR)
    for uri in storage.list_uris(image_dir):
        name = storage.basename(uri)
        stem, suffix = _stem_and_suffix(name)
        if suffix not in IMAGE_SUFFIXES:
            problems.append(Problem(name, "not an image file"))
        elif "/" in _relative(image_dir, uri):
            problems.append(Problem(_relative(root, uri), "image in a sub-folder of train/"))
        elif stem in images:
            problems.append(Problem(name, f"second file for image id {stem}"))
        else:
            images[stem] = uri
    return images


def _eyepacs_records(
    images: dict[str, str], labels: dict[str, int], reported: set[str], masks: dict[str, str],
    problems: list[Problem],
) -> list[ImageRecord]:
    records = []
    for image_id, uri in images.items():
        if image_id in labels:
            patient = _EYEPACS_ID.match(image_id).group("patient")
            records.append(ImageRecord(image_id, patient, labels[image_id], uri, None, masks.get(image_id)))
        elif image_id in reported:
            continue
        elif _EYEPACS_ID.match(image_id):
            problems.append(Problem(storage.basename(uri), f"no row in {EYEPACS_LABELS}"))
        else:
            problems.append(Problem(storage.basename(uri), "file name does not parse: expected <patient>_<left|right>"))
    return records


# --------------------------------------------------------------------------- Kermany
def read_kermany(root_uri: str) -> DatasetListing:
    """`<root>/{train,test,val}/<CLASS>/<CLASS>-<patient>-<n>.jpeg`; `split` is the folder it sits in."""
    root = str(root_uri).rstrip("/") or str(root_uri)
    found_splits = [d for d in storage.list_dirs(root) if d in KERMANY_SPLITS]
    if not found_splits:
        raise DatasetError(f"no {'/'.join(KERMANY_SPLITS)} folders under {root} (Kermany OCT2017 layout)")
    masks = _masks(root)
    problems: list[Problem] = []
    records: list[ImageRecord] = []
    seen: dict[str, str] = {}
    for split in found_splits:
        for uri in storage.list_uris(storage.join(root, split)):
            rel = _relative(root, uri)
            parts = rel.split("/")
            stem, suffix = _stem_and_suffix(parts[-1])
            if len(parts) != 3:
                problems.append(Problem(rel, "expected <split>/<CLASS>/<file>"))
                continue
            folder = parts[1]
            if folder not in OCT_CLASS_INDEX:
                problems.append(
                    Problem(rel, f"unknown label folder {folder!r} (expected {', '.join(OCT_CLASS_INDEX)})")
                )
                continue
            if suffix not in IMAGE_SUFFIXES:
                problems.append(Problem(rel, "not an image file"))
                continue
            match = _KERMANY_NAME.match(stem)
            if not match:
                problems.append(Problem(rel, "file name does not parse: expected <CLASS>-<patient>-<n>.jpeg"))
                continue
            if match.group("cls") != folder:
                problems.append(
                    Problem(rel, f"file name says {match.group('cls')} but the folder says {folder}")
                )
                continue
            if stem in seen:
                problems.append(Problem(rel, f"same image id as {seen[stem]}"))
                continue
            seen[stem] = rel
            records.append(
                ImageRecord(
                    stem, match.group("patient"), OCT_CLASS_INDEX[folder], uri, split, masks.get(stem)
                )
            )
    if not records:
        raise _no_records(root, "OCT", problems)
    records.sort(key=lambda r: (r.split or "", r.label, r.patient_id, r.image_id))
    return DatasetListing(records, problems)


def read_dataset(root_uri: str, modality: str) -> DatasetListing:
    """The reader for `modality` (`fundus` -> EyePACS layout, `oct` -> Kermany layout)."""
    if modality == "fundus":
        return read_eyepacs(root_uri)
    if modality == "oct":
        return read_kermany(root_uri)
    raise DatasetError(f"unknown modality {modality!r}: expected one of {', '.join(MODALITIES)}")
