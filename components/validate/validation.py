"""Infra-validation: the candidate's SavedModel, loaded in a model server no default request can reach,
must answer exactly as the in-process model does (TFX InfraValidator, with the raw-image path added).

Stages (one `validate_candidate` call):
1. export the candidate as the SavedModel that will be served, with TF Serving warmup records
   (`assets.extra/tf_serving_warmup_requests`, built from held-out images);
2. stage it at `<staging>/<model>/<version>/`: outside every served model folder, so no production
   server lists it, and push later copies exactly these bytes (checked by content hash);
3. start a private model server on its own free loopback port that serves only the staged folder,
   wait for AVAILABLE (GetModelStatus), replay every warmup request;
4. compare on held-out images: `serving_default` (preprocessed tensor) vs the in-process model within
   `tensor_tolerance` (1e-4: the same graph, only float re-association may differ); `predict_image`
   on the *raw* files vs the in-process model on the Beam-preprocessed record of the same image within
   `image_tolerance` (0.02 on probabilities: the TF preprocessing graph re-implements the OpenCV ops,
   and resampling/rounding differ by a grey level or two, see serving/tf_preprocess.py and its parity test).
The private server is stopped whatever happens; nothing here touches `models.config` or traffic.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from components.common import storage
from components.common.checks import Check
from components.common.model_ref import ModelRef

log = logging.getLogger(__name__)
GATE = "validate"
WARMUP_RPC = {"predict_log": "Predict", "classify_log": "Classify", "regress_log": "Regress",
              "multi_inference_log": "MultiInference"}


@dataclass(frozen=True)
class ValidateConfig:
    """Parameters of the infra-validation step (KFP component and function)."""

    model_uri: str  # the challenger, pinned (`models:/<name>/<version>`)
    data_uri: str  # this run's preprocessed dataset: held-out records (the Beam path)
    raw_data_uri: str  # the raw images those records came from (the raw-image signature's input)
    staging_uri: str  # staging root, e.g. `<serving base>/_staging/<run>`
    split: str = "test"
    images: int = 8
    tensor_tolerance: float = 1e-4
    image_tolerance: float = 0.02
    timeout_s: float = 120.0


@dataclass
class HeldOut:
    image_ids: list[str]
    records: list[bytes]  # the Beam-preprocessed PNGs from the shards
    raw: list[bytes | None]  # the original files (None when not found under raw_data_uri)


@dataclass
class Validation:
    staged_uri: str
    checks: list[Check]


def held_out(cfg: ValidateConfig, modality: str) -> HeldOut:
    """The first `cfg.images` records of the split, with the raw file each one was made from."""
    import tensorflow as tf

    from components.common import shards as data
    from components.common.datasets import read_dataset

    root = data.stage_dataset(cfg.data_uri)
    files = [str(s) for s in data.split_shards(root, cfg.split, data.read_manifest(cfg.data_uri))]
    spec = {"image": tf.io.FixedLenFeature([], tf.string), "image_id": tf.io.FixedLenFeature([], tf.string)}
    ids, records = [], []
    for raw in tf.data.TFRecordDataset(files, compression_type="GZIP").take(cfg.images):
        parsed = tf.io.parse_single_example(raw, spec)
        ids.append(parsed["image_id"].numpy().decode())
        records.append(parsed["image"].numpy())
    by_id = {r.image_id: r.uri for r in read_dataset(cfg.raw_data_uri, modality).records} if cfg.raw_data_uri else {}
    raw_files = [storage.read_bytes(by_id[i]) if i in by_id else None for i in ids]
    return HeldOut(ids, records, raw_files)


def model_inputs(records: list[bytes], image_size: int) -> np.ndarray:
    """Decode the shard PNGs exactly as training does (`shards.decode_record`'s ops)."""
    import tensorflow as tf

    out = []
    for png in records:
        image = tf.image.convert_image_dtype(tf.io.decode_png(png, channels=3), tf.float32)
        if image.shape[0] != image_size or image.shape[1] != image_size:
            image = tf.clip_by_value(tf.image.resize(image, [image_size, image_size], antialias=True), 0.0, 1.0)
        out.append(image.numpy())
    return np.stack(out).astype(np.float32)


def export_candidate(model: Any, info: Any, images: np.ndarray, files: list[bytes], out_dir: Path) -> Path:
    """The SavedModel that will be served, with warmup requests built from held-out images."""
    from components.deploy.deployment import write_fingerprint
    from components.validate.warmup import write_candidate_warmup
    from serving.export import export_saved_model

    exported = export_saved_model(model, info, out_dir / "export")
    write_candidate_warmup(exported, int(info.image_size), images[:2], files[:2])
    write_fingerprint(exported, model, info)
    return exported


def stage(exported: Path, cfg: ValidateConfig, name: str, version: str) -> str:
    """Publish to `<staging>/<model>/<version>`; a retry replaces its own earlier staging copy."""
    from serving.model_repository import SAVED_MODEL_FILE, version_path

    return storage.publish_folder(exported, version_path(cfg.staging_uri, name, int(version)),
                                  last=[SAVED_MODEL_FILE], overwrite=True)


def replay_warmup(client: Any, exported: Path, name: str, version: int) -> Check:
    """Send every recorded warmup request to the candidate, as TF Serving does on load; all must succeed."""
    from components.validate.warmup import read_warmup_records

    requests = []
    for log in read_warmup_records(exported):
        kind = log.WhichOneof("log_type")  # predict_log / classify_log / ...: call the matching RPC
        requests.append((getattr(client.prediction, WARMUP_RPC[kind]), getattr(log, kind).request))
    failures = []
    for call, request in requests:
        request.model_spec.name = name
        request.model_spec.version.value = int(version)
        try:
            call(request, timeout=client.timeout)
        except Exception as exc:  # noqa: BLE001 - any failed replay is the verdict, with its reason
            failures.append(f"{request.model_spec.signature_name}: {str(exc).splitlines()[0][:200]}")
    note = f"{len(requests) - len(failures)}/{len(requests)} replayed" + (f"; {failures[0]}" if failures else "")
    return Check.flag(GATE, "warmup_replayed", bool(requests) and not failures, note)


def output_checks(client: Any, cfg: ValidateConfig, name: str, version: int, model: Any, info: Any,
                  sample: HeldOut) -> list[Check]:
    """Served outputs vs the in-process model: tensor signature and raw-image signature."""
    images = model_inputs(sample.records, int(info.image_size))
    expected = np.asarray(model(images, training=False), dtype=np.float64)
    if info.head == "regression":  # the export serves the one-hot of the thresholded grade
        from components.common.model_store import outputs_to_classes

        expected = np.eye(info.num_classes)[outputs_to_classes(expected, info)]
    served = np.asarray(client.predict_tensor(name, images, version=version)["probabilities"], np.float64)
    tensor_diff = float(np.max(np.abs(served - expected)))
    checks = [Check.compare(GATE, "tensor_max_abs_diff", tensor_diff, "<=", cfg.tensor_tolerance,
                            f"serving_default vs in-process on {len(images)} held-out images")]
    have = [i for i, raw in enumerate(sample.raw) if raw is not None]
    checks.append(Check.compare(GATE, "raw_images_matched", float(len(have)), ">=", 1.0,
                                f"{len(have)}/{len(sample.raw)} held-out records found under the raw data"))
    if have:
        result = client.predict_images(name, [sample.raw[i] for i in have], version=version)
        served_raw = np.asarray(result["probabilities"], np.float64)
        image_diff = float(np.max(np.abs(served_raw - expected[have])))
        checks.append(Check.compare(GATE, "raw_image_max_abs_diff", image_diff, "<=", cfg.image_tolerance,
                                    "predict_image on raw files vs in-process on the Beam-preprocessed records"))
    return checks


def private_server_checks(staged_uri: str, exported: Path, cfg: ValidateConfig, name: str, version: int,
                          model: Any, info: Any, sample: HeldOut) -> list[Check]:
    """A model server of our own, on a free loopback port, serving only the staged folder."""
    from components.deploy.deployment import CanaryFailed, wait_available
    from serving.client import ServingClient
    from serving.server import ModelsNotAvailable, start_server

    try:  # a fresh export that fails to load fails again: no retries (the server refuses to start)
        server = start_server(model_base_path=storage.parent(staged_uri), model_name=name, port=0,
                              poll_interval_s=0, max_num_load_retries=0)
    except ModelsNotAvailable as exc:
        return [Check.flag(GATE, "available", False, str(exc)[:300])]
    try:
        with ServingClient(server.address) as client:
            try:
                wait_available(client, name, version, cfg.timeout_s)
            except CanaryFailed as exc:
                return [Check.flag(GATE, "available", False, str(exc)[:300])]
            checks = [Check.flag(GATE, "available", True, f"private server {server.address}")]
            checks.append(replay_warmup(client, exported, name, version))
            return checks + output_checks(client, cfg, name, version, model, info, sample)
    finally:
        server.stop()


def validate_candidate(cfg: ValidateConfig, markdown_path: str | None = None) -> Validation:
    """Export, stage, load privately, compare; returns the staged URI and the checks (nothing raises on a
    failed check: the verdict goes to push and to the step's Markdown)."""
    from components.common.checks import markdown_table, write_markdown
    from components.common.model_store import load_model

    ref = ModelRef.parse(cfg.model_uri).pinned()
    model, info = load_model(str(ref))
    name, version = (ref.name, ref.version) if ref.kind == "registry" else (info.model_name, "1")
    sample = held_out(cfg, info.modality)
    with tempfile.TemporaryDirectory(prefix="retina-validate-") as tmp:
        images = model_inputs(sample.records, int(info.image_size))
        files = [r for r in sample.raw if r is not None] or sample.records
        exported = export_candidate(model, info, images, files, Path(tmp))
        staged = stage(exported, cfg, name, version)
        checks = private_server_checks(staged, exported, cfg, name, int(version), model, info, sample)
    footer = f"Staged SavedModel: `{staged}` (outside every served model folder)."
    write_markdown(markdown_path, markdown_table("infra-validate: candidate in a private model server", checks,
                                                 footer))
    return Validation(staged, checks)
