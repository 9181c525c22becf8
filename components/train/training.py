"""Train one model on a preprocessed dataset, tracked in MLflow, resumable after preemption.

`train(TrainConfig(...))` is the whole step: check the shards, pick a `tf.distribute` strategy (Mirrored
on one node — all local GPUs, or the CPU — MultiWorkerMirrored when `TF_CONFIG` names several
workers), turn on mixed precision when a GPU is present, fit with early stopping and per-epoch
checkpoints (`BackupAndRestore`, synced to the checkpoint URI after every epoch so a restarted pod
continues from the saved epoch), then save the model folder and log it to the MLflow run.

The MLflow run is FINISHED only once the model folder is logged; any exception marks it FAILED and
leaves no `model` artifact. Input problems are found before the run starts.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from components.common import shards as train_data
from components.common import storage
from components.common.config import CLASS_NAMES, check_modality, code_version
from components.common.errors import DatasetError, RetinaError
from components.common.model_store import ModelInfo, save_model_dir

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    modality: str
    data_uri: str
    model_name: str = "deepsense"
    image_size: int | None = None  # default: the dataset's image size
    epochs: int = 10
    batch_size: int = 32  # per replica
    learning_rate: float = 1e-3
    head: str = "softmax"
    width: float = 1.0
    seed: int = 0
    output_uri: str | None = None
    checkpoint_uri: str | None = None
    patience: int = 5
    mlflow_experiment: str = "retina"
    run_name: str | None = None
    tracking: bool = True  # False: no MLflow (then output_uri is required)
    weights: str | None = None  # local weights file for keras.applications backbones
    train_split: str = "train"
    val_split: str = "val"
    class_weighting: bool = True
    cache_dir: str | None = None
    callbacks: list[Any] = field(default_factory=list)  # extra Keras callbacks, run after ours
    copy_to: str | None = None  # also copy the model folder here (a KFP Model artifact's local path)


@dataclass
class TrainResult:
    run_id: str
    model_uri: str
    info: ModelInfo
    history: dict[str, list[float]]
    initial_epoch: int
    epochs_run: int


# ----------------------------------------------------------------------------- distribution
def tf_config() -> dict[str, Any]:
    """`TF_CONFIG` as a dict (`{}` when unset), as the Kubeflow Training Operator sets it on each worker."""
    text = os.environ.get("TF_CONFIG") or "{}"
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RetinaError(f"TF_CONFIG is not valid JSON: {exc}") from exc
    if not isinstance(parsed, dict):
        raise RetinaError(f"TF_CONFIG must be a JSON object with 'cluster' and 'task', got {type(parsed).__name__}")
    return parsed


def tf_config_workers() -> int:
    """Number of workers (chief included) that `TF_CONFIG` describes; 0 when it is unset."""
    cluster = tf_config().get("cluster", {})
    return len(cluster.get("worker", [])) + len(cluster.get("chief", []))


def is_chief() -> bool:
    """The worker that logs to MLflow, writes the model and the checkpoint (the only one when not
    multi-worker): the `chief` task, or worker 0 when the cluster has no chief (TF's own rule)."""
    config = tf_config()
    task, cluster = config.get("task", {}), config.get("cluster", {})
    if not task:
        return True
    if task.get("type") == "chief":
        return True
    return task.get("type") == "worker" and int(task.get("index", 0)) == 0 and not cluster.get("chief")


def mixed_precision_wanted() -> bool:
    """float16 compute with float32 variables pays off on GPUs (tensor cores); on CPU it only slows down."""
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


def choose_strategy() -> Any:
    import tensorflow as tf

    if tf_config_workers() > 1:
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.MirroredStrategy()


# ----------------------------------------------------------------------------- callbacks
def _callbacks_module() -> Any:
    import keras

    class EpochProgress(keras.callbacks.Callback):
        """One line per epoch (the CLI's progress), through `progress` or the log."""

        def __init__(self, total_epochs: int, progress: Callable[[str], None]):
            super().__init__()
            self.total, self.progress, self.started = total_epochs, progress, 0.0

        def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
            self.started = time.monotonic()

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            shown = " ".join(f"{k} {float(v):.4f}" for k, v in sorted((logs or {}).items()) if k != "learning_rate")
            self.progress(f"epoch {epoch + 1}/{self.total} {shown} ({time.monotonic() - self.started:.1f} s)")

    class MlflowEpochMetrics(keras.callbacks.Callback):
        """Per-epoch metrics to the MLflow run, step = epoch (1-based, as users count)."""

        def __init__(self, run_id: str):
            super().__init__()
            from mlflow.tracking import MlflowClient

            self.client, self.run_id = MlflowClient(), run_id

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            metrics = [Metric(k, float(v), now, epoch + 1) for k, v in (logs or {}).items()]
            if metrics:
                self.client.log_batch(self.run_id, metrics=metrics)

    class SyncCheckpoint(keras.callbacks.Callback):
        """Copies the local BackupAndRestore folder to the checkpoint URI after every epoch (runs after it)."""

        def __init__(self, local_dir: Path, uri: str):
            super().__init__()
            self.local_dir, self.uri = local_dir, uri

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            storage.upload_dir(self.local_dir, self.uri)

    return EpochProgress, MlflowEpochMetrics, SyncCheckpoint


# ----------------------------------------------------------------------------- steps
@dataclass
class PreparedData:
    manifest: dict[str, Any]
    class_names: list[str]
    image_size: int
    train_shards: list[Path]
    val_shards: list[Path] | None
    train_scan: train_data.ShardScan
    val_scan: train_data.ShardScan | None


def prepare_data(config: TrainConfig) -> PreparedData:
    """Manifest, staged shards and a full scan of them: every input error surfaces here."""
    check_modality(config.modality)
    manifest = train_data.read_manifest(config.data_uri)
    if manifest.get("modality") and manifest["modality"] != config.modality:
        raise DatasetError(f"dataset {config.data_uri} is {manifest['modality']!r}, not {config.modality!r}")
    class_names = list(manifest.get("class_names") or CLASS_NAMES[config.modality])
    root = train_data.stage_dataset(config.data_uri, config.cache_dir)
    train_shards = train_data.split_shards(root, config.train_split, manifest)
    train_scan = train_data.scan_shards(train_shards, len(class_names), config.modality)
    val_shards = val_scan = None
    if config.val_split:
        val_shards = train_data.split_shards(root, config.val_split, manifest)
        val_scan = train_data.scan_shards(val_shards, len(class_names), config.modality)
    image_size = int(config.image_size or manifest.get("image_size") or 0)
    if image_size <= 0:
        raise RetinaError("no image size: pass --image-size (the manifest does not name one)")
    return PreparedData(manifest, class_names, image_size, train_shards, val_shards, train_scan, val_scan)


@dataclass
class StagedCheckpoint:
    local: Path  # the folder BackupAndRestore reads and writes (its `backup/` sub-folder)
    sync_to: str | None  # URI the chief uploads it to after every epoch (S3), None when local is the URI
    private: bool  # a temporary copy of this process's own, removed at the end


def _stage_checkpoint(checkpoint_uri: str | None, chief: bool = True) -> StagedCheckpoint | None:
    """The BackupAndRestore folder for this worker.

    The chief writes the checkpoint: in place for a local path, through a local copy synced to S3
    otherwise. Other workers of a multi-worker job resume from a private copy of the same checkpoint
    (so every replica restarts at the same epoch) and never write back: Keras 3's BackupAndRestore has no
    notion of a chief, and concurrent writers would corrupt a shared folder.
    """
    if not checkpoint_uri:
        return None
    if chief and not storage.is_s3(checkpoint_uri):
        return StagedCheckpoint(Path(checkpoint_uri), None, private=False)
    local = Path(tempfile.mkdtemp(prefix="retina-ckpt-"))
    if storage.exists(checkpoint_uri):
        storage.download_dir(checkpoint_uri, local)
    return StagedCheckpoint(local, str(checkpoint_uri) if chief else None, private=True)


def train(config: TrainConfig, progress: Callable[[str], None] | None = None) -> TrainResult:
    """Fit, checkpoint, save and log one model. Returns the MLflow run id and where the model folder is."""
    if not config.tracking and not config.output_uri:
        raise RetinaError("without MLflow tracking an output URI is required")
    progress = progress or log.info
    prepared = prepare_data(config)  # raises before any run exists
    progress(f"data {train_data.manifest_summary(prepared.manifest)}; train {prepared.train_scan.count}"
             + (f", val {prepared.val_scan.count}" if prepared.val_scan else "") + " records")

    run_id = ""
    chief = is_chief()
    if config.tracking and chief:
        import mlflow

        mlflow.set_experiment(config.mlflow_experiment)
        run = mlflow.start_run(run_name=config.run_name)
        run_id = run.info.run_id
    try:
        result = _train_in_run(config, prepared, run_id, chief, progress)
    except BaseException:
        if run_id:
            import mlflow

            mlflow.end_run(status="FAILED")
        raise
    if run_id:
        import mlflow

        mlflow.end_run(status="FINISHED")
    return result


def _train_in_run(config: TrainConfig, prepared: PreparedData, run_id: str, chief: bool,
                  progress: Callable[[str], None]) -> TrainResult:
    import keras

    from components.common.metrics import optimise_thresholds
    from components.train.models import build_model

    keras.utils.set_random_seed(config.seed)
    strategy = choose_strategy()
    mixed = mixed_precision_wanted()
    previous_policy = keras.mixed_precision.global_policy().name
    if mixed:
        keras.mixed_precision.set_global_policy("mixed_float16")
    regression = config.head == "regression"
    num_classes = len(prepared.class_names)
    weights = train_data.class_weights(prepared.train_scan.per_class) if config.class_weighting else None
    global_batch = config.batch_size * strategy.num_replicas_in_sync

    if run_id:
        import mlflow

        mlflow.log_params({
            "modality": config.modality, "model_name": config.model_name, "image_size": prepared.image_size,
            "epochs": config.epochs, "batch_size": config.batch_size, "global_batch_size": global_batch,
            "learning_rate": config.learning_rate, "head": config.head, "width": config.width,
            "seed": config.seed, "data_uri": config.data_uri, "patience": config.patience,
            "strategy": type(strategy).__name__, "replicas": strategy.num_replicas_in_sync,
            "mixed_precision": mixed, "train_records": prepared.train_scan.count,
            "val_records": prepared.val_scan.count if prepared.val_scan else 0,
            "class_weights": json.dumps([round(w, 4) for w in weights]) if weights else "none",
            "class_names": json.dumps(prepared.class_names), "code_version": code_version(),
        })
        mlflow.set_tags({"modality": config.modality, "model_name": config.model_name})
        mlflow.log_dict(prepared.manifest, "dataset/manifest.json")
        mlflow.log_dict({"class_names": prepared.class_names}, "class_names.json")

    train_ds = train_data.make_dataset(prepared.train_shards, config.modality, prepared.image_size, global_batch,
                                       training=True, seed=config.seed, weights=weights, regression=regression)
    val_ds = None
    if prepared.val_shards:
        val_ds = train_data.make_dataset(prepared.val_shards, config.modality, prepared.image_size, global_batch,
                                         regression=regression)
    try:
        with strategy.scope():
            model = build_model(config.model_name, config.modality, prepared.image_size, num_classes,
                                head=config.head, width=config.width, weights=config.weights)
            if regression:
                loss, metrics = keras.losses.MeanSquaredError(), [keras.metrics.MeanAbsoluteError(name="mae")]
            else:
                loss = keras.losses.SparseCategoricalCrossentropy()
                metrics = [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
            model.compile(optimizer=keras.optimizers.Adam(config.learning_rate), loss=loss,
                          weighted_metrics=metrics if weights is not None else None,
                          metrics=None if weights is not None else metrics)

        EpochProgress, MlflowEpochMetrics, SyncCheckpoint = _callbacks_module()
        monitor = "val_loss" if val_ds is not None else "loss"
        callbacks: list[Any] = [
            EpochProgress(config.epochs, progress),
            keras.callbacks.EarlyStopping(monitor=monitor, patience=config.patience, restore_best_weights=True),
        ]
        ckpt = _stage_checkpoint(config.checkpoint_uri, chief)
        if ckpt is not None:
            # A sub-folder: BackupAndRestore deletes its folder after a successful fit.
            callbacks.append(keras.callbacks.BackupAndRestore(str(ckpt.local / "backup"), save_freq="epoch"))
            if ckpt.sync_to:
                callbacks.append(SyncCheckpoint(ckpt.local, ckpt.sync_to))
        if run_id:
            callbacks.append(MlflowEpochMetrics(run_id))
        callbacks.extend(config.callbacks)

        history = model.fit(train_ds, validation_data=val_ds, epochs=config.epochs, callbacks=callbacks, verbose=0,
                            shuffle=False)
        epochs_seen = list(history.epoch)
        initial_epoch = epochs_seen[0] if epochs_seen else config.epochs
        if initial_epoch:
            progress(f"resumed from checkpoint at epoch {initial_epoch}")

        thresholds = None
        if regression:
            source = val_ds if val_ds is not None else train_data.make_dataset(
                prepared.train_shards, config.modality, prepared.image_size, global_batch, regression=True)
            y_true, values = train_data.collect_predictions(model, source)
            thresholds = optimise_thresholds(y_true, values.reshape(-1), num_classes)
            progress(f"regression thresholds tuned for QWK on {config.val_split or config.train_split}: "
                     + ", ".join(f"{t:.3f}" for t in thresholds))
            if run_id:
                import mlflow

                mlflow.log_dict({"thresholds": thresholds}, "thresholds.json")
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)

    info = ModelInfo(
        modality=config.modality, model_name=config.model_name, class_names=prepared.class_names,
        image_size=prepared.image_size, head=config.head, thresholds=thresholds,
        preprocessing=dict(prepared.manifest.get("parameters") or {}), code_version=code_version(), run_id=run_id,
    )
    model_uri = _save_outputs(model, info, config, run_id, chief)
    if ckpt is not None and ckpt.sync_to:
        # the run is done; a later run must not resume it
        storage.delete(storage.join(ckpt.sync_to, "backup"))
    if ckpt is not None and ckpt.private:
        shutil.rmtree(ckpt.local, ignore_errors=True)
    hist = {k: [float(v) for v in vals] for k, vals in history.history.items()}
    return TrainResult(run_id, model_uri, info, hist, initial_epoch, len(epochs_seen))


def _save_outputs(model: Any, info: ModelInfo, config: TrainConfig, run_id: str, chief: bool) -> str:
    """Model folder to MLflow (artifact path `model`) and to the output URI; returns the URI to use."""
    with tempfile.TemporaryDirectory(prefix="retina-train-") as tmp:
        local = save_model_dir(model, info, str(Path(tmp) / "model"))
        if not chief:  # other workers of a multi-worker job save too (collective ops) but publish nothing
            return ""
        if config.copy_to:
            shutil.copytree(local, config.copy_to, dirs_exist_ok=True)
        if run_id:
            import mlflow

            mlflow.log_artifacts(local, artifact_path="model")
        if config.output_uri:
            storage.publish_folder(local, config.output_uri, last=["model.keras", "retina_model.json"],
                                   overwrite=True)
            return str(config.output_uri)
    return f"runs:/{run_id}/model"


def config_dict(config: TrainConfig) -> dict[str, Any]:
    out = asdict(config)
    out.pop("callbacks", None)
    return out


def default_checkpoint_uri(output_uri: str) -> str:
    """`<parent>/_checkpoints/<name>` beside the output folder: stable across pod restarts, never inside it."""
    return storage.join(storage.parent(output_uri), "_checkpoints", storage.basename(output_uri))


def train_step(modality: str, data_uri: str, model_name: str, image_size: int, epochs: int, batch_size: int,
               output_uri: str, learning_rate: float = 1e-3, head: str = "softmax", mlflow_experiment: str = "retina",
               seed: int = 0, width: float = 1.0, checkpoint_uri: str = "", artifact_path: str | None = None,
               ) -> tuple[str, str]:
    """What the KFP `train` component runs: train, copy the model folder into the artifact, return ids.

    Checkpoints default to a folder beside the output, so a restarted pod (preemption, KFP retry) with
    the same parameters resumes from its last finished epoch.
    """
    config = TrainConfig(
        modality=modality, data_uri=data_uri, model_name=model_name, image_size=image_size or None,
        epochs=epochs, batch_size=batch_size, learning_rate=learning_rate, head=head, width=width, seed=seed,
        output_uri=output_uri or None, mlflow_experiment=mlflow_experiment,
        checkpoint_uri=checkpoint_uri or (default_checkpoint_uri(output_uri) if output_uri else None),
        copy_to=artifact_path,
    )
    result = train(config, progress=print)
    return result.run_id, result.model_uri
