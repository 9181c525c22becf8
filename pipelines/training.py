"""The training pipeline: preprocess -> train -> register challenger -> evaluate -> explain -> validate -> push.

Nothing moves before every gate has run: evaluate (challenger AND the current champion on this run's test
split, per-metric floors), explain (faithfulness gate + Grad-CAM drift vs the champion; the report is
published either way) and validate (the SavedModel with warmup records in a private model server,
served outputs == in-process outputs) each return their checks; the last step, push, tags every check
on the MLflow model version and only when all passed moves `champion` and then `stable` (TFX's Evaluator
-> InfraValidator -> Pusher). Each step shows its verdict as Markdown in the Kubeflow UI.

One pipeline for both modalities; a run on the cluster and a local run (`retina pipeline run --local`,
kfp.local SubprocessRunner) execute the same definition. Cluster-only settings (GPU request,
tolerations, Secrets, ConfigMaps) are platform config that the local runner ignores. Each gate's
parameters default to its config dataclass (`config_default`): no default is written twice.
"""

# No `from __future__ import annotations`: KFP reads the real annotation objects.
from typing import NamedTuple

from kfp import dsl

from components.common.step_config import config_default as _default
from components.deploy.component import push
from components.evaluate.comparison import EvaluateConfig
from components.evaluate.component import evaluate_challenger
from components.explain.candidate import ExplainGateConfig
from components.explain.component import explain_challenger
from components.preprocess.component import preprocess
from components.register.component import register_challenger
from components.train.component import train
from components.validate.component import validate
from components.validate.validation import ValidateConfig
from pipelines.k8s import on_gpu, with_cluster_env

PIPELINE_NAME = "retina-training"

# Each run writes under its own prefix: a retry or a re-run never overwrites another run's data.
RUN_ID = dsl.PIPELINE_JOB_ID_PLACEHOLDER


class TrainingOutputs(NamedTuple):
    """What a run reports back (the demo's table; the KFP UI's run outputs)."""

    accuracy: float
    qwk: float
    model_name: str
    version: str
    promoted: bool
    report_uri: str
    explanation_gate_passed: bool
    reason: str


def _retry(task: dsl.PipelineTask, attempts: int) -> dsl.PipelineTask:
    """Retry transient failures (S3 hiccups, pre-empted GPU nodes) with backoff; a real bug fails each try."""
    return task.set_retry(num_retries=attempts, backoff_duration="30s", backoff_factor=2.0, backoff_max_duration="10m")


def _fresh(task: dsl.PipelineTask, attempts: int, mlflow: bool = True) -> dsl.PipelineTask:
    """Gates and side effects read the registry/serving state of *now*: never answered from the cache."""
    task.set_caching_options(False)
    return _retry(with_cluster_env(task, mlflow=mlflow), attempts)


def _train(prep: dsl.PipelineTask, modality: str, models_uri: str, model_name: str, image_size: int, epochs: int,
           batch_size: int, learning_rate: float, mlflow_experiment: str, seed: int, model_width: float,
           gpu_type: str, gpu_count: int, train_workers: int) -> dsl.PipelineTask:
    trained = train(
        modality=modality, data_uri=prep.outputs["data_uri"], model_name=model_name, image_size=image_size,
        epochs=epochs, batch_size=batch_size, output_uri=f"{models_uri}/{modality}/{RUN_ID}",
        learning_rate=learning_rate, mlflow_experiment=mlflow_experiment, seed=seed, width=model_width,
        workers=train_workers,  # >1: a TFJob of that many pods x gpu_count GPUs (infra/k8s/training)
        gpus_per_worker=gpu_count,
    ).set_display_name("train (GPU)")
    on_gpu(trained, gpu_type, gpu_count)
    trained.set_memory_limit("32G").set_cpu_request("4")
    # train_step resumes from its checkpoint, so a retry after a pre-empted node continues, not restarts.
    return _fresh(trained, 2)


