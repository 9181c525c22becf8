"""TF Serving warmup records for the candidate: `assets.extra/tf_serving_warmup_requests`, a TFRecord of
`PredictionLog`s, written by `serving.export.write_warmup_requests`.

TF Serving replays these when it loads a version, before it marks it AVAILABLE (tensorflow/serving
`servables/tensorflow/saved_model_warmup.cc`), so the first real request does not pay for graph
initialisation and a version whose signatures cannot run never becomes AVAILABLE. The candidate's file
holds the export's own records (every signature) plus requests built from held-out images of this
run, and the infra-validation step replays each one again itself, requiring every one to succeed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

WARMUP_FILE = "tf_serving_warmup_requests"


def warmup_path(saved_model_dir: str | Path) -> Path:
    return Path(saved_model_dir) / "assets.extra" / WARMUP_FILE


def held_out_records(images: np.ndarray, image_bytes: list[bytes]) -> list[Any]:
    """PredictionLogs: `serving_default` on preprocessed held-out images, `predict_image` on their files."""
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    tensor = prediction_log_pb2.PredictionLog()
    tensor.predict_log.request.model_spec.signature_name = "serving_default"
    tensor.predict_log.request.inputs["images"].CopyFrom(tf.make_tensor_proto(np.asarray(images, np.float32)))
    encoded = prediction_log_pb2.PredictionLog()
    encoded.predict_log.request.model_spec.signature_name = "predict_image"
    encoded.predict_log.request.inputs["image_bytes"].CopyFrom(
        tf.make_tensor_proto(np.asarray(list(image_bytes), dtype=object)))
    return [tensor, encoded]


def write_candidate_warmup(saved_model_dir: str | Path, image_size: int, images: np.ndarray,
                           image_bytes: list[bytes]) -> Path:
    from serving.export import warmup_requests, write_warmup_requests

    records = warmup_requests(image_size) + held_out_records(images, image_bytes)
    return write_warmup_requests(saved_model_dir, image_size, records=records)


def read_warmup_records(saved_model_dir: str | Path) -> list[Any]:
    """The PredictionLogs recorded in a SavedModel's warmup file (empty when there is none)."""
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    path = warmup_path(saved_model_dir)
    if not path.exists():
        return []
    out = []
    for raw in tf.data.TFRecordDataset(str(path)):
        log = prediction_log_pb2.PredictionLog()
        log.ParseFromString(raw.numpy())
        out.append(log)
    return out
