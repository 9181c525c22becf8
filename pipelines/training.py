"""The training pipeline: preprocess -> train -> evaluate -> register -> (promoted?) deploy -> explain.

One pipeline for both modalities; a run on the cluster (UI, `retina pipeline run --host`, a recurring
run) and a local run (`retina pipeline run --local`, kfp.local SubprocessRunner) execute the same
definition. Cluster-only settings (GPU request, tolerations, Secrets, ConfigMaps) are platform config
that the local runner ignores.
"""

# No `from __future__ import annotations`: KFP reads the real annotation objects.
from typing import NamedTuple

from kfp import dsl

from components.deploy.component import deploy
from components.evaluate.component import evaluate
from components.explain.component import explain
from components.preprocess.component import preprocess
from components.register.component import register
from components.train.component import train
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


def _retry(task: dsl.PipelineTask, attempts: int) -> dsl.PipelineTask:
    """Retry transient failures (S3 hiccups, pre-empted GPU nodes) with backoff; a real bug fails each try."""
    return task.set_retry(num_retries=attempts, backoff_duration="30s", backoff_factor=2.0, backoff_max_duration="10m")


@dsl.pipeline(name="retina-deploy-if-promoted")
def deploy_if_promoted(
    promoted: bool,
    model_name: str,
    version: str,
    serving_base_uri: str,
    server_base_path: str,
    server_address: str,
) -> None:
    """Publish the registered version to TF Serving only when the gate moved `champion` to it.

    A sub-pipeline, so the condition reads its own input; the local runner resolves conditions on a
    parent input but not on a named output of a sibling task.
    """
    with dsl.If(promoted == True, name="promoted"):  # noqa: E712 - KFP builds the condition from `==`
        task = deploy(
            model_name=model_name,
            version=version,
            serving_base_uri=serving_base_uri,
            server_address=server_address,
            server_base_path=server_base_path,
        )
        # Deploying is a side effect on the serving repository: never answer it from the cache.
        task.set_caching_options(False)
        _retry(with_cluster_env(task), 2)


@dsl.pipeline(
    name=PIPELINE_NAME,
    description="Retinal-image CNN: Beam preprocessing, GPU training tracked in MLflow, evaluation, "
    "registry gate, TF Serving deployment of a new champion, Grad-CAM report.",
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
    promotion_metric: str = "",
    promotion_margin: float = 0.0,
    serving_base_uri: str = "s3://models",
    server_base_path: str = "/models",
    server_address: str = "",
    reports_uri: str = "s3://reports",
    explain_methods: str = "gradcam,gradcam++,layercam",
    explain_images: int = 16,
    explain_thresholds: str = "",
    explain_fail_on_gate: bool = False,
    mlflow_experiment: str = "retina",
    model_width: float = 1.0,
    seed: int = 0,
    train_workers: int = 1,
) -> TrainingOutputs:
    """Parameters: `promotion_metric` empty = qwk for fundus, accuracy for OCT; `server_base_path` is the
    serving repository as the model server sees it (`/models` in the TF Serving pod; empty = same as
    `serving_base_uri`); `server_address` (host:port) enables the canary check before `stable` moves;
    `explain_thresholds` (`"randomization_ssim<=0.5,pointing_game>=0.3"`, empty = the defaults) is the
    faithfulness gate on the Grad-CAM report: its verdict is the `explanation_gate_passed` output, and
    `explain_fail_on_gate` makes a failed gate fail the run (the report is still published)."""
    prep = preprocess(
        modality=modality,
        input_uri=raw_data_uri,
        output_uri=f"{datasets_uri}/{modality}/{RUN_ID}",
        image_size=image_size,
        seed=seed,
        beam_args=beam_args,
    ).set_display_name("preprocess (Beam)")
    # New images land under the same raw URI between runs: a cache hit keyed on the URI would train on
    # a stale dataset.
    prep.set_caching_options(False)
    _retry(with_cluster_env(prep, mlflow=False), 2)

    trained = train(
        modality=modality,
        data_uri=prep.outputs["data_uri"],
        model_name=model_name,
        image_size=image_size,
        epochs=epochs,
        batch_size=batch_size,
        output_uri=f"{models_uri}/{modality}/{RUN_ID}",
        learning_rate=learning_rate,
        mlflow_experiment=mlflow_experiment,
        seed=seed,
        width=model_width,
        workers=train_workers,  # >1: a TFJob of that many pods x gpu_count GPUs (infra/k8s/training)
        gpus_per_worker=gpu_count,
    ).set_display_name("train (GPU)")
    # A cache hit would skip the MLflow run that register needs to be fresh; each run trains.
    trained.set_caching_options(False)
    on_gpu(trained, gpu_type, gpu_count)
    trained.set_memory_limit("32G").set_cpu_request("4")
    # train_step resumes from its checkpoint, so a retry after a pre-empted node continues, not restarts.
    _retry(with_cluster_env(trained), 2)

    scored = evaluate(
        modality=modality,
        data_uri=prep.outputs["data_uri"],
        model_uri=trained.outputs["model_uri"],
        run_id=trained.outputs["run_id"],
    )
    _retry(with_cluster_env(scored), 2)

    registered = register(
        modality=modality,
        run_id=trained.outputs["run_id"],
        model_uri=trained.outputs["model_uri"],
        metric=promotion_metric,
        margin=promotion_margin,
    ).after(scored)
    # The gate compares against the champion of *now*: never reuse a cached decision.
    registered.set_caching_options(False)
    _retry(with_cluster_env(registered), 3)

    gate = deploy_if_promoted(
        promoted=registered.outputs["promoted"],
        model_name=registered.outputs["model_name"],
        version=registered.outputs["version"],
        serving_base_uri=serving_base_uri,
        server_base_path=server_base_path,
        server_address=server_address,
    ).set_display_name("deploy if promoted")

    report = explain(
        model_uri=f"models:/{registered.outputs['model_name']}/{registered.outputs['version']}",
        images_uri=prep.outputs["data_uri"],
        reports_uri=reports_uri,
        methods=explain_methods,
        max_images=explain_images,
        run_name=RUN_ID,
        thresholds=explain_thresholds,
        fail_on_gate=explain_fail_on_gate,
    ).after(gate)
    report.set_caching_options(False)
    _retry(with_cluster_env(report), 2)

    return TrainingOutputs(
        accuracy=scored.outputs["accuracy"],
        qwk=scored.outputs["qwk"],
        model_name=registered.outputs["model_name"],
        version=registered.outputs["version"],
        promoted=registered.outputs["promoted"],
        report_uri=report.outputs["report_uri"],
        explanation_gate_passed=report.outputs["gate_passed"],
    )
