"""Train one model on a preprocessed dataset, tracked in MLflow, resumable after preemption.

`train(TrainConfig(...))` is the whole step, as a composition of named stages: pick the
`tf.distribute` strategy FIRST (MultiWorkerMirrored when `TF_CONFIG` names several workers, Mirrored
over the local GPUs or the CPU otherwise — collective ops must be configured before TensorFlow runs
any op, and reading the shards runs ops), check the shards, open the MLflow run (chief only), build
and compile the model in the strategy's scope, fit with early stopping and per-epoch checkpoints
(`BackupAndRestore`, synced to the checkpoint URI after every epoch so a restarted pod continues from
the saved epoch), then save the model folder and log it to the MLflow run.

The MLflow run is FINISHED only once the model folder is logged; any exception marks it FAILED and
leaves no `model` artifact. Input problems are found before the run starts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from components.common import shards as train_data
from components.common import storage
from components.common.config import CLASS_NAMES, check_modality, code_version
from components.common.errors import DatasetError, RetinaError
from components.common.model_store import ModelInfo, save_model_dir

log = logging.getLogger(__name__)
Progress = Callable[[str], None]


@dataclass(frozen=True)
class TrainConfig:
    """Everything one training run needs. The one place its defaults are written: the CLI reads them from
    here (`TrainConfig.defaults()`), and the KFP component's literal defaults are checked against them."""

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
    run_id: str | None = None  # attach to this MLflow run (created by the multi-worker launcher)
    tracking: bool = True  # False: no MLflow (then output_uri is required)
    weights: str | None = None  # local weights file for keras.applications backbones
    train_split: str = "train"
    val_split: str = "val"
    class_weighting: bool = True
    cache_dir: str | None = None
    callbacks: tuple[Any, ...] = ()  # extra Keras callbacks, run after ours (not serialisable)
    copy_to: str | None = None  # also copy the model folder here (a KFP Model artifact's local path)

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """Field name -> default, for every field that has one."""
        return {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)


@dataclass
class TrainResult:
    run_id: str
    model_uri: str
    info: ModelInfo
    history: dict[str, list[float]]
    initial_epoch: int
    epochs_run: int
    weights_digest: str = ""  # sha256 of the trained weights: equal on every worker of a multi-worker job


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
    """MultiWorkerMirrored when `TF_CONFIG` names several workers, else Mirrored (local GPUs or the CPU).

    Call it before TensorFlow runs any op in this process: MultiWorkerMirroredStrategy configures the
    collective ops of the eager context, which TensorFlow refuses once the context is initialised
    ("Collective ops must be configured at program startup").
    """
    import tensorflow as tf

    if tf_config_workers() > 1:
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.MirroredStrategy()


# ----------------------------------------------------------------------------- callbacks
def _callbacks_module() -> Any:
    import keras

    class EpochProgress(keras.callbacks.Callback):
        """One line per epoch (the CLI's progress), through `progress` or the log."""

        def __init__(self, total_epochs: int, progress: Progress):
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


# ----------------------------------------------------------------------------- data
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


@dataclass(frozen=True)
class FitPlan:
    """What the strategy and the data decide before the model exists."""

    regression: bool
    num_classes: int
    class_weights: list[float] | None
    global_batch: int
    replicas: int
    strategy_name: str
    mixed_precision: bool


def plan_fit(config: TrainConfig, prepared: PreparedData, strategy: Any) -> FitPlan:
    weights = train_data.class_weights(prepared.train_scan.per_class) if config.class_weighting else None
    replicas = int(strategy.num_replicas_in_sync)
    return FitPlan(config.head == "regression", len(prepared.class_names), weights, config.batch_size * replicas,
                   replicas, type(strategy).__name__, mixed_precision_wanted())


def _datasets(config: TrainConfig, prepared: PreparedData, plan: FitPlan) -> tuple[Any, Any]:
    train_ds = train_data.make_dataset(prepared.train_shards, config.modality, prepared.image_size,
                                       plan.global_batch, training=True, seed=config.seed,
                                       weights=plan.class_weights, regression=plan.regression)
    val_ds = None
    if prepared.val_shards:
        val_ds = train_data.make_dataset(prepared.val_shards, config.modality, prepared.image_size,
                                         plan.global_batch, regression=plan.regression)
    return train_ds, val_ds


# ----------------------------------------------------------------------------- checkpoints
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


def _retire_checkpoint(ckpt: StagedCheckpoint | None) -> None:
    """After a finished run: a later run must not resume it, and private copies go."""
    if ckpt is None:
        return
    if ckpt.sync_to:
        storage.delete(storage.join(ckpt.sync_to, "backup"))
    if ckpt.private:
        shutil.rmtree(ckpt.local, ignore_errors=True)


