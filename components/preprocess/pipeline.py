"""The preprocessing Beam pipeline: listing → patient split → decode + preprocess → TFRecord shards.

One code path for every scale: `beam_args` go straight to Beam's PipelineOptions, so the DirectRunner
(`--direct_num_workers=2 --direct_running_mode=multi_processing`) here and `--runner=FlinkRunner`,
`SparkRunner`, `DataflowRunner`, … on a cluster run the same transforms. S3 access goes through Beam's
S3 filesystem, i.e. boto3, which takes its endpoint and credentials from the environment
(`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, …); nothing secret is put into options or logs.

Output at `<out>/`: `<split>/<split>-SSSSS-of-NNNNN.tfrecord.gz`, `rejected.jsonl` (dead letter: listing
problems, duplicates, unknown labels, undecodable or retina-less images), and `manifest.json`, written
last, so a reader that finds a manifest finds a complete dataset.

Split rule (by patient, deterministic): a patient's unit number is sha256(f"{seed}/{patient_id}"). Without
given splits (EyePACS): test if u < test_fraction, val if u < test_fraction + val_fraction, else train.
With given splits (Kermany): the given `test` split is kept; every patient with any image in `test` has
all images in `test`; the other patients are split train/val by u < val_fraction (Kermany's own `val`
folder holds 8 images per class, too few to select a model on). `patients_moved` counts patients the
given folders put in more than one split.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from components.common import storage
from components.common.config import CLASS_NAMES, check_modality, code_version
from components.common.errors import ImageRejected, RetinaError
from components.preprocess.params import PreprocessParams

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
MANIFEST = "manifest.json"
REJECTED = "rejected.jsonl"
SHARD_SUFFIX = ".tfrecord.gz"
_COUNTS = "_counts"
_REJECTED_TMP = "_rejected"
_SENTINEL = {"_sentinel": True}
_REJECTED_TAG = "rejected"
DEFAULT_RUNNER = "FnApiRunner"
# More rejects than this fraction of the listed images fails the run instead of training on what is left.
DEFAULT_MAX_REJECT_FRACTION = 0.1


# ============================================================================ split planning
def patient_unit(patient_id: str, seed: int) -> float:
    """A patient's deterministic position in [0, 1): the same patient lands in the same split every run."""
    digest = hashlib.sha256(f"{seed}/{patient_id}".encode()).hexdigest()
    return int(digest[:15], 16) / 16**15


@dataclass
class SplitPlan:
    assignments: list[tuple[Any, str]]  # (ImageRecord, split)
    rejected: list[dict[str, str]] = field(default_factory=list)
    patients_moved: int = 0


def plan_splits(
    records: Sequence[Any], num_classes: int, val_fraction: float = 0.1, test_fraction: float = 0.1, seed: int = 0
) -> SplitPlan:
    """Assign each record a split by patient; reject duplicate ids (all but the first by uri) and unknown labels."""
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(f"need 0 <= val_fraction, test_fraction and their sum < 1 (got {val_fraction}, {test_fraction})")
    rejected: list[dict[str, str]] = []
    first: dict[str, Any] = {}
    for rec in sorted(records, key=lambda r: (r.image_id, str(r.uri))):
        if rec.image_id in first:
            rejected.append({"image_id": rec.image_id, "reason": f"duplicate image_id (kept {first[rec.image_id].uri})",
                             "uri": str(rec.uri)})
            continue
        if not isinstance(rec.label, int) or not 0 <= rec.label < num_classes:
            rejected.append({"image_id": rec.image_id, "reason": f"unknown label {rec.label!r}", "uri": str(rec.uri)})
            continue
        first[rec.image_id] = rec
    kept = list(first.values())
    given: dict[str, set[str]] = defaultdict(set)
    for rec in kept:
        if getattr(rec, "split", None):
            given[rec.patient_id].add(rec.split)
    patients_moved = sum(1 for splits in given.values() if len(splits) > 1)

    def split_of(rec: Any) -> str:
        u = patient_unit(rec.patient_id, seed)
        if rec.patient_id in given:
            if "test" in given[rec.patient_id]:
                return "test"
            return "val" if u < val_fraction else "train"
        if u < test_fraction:
            return "test"
        return "val" if u < test_fraction + val_fraction else "train"

    return SplitPlan([(rec, split_of(rec)) for rec in kept], rejected, patients_moved)


