"""TF Serving warmup records: `assets.extra/tf_serving_warmup_requests`, a TFRecord of `PredictionLog`s.

TF Serving replays these requests when it loads a version, before it marks it AVAILABLE, so the first
real request does not pay for graph initialisation (tensorflow/serving `servables/tensorflow/
saved_model_warmup.cc`; at most 1000 records). The infra-validation step replays them too and requires
each one to succeed. Written here until `serving.export.write_warmup_requests` (h19) lands; then this
module calls it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

WARMUP_FILE = "tf_serving_warmup_requests"
ASSETS_EXTRA = "assets.extra"


def warmup_path(saved_model_dir: str | Path) -> Path:
    return Path(saved_model_dir) / ASSETS_EXTRA / WARMUP_FILE


def build_requests(images: np.ndarray, image_bytes: list[bytes]) -> list[Any]:
    """One `serving_default` request on preprocessed images and one `predict_image` request on encoded files."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    tensor = predict_pb2.PredictRequest()
    tensor.model_spec.signature_name = "serving_default"
    tensor.inputs["images"].CopyFrom(tf.make_tensor_proto(np.asarray(images, np.float32)))
    encoded = predict_pb2.PredictRequest()
    encoded.model_spec.signature_name = "predict_image"
    encoded.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto(np.asarray(list(image_bytes), dtype=object)))
    return [tensor, encoded]


def write_warmup_requests(saved_model_dir: str | Path, requests: list[Any]) -> Path:
    """Write `requests` (PredictRequests) as PredictionLog records where TF Serving looks for them."""
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    path = warmup_path(saved_model_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for request in requests:
            log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())
    return path


def read_warmup_requests(saved_model_dir: str | Path) -> list[Any]:
    """The PredictRequests recorded in a SavedModel's warmup file (empty when there is none)."""
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    path = warmup_path(saved_model_dir)
    if not path.exists():
        return []
    out = []
    for raw in tf.data.TFRecordDataset(str(path)):
        log = prediction_log_pb2.PredictionLog()
        log.ParseFromString(raw.numpy())
        out.append(log.predict_log.request)
    return out