@dsl.pipeline(
    name=PIPELINE_NAME,
    description="Retinal-image CNN: Beam preprocessing, GPU training tracked in MLflow, then gates that all "
    "must pass before anything moves: challenger vs champion on one split, explanations (faithfulness, "
    "drift), infra-validation in a private model server; then MLflow champion and TF Serving stable.",
)
def training_pipeline(
    modality: str = "fundus",
    raw_data_uri: str = "s3://raw/eyepacs",
    datasets_uri: str = "s3://datasets",
    models_uri: str = "s3://models/trained",
    image_size: int = 512,
    model_name: str = "deepsense",
    epochs: int = 30,
    batch_size: int = 32,
    learning_rate: float = 1e-3,
    beam_args: str = "",
    gpu_type: str = "nvidia.com/gpu",
    gpu_count: int = 1,
    promotion_metric: str = _default(EvaluateConfig, "metric"),
    promotion_margin: float = _default(EvaluateConfig, "margin"),
    metric_floors: str = _default(EvaluateConfig, "floors"),
    serving_base_uri: str = "s3://models",
    server_base_path: str = "/models",
    server_address: str = "",
    reports_uri: str = "s3://reports",
    explain_methods: str = _default(ExplainGateConfig, "methods"),
    explain_images: int = _default(ExplainGateConfig, "max_images"),
    explain_thresholds: str = _default(ExplainGateConfig, "thresholds"),
    drift_images: int = _default(ExplainGateConfig, "drift_images"),
    min_drift_ssim: float = _default(ExplainGateConfig, "min_drift_ssim"),
    validate_images: int = _default(ValidateConfig, "images"),
    tensor_tolerance: float = _default(ValidateConfig, "tensor_tolerance"),
    image_tolerance: float = _default(ValidateConfig, "image_tolerance"),
    validate_timeout_s: float = _default(ValidateConfig, "timeout_s"),
    mlflow_experiment: str = "retina",
    model_width: float = 1.0,
    seed: int = 0,
    train_workers: int = 1,
) -> TrainingOutputs:
    """Parameters: `promotion_metric` empty = qwk for fundus, accuracy for OCT, which must beat the champion
    (scored on this run's test split) by more than `promotion_margin`; `metric_floors`
    (`"qwk>=0.2,accuracy>=0.5"`) are absolute floors; `explain_thresholds` (`"randomization_ssim<=0.5"`,
    empty = the defaults) is the faithfulness gate; `min_drift_ssim` gates the Grad-CAM drift vs the champion
    (-1 = record only); `tensor_tolerance` / `image_tolerance` bound served vs in-process outputs;
    `server_base_path` is the repository as the model server sees it (`/models` in the TF Serving pod; empty =
    `serving_base_uri`); `server_address` (host:port; empty = the step's `RETINA_SERVING_ADDRESS`, which the
    cluster's retina-endpoints ConfigMap sets to the tf-serving Service) has push load the new version on
    that server before `stable` moves: without any, a push that would replace `stable` is refused, since TF
    Serving refuses a config moving a label to a version it has not loaded (a first push is fine)."""
    prep = preprocess(
        modality=modality, input_uri=raw_data_uri, output_uri=f"{datasets_uri}/{modality}/{RUN_ID}",
        image_size=image_size, seed=seed, beam_args=beam_args,
    ).set_display_name("preprocess (Beam)")
    # New images land under the same raw URI between runs: a cache hit keyed on the URI would train on stale data.
    _fresh(prep, 2, mlflow=False)
    trained = _train(prep, modality, models_uri, model_name, image_size, epochs, batch_size, learning_rate,
                     mlflow_experiment, seed, model_width, gpu_type, gpu_count, train_workers)
    candidate = _fresh(register_challenger(
        modality=modality, run_id=trained.outputs["run_id"], model_uri=trained.outputs["model_uri"],
    ).set_display_name("register challenger"), 3)
    challenger = candidate.outputs["model_uri"]

    scored = _fresh(evaluate_challenger(
        modality=modality, data_uri=prep.outputs["data_uri"], challenger_uri=challenger, champion_uri="",
        split="test", metric=promotion_metric, margin=promotion_margin, floors=metric_floors,
    ).set_display_name("evaluate: challenger vs champion"), 2)
    explained = _fresh(explain_challenger(
        model_uri=challenger, images_uri=prep.outputs["data_uri"], reports_uri=reports_uri, run_name=RUN_ID,
        champion_uri=scored.outputs["champion_uri"], methods=explain_methods, max_images=explain_images,
        thresholds=explain_thresholds, drift_images=drift_images, min_drift_ssim=min_drift_ssim,
    ).set_display_name("explain: faithfulness + drift"), 2)
    validated = _fresh(validate(
        model_uri=challenger, data_uri=prep.outputs["data_uri"], raw_data_uri=raw_data_uri,
        staging_uri=f"{serving_base_uri}/_staging/{RUN_ID}", images=validate_images,
        tensor_tolerance=tensor_tolerance, image_tolerance=image_tolerance, timeout_s=validate_timeout_s,
    ).set_display_name("infra-validate (private model server)"), 2)
    pushed = _fresh(push(
        model_name=candidate.outputs["model_name"], version=candidate.outputs["version"],
        staged_uri=validated.outputs["staged_uri"], serving_base_uri=serving_base_uri,
        champion_uri=scored.outputs["champion_uri"], server_base_path=server_base_path,
        server_address=server_address, evaluate_checks=scored.outputs["checks"],
        explain_checks=explained.outputs["checks"], validate_checks=validated.outputs["checks"],
    ).set_display_name("bless and push"), 2)

    return TrainingOutputs(
        accuracy=scored.outputs["accuracy"], qwk=scored.outputs["qwk"], model_name=candidate.outputs["model_name"],
        version=candidate.outputs["version"], promoted=pushed.outputs["promoted"],
        report_uri=explained.outputs["report_uri"], explanation_gate_passed=explained.outputs["passed"],
        reason=pushed.outputs["reason"],
    )