# ============================================================================ per-image work (Beam DoFn)
def preprocess_record(item: dict[str, Any], params: PreprocessParams) -> dict[str, Any]:
    """One listing item -> {split, label, example bytes}. Raises ImageRejected with a readable reason (the
    file's own fault: dead letter) or TransientReadError (storage still failing after the client's
    retries: the bundle fails and is retried, the image is not called bad)."""
    from components.preprocess.decode import decode_for, decode_mask, encode_png
    from components.preprocess.ops import NoRetinaFound, preprocess_image
    from components.preprocess.reading import read_image_bytes
    from components.preprocess.records import encode_example

    image_id = item["image_id"]
    image = decode_for(read_image_bytes(item["uri"], image_id), image_id, params)
    mask = None
    if item.get("mask_uri"):
        mask = decode_mask(read_image_bytes(item["mask_uri"], image_id), image_id, image.shape)
    try:
        out = preprocess_image(image, params, mask)
    except NoRetinaFound as exc:
        raise ImageRejected(image_id, str(exc)) from exc
    features: dict[str, Any] = {
        "image": encode_png(out.image),
        "label": int(item["label"]),
        "image_id": image_id,
        "patient_id": str(item["patient_id"]),
        "modality": params.modality,
    }
    if out.mask is not None:
        features["mask"] = encode_png(out.mask)
    return {"split": item["split"], "label": int(item["label"]), "example": encode_example(features)}


def _make_dofn(params_dict: dict[str, Any]) -> Any:
    import apache_beam as beam
    from apache_beam import pvalue

    from components.preprocess.reading import TransientReadError

    class DecodeAndPreprocess(beam.DoFn):
        """Decode + preprocess; every failure goes to the `rejected` output instead of failing the bundle."""

        def __init__(self, params: dict[str, Any]):
            self._params_dict = params
            self.ok = beam.metrics.Metrics.counter("preprocess", "images_written")
            self.bad = beam.metrics.Metrics.counter("preprocess", "images_rejected")
            # When the workers started and finished images (ms since the epoch): the span between the
            # first start and the last finish is the processing time, without the runner's start-up.
            self.started = beam.metrics.Metrics.distribution("preprocess", "image_started_ms")
            self.finished = beam.metrics.Metrics.distribution("preprocess", "image_finished_ms")

        def setup(self) -> None:
            self.params = PreprocessParams.from_dict(self._params_dict)
            self.seen = 0

        def process(self, item: dict[str, Any]) -> Iterable[Any]:
            self.seen += 1
            if self.seen % 100 == 0:
                log.info("worker preprocessed %d images", self.seen)
            self.started.update(int(time.time() * 1000))
            reason = None
            try:
                result = preprocess_record(item, self.params)
            except TransientReadError:
                raise  # not the image's fault: fail the bundle, the runner retries it
            except ImageRejected as exc:
                reason = exc.reason
            except Exception as exc:  # noqa: BLE001 - bad input never stops the run
                reason = f"preprocessing failed ({type(exc).__name__}: {exc})"
            self.finished.update(int(time.time() * 1000))
            if reason is not None:
                self.bad.inc()
                yield pvalue.TaggedOutput(_REJECTED_TAG, {"image_id": item["image_id"], "reason": reason,
                                                          "uri": item["uri"]})
                return
            self.ok.inc()
            yield result

    return DecodeAndPreprocess(params_dict)


