"""Save and load a trained model directory (`model.keras` + `retina_model.json`) from any URI.

Every later step (evaluate, register, deploy, explain, serve) goes through `load_model`, so a model
can be named however is handy: a local folder, a bare `.keras` file, an `s3://` folder, an MLflow
`runs:/<id>/model` or a registry `models:/<name>@<alias>` / `models:/<name>/<version>`.
TensorFlow and MLflow are imported inside the functions: importing this module stays cheap.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from components.common import storage
from components.common.config import CLASS_NAMES
from components.common.errors import StorageError
from components.common.heads import RegressionHead
from components.common.model_ref import ModelRef

MODEL_FILE = "model.keras"
INFO_FILE = "retina_model.json"


@dataclass
class ModelInfo:
    """What a consumer needs besides the weights: which classes, which input size, how to read the output."""

    modality: str
    model_name: str
    class_names: list[str]
    image_size: int
    head: str = "softmax"
    thresholds: list[float] | None = None
    preprocessing: dict[str, Any] = field(default_factory=dict)
    code_version: str = ""
    run_id: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelInfo:
        """Unknown keys (written by a newer version) are ignored rather than fatal."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def outputs_to_classes(outputs: np.ndarray, info: ModelInfo) -> np.ndarray:
    """Model outputs -> class ids: argmax for the softmax head, thresholds for the regression head."""
    outputs = np.asarray(outputs)
    if info.head == "regression":
        return RegressionHead.for_classes(info.num_classes, info.thresholds).classes(outputs)
    return outputs.argmax(axis=-1).astype(np.int64)


def save_model_dir(model: Any, info: ModelInfo, uri: str, overwrite: bool = False) -> str:
    """Write `model.keras` + `retina_model.json` to `uri`; the folder becomes visible all at once."""
    with tempfile.TemporaryDirectory(prefix="retina-model-") as tmp:
        model.save(str(Path(tmp) / MODEL_FILE))
        (Path(tmp) / INFO_FILE).write_text(json.dumps(info.to_dict(), indent=2, sort_keys=True) + "\n")
        return storage.publish_folder(tmp, uri, last=[MODEL_FILE, INFO_FILE], overwrite=overwrite)


def infer_info(model: Any, modality: str | None = None, model_name: str = "") -> ModelInfo:
    """ModelInfo for a bare `.keras` file: input size and head from the model's shapes."""
    image_size = int(model.input_shape[1])
    outputs = int(model.output_shape[-1])
    if outputs == 1:
        head = "regression"
        class_names = list(CLASS_NAMES.get(modality or "fundus", CLASS_NAMES["fundus"]))
        thresholds = list(RegressionHead.for_classes(len(class_names)).thresholds)
    else:
        head = "softmax"
        known = CLASS_NAMES.get(modality or "")
        class_names = list(known) if known and len(known) == outputs else [f"class_{i}" for i in range(outputs)]
        thresholds = None
    return ModelInfo(
        modality=modality or "",
        model_name=model_name or str(getattr(model, "name", "")),
        class_names=class_names,
        image_size=image_size,
        head=head,
        thresholds=thresholds,
    )


def _load_local(path: Path, modality: str | None) -> tuple[Any, ModelInfo]:
    import keras

    if path.is_file():
        if path.suffix != ".keras":
            raise StorageError(f"not a Keras model file (expected .keras): {path}")
        model = keras.models.load_model(str(path), compile=False)
        return model, infer_info(model, modality, model_name=path.stem)
    model_file = path / MODEL_FILE
    if not model_file.exists():
        raise StorageError(f"no {MODEL_FILE} in model folder: {path}")
    model = keras.models.load_model(str(model_file), compile=False)
    info_file = path / INFO_FILE
    if info_file.exists():
        info = ModelInfo.from_dict(json.loads(info_file.read_text()))
    else:
        info = infer_info(model, modality)
    return model, info


def _download_mlflow(ref: ModelRef, dst: str) -> Path:
    """`runs:/…` or `models:/…` -> a local folder. Registry URIs resolve to the run's logged folder."""
    import mlflow

    uri = ref.uri
    if ref.kind == "registry":
        uri = _registry_source(ref)
    try:
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=dst))
    except Exception as exc:  # noqa: BLE001
        raise StorageError(f"cannot download model from MLflow: {uri} ({type(exc).__name__}: {exc})") from exc


def _registry_source(ref: ModelRef) -> str:
    """Where a registered version's files are: its logged source, else the run's `model` folder."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    try:
        pinned = ref.pinned(client)
        version = client.get_model_version(pinned.name, pinned.version)
    except Exception as exc:  # noqa: BLE001 - MLflow raises its own exception types
        raise StorageError(f"no such registered model version: {ref} ({type(exc).__name__})") from exc
    source = version.source or ""
    if source.startswith(("runs:/", "s3://", "mlflow-artifacts:")):
        return source
    return f"runs:/{version.run_id}/model" if version.run_id else source


def load_model(uri: str, modality: str | None = None) -> tuple[Any, ModelInfo]:
    """Load `(keras.Model, ModelInfo)` from a local folder/.keras file, s3://, runs:/ or models:/ URI."""
    ref = ModelRef.parse(str(uri))
    if ref.is_mlflow:
        with tempfile.TemporaryDirectory(prefix="retina-model-") as tmp:
            return _load_local(_download_mlflow(ref, tmp), modality)
    uri = ref.uri
    if ref.kind == "s3":
        with storage.local_copy(uri) as local:
            return _load_local(Path(local), modality)
    path = Path(uri)
    if not path.exists():
        raise StorageError(f"no such model: {uri}")
    return _load_local(path, modality)
