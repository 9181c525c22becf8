"""Export a trained Keras model as a TF Serving SavedModel with a tensor and a raw-image signature.

Signatures (all inputs batched on dimension 0):

- `serving_default`: `images` float32 `[N, S, S, 3]` in `[0, 1]` (already preprocessed, exactly what the
  model was trained on) -> `probabilities` float32 `[N, C]`, `class_id` int64 `[N]`,
  `class_names` string `[N, C]`.
- `predict_image`: `image_bytes` string `[N]` of encoded JPEG/PNG -> decode and the *same* preprocessing
  as the training data (`serving.tf_preprocess`, TensorFlow ops only, so the real `tensorflow/serving`
  binary runs it) -> the same outputs. Clients send files as they are.
- `classify`: TF Serving's Classify API (`method_name` `tensorflow/serving/classify`): `inputs` = serialized
  `tf.Example`s with the encoded image under `image/encoded` -> `classes` string `[N, C]`, `scores`
  float32 `[N, C]`.

Why `class_names` is an output of shape `[N, C]` rather than `[C]`: TF Serving's server-side batching
splits every output along dimension 0, so an output without the batch dimension breaks batched serving.
The names are also written to `assets/class_names.txt` and the whole `retina_model.json` to
`assets.extra/`, for tools that read the folder.

Regression heads (the DR option: one continuous grade) have no probabilities. `class_id` comes from the
model's `thresholds`, `probabilities` is the one-hot of `class_id` (so clients handle both heads alike),
and the continuous value is an extra output `grade` float32 `[N]`.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

from components.common import storage
from components.common.errors import RetinaError
from components.common.heads import RegressionHead
from components.preprocess.params import PreprocessParams

SIGNATURE_TENSOR = "serving_default"
SIGNATURE_IMAGE = "predict_image"
SIGNATURE_CLASSIFY = "classify"
INPUT_IMAGES = "images"
INPUT_IMAGE_BYTES = "image_bytes"
CLASSIFY_INPUTS = "inputs"
CLASSIFY_IMAGE_FEATURE = "image/encoded"
CLASSIFY_METHOD_NAME = "tensorflow/serving/classify"
OUTPUT_PROBABILITIES = "probabilities"
OUTPUT_CLASS_ID = "class_id"
OUTPUT_CLASS_NAMES = "class_names"
OUTPUT_GRADE = "grade"


def model_info_dict(info: Any) -> dict[str, Any]:
    """Accept a `ModelInfo` or the plain `retina_model.json` dict; check what the export needs."""
    data = info.to_dict() if hasattr(info, "to_dict") else dict(info)
    for key in ("class_names", "image_size"):
        if not data.get(key):
            raise RetinaError(f"model info lacks {key!r}: cannot export a serving model without it")
    data.setdefault("head", "softmax")
    data.setdefault("modality", "fundus")
    # the one preprocessing parameter object, as the dataset manifest recorded it (defaults filled in)
    data["preprocessing"] = PreprocessParams.for_model(data["modality"], int(data["image_size"]),
                                                       data.get("preprocessing")).to_dict()
    return data


def build_serving_module(model: Any, info: Any, asset_dir: str | Path) -> tuple[Any, dict[str, Any]]:
    """A `tf.Module` that tracks the model plus the concrete functions for each signature.

    `asset_dir` receives `class_names.txt`, which the SavedModel copies into its `assets/`.
    """
    import tensorflow as tf

    from serving import tf_preprocess

    meta = model_info_dict(info)
    size = int(meta["image_size"])
    class_names = [str(n) for n in meta["class_names"]]
    num_classes = len(class_names)
    regression = meta["head"] == "regression"
    head = RegressionHead.for_classes(num_classes, meta.get("thresholds")) if regression else None
    preprocess = tf_preprocess.make_preprocess_fn(PreprocessParams.from_dict(meta["preprocessing"]))

    module = tf.Module()
    module.model = model
    module.class_names_asset = tf.saved_model.Asset(_class_names_file(class_names, asset_dir))
    names_constant = tf.constant(class_names, dtype=tf.string)
    thresholds_constant = tf.constant(head.thresholds if head else [], dtype=tf.float32)

    def outputs_for(images: Any) -> dict[str, Any]:
        raw = tf.cast(model(images, training=False), tf.float32)
        batch = tf.shape(raw)[0]
        out: dict[str, Any] = {}
        if regression:
            grade = tf.reshape(raw, [batch])
            class_id = tf.searchsorted(thresholds_constant, grade, side="right", out_type=tf.int64)
            class_id = tf.minimum(class_id, num_classes - 1)
            out[OUTPUT_PROBABILITIES] = tf.one_hot(class_id, num_classes, dtype=tf.float32)
            out[OUTPUT_GRADE] = grade
        else:
            out[OUTPUT_PROBABILITIES] = raw
            class_id = tf.argmax(raw, axis=-1, output_type=tf.int64)
        out[OUTPUT_CLASS_ID] = class_id
        out[OUTPUT_CLASS_NAMES] = tf.tile(names_constant[tf.newaxis, :], [batch, 1])
        return out

    def decode_batch(image_bytes: Any) -> Any:
        return tf.map_fn(
            preprocess, image_bytes, fn_output_signature=tf.TensorSpec([size, size, 3], tf.float32)
        )

    @tf.function(autograph=False, input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32, name=INPUT_IMAGES)])
    def serve_images(images: Any) -> dict[str, Any]:
        return outputs_for(images)

    @tf.function(autograph=False, input_signature=[tf.TensorSpec([None], tf.string, name=INPUT_IMAGE_BYTES)])
    def serve_image_bytes(image_bytes: Any) -> dict[str, Any]:
        return outputs_for(decode_batch(image_bytes))

    @tf.function(autograph=False, input_signature=[tf.TensorSpec([None], tf.string, name=CLASSIFY_INPUTS)])
    def classify(inputs: Any) -> dict[str, Any]:
        features = tf.io.parse_example(inputs, {CLASSIFY_IMAGE_FEATURE: tf.io.FixedLenFeature([], tf.string)})
        out = outputs_for(decode_batch(features[CLASSIFY_IMAGE_FEATURE]))
        return {"classes": out[OUTPUT_CLASS_NAMES], "scores": out[OUTPUT_PROBABILITIES]}

    module.serve_images = serve_images
    module.serve_image_bytes = serve_image_bytes
    module.classify = classify
    signatures = {
        SIGNATURE_TENSOR: serve_images.get_concrete_function(),
        SIGNATURE_IMAGE: serve_image_bytes.get_concrete_function(),
        SIGNATURE_CLASSIFY: classify.get_concrete_function(),
    }
    return module, signatures


def _class_names_file(class_names: list[str], asset_dir: str | Path) -> str:
    path = Path(asset_dir) / "class_names.txt"
    path.write_text("\n".join(class_names) + "\n")
    return str(path)


def _write_archive(model: Any, module: Any, target: Path) -> None:
    """Save through Keras' ExportArchive, which tracks the model's variables so that a *session* load —
    how TF Serving loads every SavedModel — restores the variables the signatures read. A plain
    `tf.saved_model.save` of a module holding a Keras 3 model restores copies instead and TF Serving's
    first request fails with "Could not find variable ..." (found by loading exports as TF Serving does)."""
    import keras

    archive = keras.export.ExportArchive()
    archive.track(model)
    for name, fn in ((SIGNATURE_TENSOR, module.serve_images), (SIGNATURE_IMAGE, module.serve_image_bytes),
                     (SIGNATURE_CLASSIFY, module.classify)):
        archive.add_endpoint(name, fn)
    archive._tf_trackable.class_names_asset = module.class_names_asset  # noqa: SLF001 - copied into assets/
    archive.write_out(str(target), verbose=False)


def _mark_classify_signature(saved_model_pb: Path) -> None:
    """`tf.saved_model.save` tags every signature as `predict`; TF Serving's Classify needs the classify
    method name, so the one signature meant for it is re-tagged in the saved graph."""
    from tensorflow.core.protobuf import saved_model_pb2

    saved = saved_model_pb2.SavedModel()
    saved.ParseFromString(saved_model_pb.read_bytes())
    for meta_graph in saved.meta_graphs:
        if SIGNATURE_CLASSIFY in meta_graph.signature_def:
            meta_graph.signature_def[SIGNATURE_CLASSIFY].method_name = CLASSIFY_METHOD_NAME
    saved_model_pb.write_bytes(saved.SerializeToString())


def export_saved_model(model: Any, info: Any, export_dir: str | Path, overwrite: bool = False,
                       warmup: bool = True) -> Path:
    """Write the SavedModel to the local folder `export_dir` and return its path.

    With `warmup` (the default) it also writes TF Serving's warmup file (`write_warmup_requests`).

    The folder appears all at once (written beside it, then renamed), so a server polling the model
    repository never loads a half-written version. To publish to `s3://`, export locally and use
    `storage.publish_folder(path, uri, last=["saved_model.pb"])`.
    """

    export_dir = Path(export_dir)
    if str(export_dir).startswith("s3://"):
        raise RetinaError(f"export_saved_model writes a local folder; publish it to S3 afterwards: {export_dir}")
    if export_dir.exists() and not overwrite:
        raise RetinaError(f"refusing to overwrite an existing export: {export_dir}")
    meta = model_info_dict(info)
    export_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = export_dir.parent / f".{export_dir.name}.{uuid.uuid4().hex[:8]}.tmp"
    asset_dir = Path(tempfile.mkdtemp(prefix="retina-export-assets-"))
    try:
        module, _ = build_serving_module(model, info, asset_dir)
        _write_archive(model, module, staging)
        _mark_classify_signature(staging / "saved_model.pb")
        extra = staging / "assets.extra"
        extra.mkdir(exist_ok=True)
        (extra / "retina_model.json").write_text(json.dumps(meta, indent=2, sort_keys=True, default=str) + "\n")
        if warmup:
            write_warmup_requests(staging, int(meta["image_size"]))
        storage.swap_in_dir(staging, export_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(asset_dir, ignore_errors=True)
    return export_dir


WARMUP_FILE = "tf_serving_warmup_requests"


def warmup_requests(image_size: int, batch_sizes: tuple[int, ...] = (1,)) -> list[Any]:
    """PredictionLog records that exercise every signature: `serving_default` (a grey image tensor),
    `predict_image` (a small JPEG) and `classify` (the JPEG in a tf.Example), at each batch size."""
    import numpy as np
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    from serving import tensors

    grey = np.full((image_size, image_size, 3), 0.5, np.float32)
    jpeg = tf.io.encode_jpeg(warmup_photo(max(4 * image_size, 256))).numpy()
    records = []
    for n in batch_sizes:
        log = prediction_log_pb2.PredictionLog()
        request = log.predict_log.request
        request.model_spec.signature_name = SIGNATURE_TENSOR
        tensors.from_array(np.repeat(grey[np.newaxis], n, axis=0), request.inputs[INPUT_IMAGES])
        records.append(log)
        log = prediction_log_pb2.PredictionLog()
        request = log.predict_log.request
        request.model_spec.signature_name = SIGNATURE_IMAGE
        tensors.from_array(np.asarray([jpeg] * n, dtype=object), request.inputs[INPUT_IMAGE_BYTES])
        records.append(log)
        log = prediction_log_pb2.PredictionLog()
        request = log.classify_log.request
        request.model_spec.signature_name = SIGNATURE_CLASSIFY
        for _ in range(n):
            example = request.input.example_list.examples.add()
            example.features.feature[CLASSIFY_IMAGE_FEATURE].bytes_list.value.append(jpeg)
        records.append(log)
    return records


def warmup_photo(side: int) -> Any:
    """A fundus-like test photo (textured orange disc on black) that every modality's preprocessing
    accepts: the raw-image signature refuses blank images and photos without a retina outline, and a
    warmup record that fails would fail the version's load."""
    import numpy as np

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:side, :side]
    r = np.hypot(yy - side / 2, xx - side / 2) / (0.45 * side)
    texture = rng.normal(0, 18, (side, side)) + 30 * np.sin(xx / 7.0) * np.cos(yy / 11.0)
    disc = (r < 1.0)[..., None] * (np.array([200.0, 90.0, 40.0]) * (1.1 - 0.5 * r[..., None] ** 2))
    photo = np.clip(disc + (r < 1.0)[..., None] * texture[..., None], 0, 255)
    return photo.astype(np.uint8)


def write_warmup_requests(export_dir: str | Path, image_size: int, records: list[Any] | None = None,
                          batch_sizes: tuple[int, ...] = (1,)) -> Path:
    """Write `assets.extra/tf_serving_warmup_requests` (TFRecord of PredictionLog, TF Serving's format).

    TF Serving (and `retina serve --enable_model_warmup`, on by default in both) replays these before the
    version becomes AVAILABLE, so the first real request does not pay for graph optimisation, and a
    version whose signatures cannot run fails to load instead of failing traffic — which is what the
    infra-validation step relies on. `records` defaults to `warmup_requests(image_size, batch_sizes)`.
    """
    import tensorflow as tf

    target = Path(export_dir) / "assets.extra" / WARMUP_FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    chosen = records if records is not None else warmup_requests(image_size, batch_sizes)
    with tf.io.TFRecordWriter(str(target)) as writer:
        for record in chosen:
            writer.write(record.SerializeToString())
    return target