def _split_key(row: dict[str, Any]) -> str:
    return row["split"]


def _count_key(row: dict[str, Any]) -> tuple[str, int]:
    return (f"{row['split']}\t{row['label']}", 1)


def _example(row: dict[str, Any]) -> bytes:
    return row["example"]


def _json_line(kv: Any) -> str:
    return json.dumps(kv, sort_keys=True)


def _build_pipeline(pipeline: Any, items: list[dict[str, Any]], listing_rejects: list[dict[str, str]],
                    params: PreprocessParams, output_uri: str, shards: dict[str, int]) -> None:
    import apache_beam as beam
    from apache_beam.io.filesystem import CompressionTypes

    rows = (
        pipeline
        | "List" >> beam.Create(items, reshuffle=False)
        | "Spread" >> beam.Reshuffle()
        | "DecodeAndPreprocess" >> beam.ParDo(_make_dofn(params.to_dict())).with_outputs(_REJECTED_TAG, main="ok")
    )
    for split, num_shards in shards.items():
        _ = (
            rows.ok
            | f"Only{split}" >> beam.Filter(lambda row, s=split: _split_key(row) == s)
            | f"Serialize{split}" >> beam.Map(_example)
            | f"Write{split}" >> beam.io.WriteToTFRecord(
                storage.join(output_uri, split, split),
                file_name_suffix=SHARD_SUFFIX,
                num_shards=num_shards,
                shard_name_template="-SSSSS-of-NNNNN",
                compression_type=CompressionTypes.GZIP,
            )
        )
    # Both side files start with a sentinel line: an empty text file is written as a zero-part S3 multipart
    # upload, which SeaweedFS refuses (NoSuchUpload). The driver drops the sentinel and writes the final files.
    counts = rows.ok | "CountKey" >> beam.Map(_count_key) | "Count" >> beam.CombinePerKey(sum)
    _ = (
        (pipeline | "CountSentinel" >> beam.Create([_SENTINEL], reshuffle=False), counts)
        | "AllCounts" >> beam.Flatten()
        | "CountJson" >> beam.Map(_json_line)
        | "WriteCounts" >> beam.io.WriteToText(storage.join(output_uri, _COUNTS), file_name_suffix=".jsonl",
                                               num_shards=1, shard_name_template="")
    )
    _ = (
        (pipeline | "ListingRejects" >> beam.Create([_SENTINEL, *listing_rejects], reshuffle=False),
         rows[_REJECTED_TAG])
        | "AllRejects" >> beam.Flatten()
        | "RejectJson" >> beam.Map(_json_line)
        | "WriteRejected" >> beam.io.WriteToText(storage.join(output_uri, _REJECTED_TMP), file_name_suffix=".jsonl",
                                                 num_shards=1, shard_name_template="")
    )


def _clear_previous(output_uri: str) -> None:
    """Remove an earlier run's outputs (manifest first, so no reader trusts a half-replaced dataset)."""
    if storage.exists(storage.join(output_uri, MANIFEST)):
        storage.delete(storage.join(output_uri, MANIFEST))
    for name in (REJECTED, f"{_COUNTS}.jsonl", f"{_REJECTED_TMP}.jsonl"):
        storage.delete(storage.join(output_uri, name))
    for split in SPLITS:
        for uri in storage.list_uris(storage.join(output_uri, split), suffix=SHARD_SUFFIX):
            storage.delete(uri)


def _read_side_file(uri: str) -> list[Any]:
    """JSON lines Beam wrote, without the sentinel; the file is deleted after reading."""
    if not storage.exists(uri):
        return []
    rows = [json.loads(line) for line in storage.read_text(uri).splitlines() if line.strip()]
    storage.delete(uri)
    return [row for row in rows if row != _SENTINEL]