# ----------------------------------------------------------------------------- the run
def train(config: TrainConfig, progress: Progress | None = None) -> TrainResult:
    """Fit, checkpoint, save and log one model. Returns the MLflow run id and where the model folder is."""
    if not config.tracking and not config.output_uri:
        raise RetinaError("without MLflow tracking an output URI is required")
    strategy = choose_strategy()  # before any other TensorFlow op: see choose_strategy
    progress = progress or log.info
    prepared = prepare_data(config)  # raises before any run exists
    progress(f"data {train_data.manifest_summary(prepared.manifest)}; train {prepared.train_scan.count}"
             + (f", val {prepared.val_scan.count}" if prepared.val_scan else "") + " records")
    chief = is_chief()
    with mlflow_run(config, chief) as run_id:
        return _train_in_run(config, prepared, strategy, run_id, chief, progress)


@contextlib.contextmanager
def mlflow_run(config: TrainConfig, chief: bool) -> Iterator[str]:
    """The chief's MLflow run ('' elsewhere / untracked): FINISHED on success, FAILED on any exception.

    With `config.run_id` the run already exists (the multi-worker launcher made it) and is resumed,
    also after a restarted chief ended it FAILED.
    """
    if not (config.tracking and chief):
        yield ""
        return
    import mlflow

    if config.run_id:
        run = mlflow.start_run(run_id=config.run_id)
    else:
        mlflow.set_experiment(config.mlflow_experiment)
        run = mlflow.start_run(run_name=config.run_name)
    try:
        yield run.info.run_id
    except BaseException:
        mlflow.end_run(status="FAILED")
        raise
    mlflow.end_run(status="FINISHED")


def _train_in_run(config: TrainConfig, prepared: PreparedData, strategy: Any, run_id: str, chief: bool,
                  progress: Progress) -> TrainResult:
    import keras

    keras.utils.set_random_seed(config.seed)
    plan = plan_fit(config, prepared, strategy)
    if run_id:
        log_run_inputs(config, prepared, plan)
    ckpt = _stage_checkpoint(config.checkpoint_uri, chief)
    with _precision_policy(plan.mixed_precision):
        train_ds, val_ds = _datasets(config, prepared, plan)
        with strategy.scope():
            model = build_compiled_model(config, prepared, plan)
        callbacks = _fit_callbacks(config, val_ds is not None, ckpt, run_id, progress)
        with keras_multi_worker_fixes(model):
            history = model.fit(train_ds, validation_data=val_ds, epochs=config.epochs, callbacks=callbacks,
                                verbose=0, shuffle=False)
            require_finite(model, history.history)
            thresholds = _tune_thresholds(model, config, prepared, plan, val_ds, run_id, progress)
        epochs_seen = list(history.epoch)
        initial_epoch = epochs_seen[0] if epochs_seen else config.epochs
        if initial_epoch:
            progress(f"resumed from checkpoint at epoch {initial_epoch}")
    info = ModelInfo(
        modality=config.modality, model_name=config.model_name, class_names=prepared.class_names,
        image_size=prepared.image_size, head=config.head, thresholds=thresholds,
        preprocessing=dict(prepared.manifest.get("parameters") or {}), code_version=code_version(), run_id=run_id,
    )
    synchronize_batch_norm(model, False)
    model_uri = _save_outputs(model, info, config, run_id, chief)
    _retire_checkpoint(ckpt)
    hist = {k: [float(v) for v in vals] for k, vals in history.history.items()}
    return TrainResult(run_id, model_uri, info, hist, initial_epoch, len(epochs_seen), weights_digest(model))


def log_run_inputs(config: TrainConfig, prepared: PreparedData, plan: FitPlan) -> None:
    """Parameters, tags, the dataset manifest and the class names of the active MLflow run."""
    import mlflow

    weights = plan.class_weights
    mlflow.log_params({
        "modality": config.modality, "model_name": config.model_name, "image_size": prepared.image_size,
        "epochs": config.epochs, "batch_size": config.batch_size, "global_batch_size": plan.global_batch,
        "learning_rate": config.learning_rate, "head": config.head, "width": config.width,
        "seed": config.seed, "data_uri": config.data_uri, "patience": config.patience,
        "strategy": plan.strategy_name, "replicas": plan.replicas, "workers": max(tf_config_workers(), 1),
        "mixed_precision": plan.mixed_precision, "train_records": prepared.train_scan.count,
        "val_records": prepared.val_scan.count if prepared.val_scan else 0,
        "class_weights": json.dumps([round(w, 4) for w in weights]) if weights else "none",
        "class_names": json.dumps(prepared.class_names), "code_version": code_version(),
    })
    mlflow.set_tags({"modality": config.modality, "model_name": config.model_name})
    mlflow.log_dict(prepared.manifest, "dataset/manifest.json")
    mlflow.log_dict({"class_names": prepared.class_names}, "class_names.json")