def _processing_time(pipeline: Any, num_items: int) -> dict[str, float]:
    """Seconds from the first image started to the last finished in the workers (runner start-up and
    shard writing excluded), from Beam's distribution metrics; empty where the runner reports none."""
    from apache_beam.metrics.metric import MetricsFilter

    try:
        metrics = pipeline.result.metrics().query(MetricsFilter().with_namespace("preprocess"))
        by_name = {m.key.metric.name: m.committed or m.attempted for m in metrics["distributions"]}
        first, last = by_name["image_started_ms"].min, by_name["image_finished_ms"].max
    except Exception:  # noqa: BLE001 - metrics are best effort: some runners do not report distributions
        return {}
    if first is None or last is None or num_items == 0:
        return {}
    seconds = max((last - first) / 1000.0, 1e-3)
    return {"processing_seconds": round(seconds, 3), "images_per_second": round(num_items / seconds, 2)}


def local_runner_args(beam_args: Sequence[str] | None) -> list[str]:
    """Beam arguments with the local runner made explicit: no `--runner`, or `--runner=DirectRunner`, becomes
    the FnApiRunner. Beam's DirectRunner first downloads Prism (a Go binary fetched at run time, which
    fails offline and ignores --direct_num_workers) and then falls back to the FnApiRunner anyway; asking
    for it directly runs the same engine with no network access. Every other runner and flag is untouched.
    """
    args = list(beam_args or [])
    out: list[str] = []
    runner_given = False
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--runner" and i + 1 < len(args):
            arg, i = f"--runner={args[i + 1]}", i + 1
        if arg.startswith("--runner="):
            runner_given = True
            name = arg.split("=", 1)[1]
            if name.lower() in ("directrunner", "direct"):
                log.info("--runner=%s: using Beam's FnApiRunner (what DirectRunner runs offline)", name)
                arg = f"--runner={DEFAULT_RUNNER}"
        out.append(arg)
        i += 1
    if not runner_given:
        out.append(f"--runner={DEFAULT_RUNNER}")
    return out


@dataclass
class Listing:
    """Stage 1's result: the work items (one per image, split assigned) and what the listing refused."""

    items: list[dict[str, Any]]
    rejects: list[dict[str, str]]
    planned: Counter
    patients_moved: int


def list_dataset(modality: str, input_uri: str, val_fraction: float, test_fraction: float, seed: int) -> Listing:
    """Stage 1: list the raw dataset (its layout's reader) and split it by patient."""
    from components.common.datasets import read_dataset

    listing = read_dataset(input_uri, modality)
    plan = plan_splits(listing.records, len(CLASS_NAMES[modality]), val_fraction, test_fraction, seed)
    rejects = [{"image_id": p.name, "reason": p.reason} for p in listing.problems] + plan.rejected
    items = [
        {"image_id": rec.image_id, "patient_id": str(rec.patient_id), "label": int(rec.label), "uri": str(rec.uri),
         "mask_uri": str(rec.mask_uri) if getattr(rec, "mask_uri", None) else "", "split": split}
        for rec, split in sorted(plan.assignments, key=lambda a: a[0].image_id)
    ]
    return Listing(items, rejects, Counter(split for _, split in plan.assignments), plan.patients_moved)


def run_beam(listing: Listing, params: PreprocessParams, output_uri: str, beam_args: Sequence[str] | None,
             images_per_shard: int, say: Callable[[str], None]) -> tuple[str, dict[str, float]]:
    """Stage 2: the Beam pipeline (decode + preprocess + shards + side files); returns (runner, timing)."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    shards = {s: max(1, math.ceil(listing.planned[s] / images_per_shard)) if images_per_shard > 0 else 0
              for s in SPLITS if listing.planned[s]}
    options = PipelineOptions(local_runner_args(beam_args))
    runner = options.get_all_options().get("runner")
    say(f"running Beam ({runner}) on {len(listing.items)} images")
    wall_start = time.perf_counter()
    with beam.Pipeline(options=options) as pipeline:
        _build_pipeline(pipeline, listing.items, listing.rejects, params, output_uri, shards)
    timing = {"wall_seconds": round(time.perf_counter() - wall_start, 3),
              **_processing_time(pipeline, len(listing.items))}
    return runner, timing


def collect_outputs(output_uri: str, names: list[str]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Stage 3: per-split counts and shard lists from what Beam wrote; the dead letter as `rejected.jsonl`."""
    per_split: dict[str, Counter] = defaultdict(Counter)
    for key, n in _read_side_file(storage.join(output_uri, f"{_COUNTS}.jsonl")):
        split, label = key.split("\t")
        per_split[split][int(label)] += int(n)
    rejected = sorted(_read_side_file(storage.join(output_uri, f"{_REJECTED_TMP}.jsonl")),
                      key=lambda r: (r["image_id"], r["reason"]))
    storage.write_text(storage.join(output_uri, REJECTED),
                       "".join(json.dumps(r, sort_keys=True) + "\n" for r in rejected))
    splits: dict[str, Any] = {}
    for split in SPLITS:
        shard_uris = storage.list_uris(storage.join(output_uri, split), suffix=SHARD_SUFFIX)
        if not shard_uris and not per_split.get(split):
            continue
        splits[split] = {
            "count": sum(per_split[split].values()),
            "per_class": {name: per_split[split].get(i, 0) for i, name in enumerate(names)},
            "shards": [f"{split}/{storage.basename(u)}" for u in shard_uris],
        }
    return splits, rejected


def check_reject_rate(num_written: int, rejected: list[dict[str, Any]], max_reject_fraction: float,
                      output_uri: str) -> None:
    """Stage 4: more rejects than `max_reject_fraction` of everything listed fails the run (no manifest is
    written, so nothing trains on what is left); the commonest reasons say what went wrong."""
    total = num_written + len(rejected)
    rate = len(rejected) / total if total else 0.0
    if rate <= max_reject_fraction:
        return
    common = Counter(r["reason"] for r in rejected).most_common(3)
    reasons = "; ".join(f"{n}× {reason}" for reason, n in common)
    raise RetinaError(f"{len(rejected)} of {total} images rejected ({rate:.1%} > max_reject_fraction "
                      f"{max_reject_fraction:.1%}): {reasons}; see {storage.join(output_uri, REJECTED)}")


def run_preprocess(
    modality: str,
    input_uri: str,
    output_uri: str,
    params: PreprocessParams | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
    beam_args: Sequence[str] | None = None,
    images_per_shard: int = 0,
    progress: Callable[[str], None] | None = None,
    max_reject_fraction: float = DEFAULT_MAX_REJECT_FRACTION,
) -> dict[str, Any]:
    """Preprocess the dataset at `input_uri` into TFRecord shards at `output_uri`; returns the manifest.

    Stages: list + split by patient -> Beam (decode, preprocess, shards, dead letter) -> collect counts ->
    check the reject rate -> write the manifest (last: a reader that finds it finds a complete dataset).
    `beam_args` (e.g. `--direct_num_workers=2`, `--runner=FlinkRunner --flink_master=…`) go to Beam as is.
    `images_per_shard` > 0 fixes each split's shard count (every record then crosses one shuffle to reach its
    shard's writer); 0 lets the runner decide: one shard per bundle, written and compressed by the worker
    that preprocessed it, so nothing but file names crosses a shuffle (the faster choice on many workers).
    """
    say = progress or log.info
    params = _check_params(modality, params)
    if images_per_shard < 0:
        raise RetinaError(f"images_per_shard must be 0 (the runner decides) or positive, got {images_per_shard}")
    say(f"listing {modality} dataset at {input_uri}")
    listing = list_dataset(modality, input_uri, val_fraction, test_fraction, seed)
    say(f"{len(listing.items)} images to preprocess ({', '.join(f'{s} {listing.planned[s]}' for s in SPLITS)}), "
        f"{len(listing.rejects)} rejected by the listing, {listing.patients_moved} patients moved between splits")
    _clear_previous(output_uri)
    runner, timing = run_beam(listing, params, output_uri, beam_args, images_per_shard, say)
    splits, rejected = collect_outputs(output_uri, CLASS_NAMES[modality])
    num_images = sum(s["count"] for s in splits.values())
    check_reject_rate(num_images, rejected, max_reject_fraction, output_uri)
    manifest = {
        "modality": modality, "image_size": params.image_size, "class_names": CLASS_NAMES[modality],
        "splits": splits, "parameters": params.to_dict(), "code_version": code_version(),
        "rejected_count": len(rejected), "patients_moved": listing.patients_moved, "num_images": num_images,
        "input_uri": str(input_uri), "runner": runner, "timing": timing,
        "split_rule": {"seed": seed, "val_fraction": val_fraction, "test_fraction": test_fraction},
        "max_reject_fraction": max_reject_fraction,
    }
    storage.write_json(storage.join(output_uri, MANIFEST), manifest)
    written = ", ".join(f"{name} {info['count']}" for name, info in splits.items())
    rate = f", {timing['images_per_second']:.1f} images/s in the workers" if timing.get("images_per_second") else ""
    say(f"wrote {num_images} images ({written}), {len(rejected)} rejected -> {output_uri} "
        f"({timing['wall_seconds']:.1f} s{rate})")
    return manifest