@contextlib.contextmanager
def _precision_policy(mixed: bool) -> Iterator[None]:
    """mixed_float16 for the duration of the fit (GPU only); the previous global policy afterwards."""
    import keras

    previous = keras.mixed_precision.global_policy().name
    if mixed:
        keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def build_compiled_model(config: TrainConfig, prepared: PreparedData, plan: FitPlan) -> Any:
    """The architecture with its loss and metrics (call inside the strategy's scope)."""
    import keras

    from components.train.models import build_model

    model = build_model(config.model_name, config.modality, prepared.image_size, plan.num_classes,
                        head=config.head, width=config.width, weights=config.weights)
    if plan.replicas > 1:
        synchronize_batch_norm(model)
    if plan.regression:
        loss, metrics = keras.losses.MeanSquaredError(), [keras.metrics.MeanAbsoluteError(name="mae")]
    else:
        loss = keras.losses.SparseCategoricalCrossentropy()
        metrics = [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
    weighted = plan.class_weights is not None
    model.compile(optimizer=keras.optimizers.Adam(config.learning_rate), loss=loss,
                  weighted_metrics=metrics if weighted else None, metrics=None if weighted else metrics)
    return model


@contextlib.contextmanager
def keras_multi_worker_fixes(model: Any) -> Iterator[None]:
    """Work around Keras 3 + MultiWorkerMirroredStrategy (keras-team/keras#20585, open), for one fit.

    Two places in Keras 3's TensorFlow trainer break under MultiWorkerMirrored, both reductions over
    workers that MirroredStrategy never reaches:
    - before the first step `fit` builds the model from one batch it gets with
      `strategy.reduce("MEAN", batch)`; that reduce takes one tensor, not the (x, y, w) structure
      ("Attempt to convert a value (PerReplica...)"). Only shapes and dtypes matter there, so the
      model builds from the first local replica's values instead;
    - each step's logs are reduced with `strategy.reduce("MEAN", v, axis=0)`, which fails on the
      scalar loss and metrics ("Invalid reduction dimension 0"). Scalars are reduced with axis=None
      (their mean over the replicas; the metric values are already global, so equal on every replica).
    Outside MultiWorkerMirrored this does nothing.
    """
    if tf_config_workers() <= 1:
        yield
        return
    import tensorflow as tf
    from keras import tree
    from keras.src.backend.tensorflow import trainer as tf_trainer

    strategy = model.distribute_strategy

    def first_local(value: Any) -> Any:
        if isinstance(value, tf.distribute.DistributedValues):
            return strategy.experimental_local_results(value)[0]
        return value

    def maybe_symbolic_build(iterator: Any = None, data_batch: Any = None) -> None:
        if iterator is not None:
            for _, _, batches in iterator:
                data_batch = tree.map_structure(first_local, next(batches))
                break
        with strategy.scope():
            model._symbolic_build(data_batch=data_batch)

    original = tf_trainer.reduce_per_replica

    def reduce_per_replica(values: Any, strategy: Any, reduction: str) -> Any:
        if reduction not in ("auto", "mean"):
            return original(values, strategy, reduction)

        def reduce(value: Any) -> Any:
            if first_local(value).shape.rank == 0:
                return strategy.reduce("MEAN", value, axis=None)
            return original(value, strategy, reduction)

        return tree.map_structure(reduce, values)

    model._maybe_symbolic_build = maybe_symbolic_build
    tf_trainer.reduce_per_replica = reduce_per_replica
    try:
        yield
    finally:
        tf_trainer.reduce_per_replica = original
        del model._maybe_symbolic_build


def synchronize_batch_norm(model: Any, synchronized: bool = True) -> int:
    """Batch statistics over the global batch (`synchronized=True`) in every BatchNormalization layer.

    Keras 3's default (`synchronized=False`) normalises each replica by its own batch and lets each
    update its own moving mean/variance: under MultiWorkerMirrored the trainable weights stay equal but
    the moving statistics drift apart per worker (measured here: ~1e-2 after 3 epochs), so the chief
    would save statistics no other worker has, and a result that depends on the worker count.
    Synchronised, every replica normalises with — and moves towards — the same statistics, as one
    device would with the global batch. Set before the first call traces the layer; reset before the
    model is saved, so a saved model is the same whatever trained it. Returns the count.
    """
    import keras

    count = 0
    stack = [model]
    while stack:
        layer = stack.pop()
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.synchronized = synchronized
            count += 1
        stack.extend(getattr(layer, "layers", []) or [])
    return count


def _fit_callbacks(config: TrainConfig, has_val: bool, ckpt: StagedCheckpoint | None, run_id: str,
                   progress: Progress) -> list[Any]:
    import keras

    EpochProgress, MlflowEpochMetrics, SyncCheckpoint = _callbacks_module()
    callbacks: list[Any] = [
        EpochProgress(config.epochs, progress),
        keras.callbacks.TerminateOnNaN(),
        keras.callbacks.EarlyStopping(monitor="val_loss" if has_val else "loss", patience=config.patience,
                                      restore_best_weights=True),
    ]
    if ckpt is not None:
        # A sub-folder: BackupAndRestore deletes its folder after a successful fit.
        callbacks.append(keras.callbacks.BackupAndRestore(str(ckpt.local / "backup"), save_freq="epoch"))
        if ckpt.sync_to:
            callbacks.append(SyncCheckpoint(ckpt.local, ckpt.sync_to))
    if run_id:
        callbacks.append(MlflowEpochMetrics(run_id))
    callbacks.extend(config.callbacks)
    return callbacks


def _tune_thresholds(model: Any, config: TrainConfig, prepared: PreparedData, plan: FitPlan, val_ds: Any,
                     run_id: str, progress: Progress) -> list[float] | None:
    """Regression head only: the grade cut points that maximise QWK on val (train when there is no val)."""
    if not plan.regression:
        return None
    from components.common.metrics import optimise_thresholds

    source = val_ds if val_ds is not None else train_data.make_dataset(
        prepared.train_shards, config.modality, prepared.image_size, plan.global_batch, regression=True)
    y_true, values = train_data.collect_predictions(model, source)
    thresholds = optimise_thresholds(y_true, values.reshape(-1), plan.num_classes)
    progress(f"regression thresholds tuned for QWK on {config.val_split or config.train_split}: "
             + ", ".join(f"{t:.3f}" for t in thresholds))
    if run_id:
        import mlflow

        mlflow.log_dict({"thresholds": thresholds}, "thresholds.json")
    return thresholds


def weights_digest(model: Any) -> str:
    """sha256 over every weight array's bytes, in the model's order: equal iff the weights are identical."""
    digest = hashlib.sha256()
    for array in model.get_weights():
        digest.update(str(array.shape).encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


class TrainingDiverged(RetinaError):
    """Loss or weights became NaN/inf: the model is not saved, logged or registered."""


def require_finite(model: Any, history: dict[str, list[float]]) -> None:
    """Refuse a diverged fit. `TerminateOnNaN` stops at the first non-finite batch loss; the weights are
    checked too, because a last update can poison them after the last loss was computed."""
    import numpy as np

    bad = [k for k, vals in history.items() if any(not np.isfinite(v) for v in vals)]
    nonfinite = [w.path for w in model.weights if not np.all(np.isfinite(np.asarray(w)))]
    if bad or nonfinite:
        what = (f"non-finite {', '.join(bad)}" if bad else "") + ("; " if bad and nonfinite else "") + (
            f"non-finite weights in {', '.join(nonfinite[:3])}" if nonfinite else "")
        raise TrainingDiverged(f"training diverged ({what}); lower the learning rate. Nothing was saved or registered")


def _save_outputs(model: Any, info: ModelInfo, config: TrainConfig, run_id: str, chief: bool) -> str:
    """Model folder to MLflow (artifact path `model`) and to the output URI; returns the URI to use."""
    if not chief:  # other workers of a multi-worker job hold the same weights but publish nothing
        return ""
    with tempfile.TemporaryDirectory(prefix="retina-train-") as tmp:
        local = save_model_dir(model, info, str(Path(tmp) / "model"))
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


def step_config(**params: Any) -> TrainConfig:
    """TrainConfig from the KFP component's parameters, where '' and 0 mean "not set" (KFP has no None).

    Checkpoints default to a folder beside the output, so a restarted pod (preemption, KFP retry) with
    the same parameters resumes from its last finished epoch.
    """
    unset = {k for k in ("image_size", "output_uri", "checkpoint_uri", "run_name") if not params.get(k)}
    config = TrainConfig(**{k: v for k, v in params.items() if k not in unset})
    if not config.checkpoint_uri and config.output_uri:
        config = config.replace(checkpoint_uri=default_checkpoint_uri(config.output_uri))
    return config


def train_step(config: TrainConfig) -> tuple[str, str]:
    """Single-pod training as the KFP `train` component runs it: (run_id, model_uri), the model folder
    copied into the artifact (`config.copy_to`). Multi-node: `components.train.multinode.run_train_step`."""
    result = train(config, progress=print)
    return result.run_id, result.model_uri