def _check_params(modality: str, params: PreprocessParams | None) -> PreprocessParams:
    check_modality(modality)
    params = params or PreprocessParams(modality=modality)
    if params.modality != modality:
        raise RetinaError(f"preprocessing parameters are for {params.modality!r}, not {modality!r}")
    return params


def manifest_params(manifest: dict[str, Any]) -> PreprocessParams:
    """The parameter object a dataset was preprocessed with, read back from its manifest."""
    return PreprocessParams.from_dict(manifest["parameters"])


def preprocess_to_artifact(
    modality: str,
    input_uri: str,
    output_uri: str,
    artifact_path: str,
    image_size: int = 512,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
    beam_args: str = "",
    params: str = "",
    max_reject_fraction: float = DEFAULT_MAX_REJECT_FRACTION,
) -> dict[str, Any]:
    """What the KFP component does: run the pipeline, copy the manifest into the Dataset artifact's file,
    and return the manifest with `artifact_metadata` (the counts KFP shows on the artifact).

    `params` is a JSON object of further `PreprocessParams` (`{"sigma_ratio": 0.05, "denoise": "nlm"}`)."""
    import shlex
    from pathlib import Path

    try:
        overrides = json.loads(params) if params.strip() else {}
    except json.JSONDecodeError as exc:
        raise RetinaError(f"params is not a JSON object: {exc}") from None
    if not isinstance(overrides, dict):
        raise RetinaError(f"params must be a JSON object of preprocessing parameters, got {params!r}")
    settings = PreprocessParams.with_overrides(modality, image_size, overrides)
    manifest = run_preprocess(modality, input_uri, output_uri, settings, val_fraction=val_fraction,
                              test_fraction=test_fraction, seed=seed, beam_args=shlex.split(beam_args or ""),
                              max_reject_fraction=max_reject_fraction)
    path = Path(artifact_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    metadata: dict[str, Any] = {
        "data_uri": output_uri,
        "modality": modality,
        "image_size": image_size,
        "num_images": manifest["num_images"],
        "rejected_count": manifest["rejected_count"],
        "patients_moved": manifest["patients_moved"],
        "code_version": manifest["code_version"],
    }
    for split, info in manifest["splits"].items():
        metadata[f"{split}_count"] = info["count"]
        for name, n in info["per_class"].items():
            metadata[f"{split}_{name}_count"] = n
    return {**manifest, "artifact_metadata": metadata}
