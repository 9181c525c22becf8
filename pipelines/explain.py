"""Batch explanation of new images against the registered model, sharded for large image sets.

resolve the model (champion pinned to its version, or the version given) -> split the images into
shards -> explain each shard in parallel (`dsl.ParallelFor`) -> one index over the shard reports.
"""

# No `from __future__ import annotations`: KFP reads the real annotation objects.
from kfp import dsl

from components.explain.component import explain
from components.explain.config import ExplainConfig
from pipelines.k8s import with_cluster_env
from pipelines.steps import list_shards, merge_reports, resolve_model

PIPELINE_NAME = "retina-batch-explanation"
RUN_ID = dsl.PIPELINE_JOB_ID_PLACEHOLDER
# How many explain pods run at once (a compile-time constant in KFP).
MAX_PARALLEL_SHARDS = 4


@dsl.pipeline(name="retina-explain-shards")
def explain_shards(
    model_uri: str,
    shards: list,
    reports_uri: str,
    methods: str,
    shard_size: int,
    run_name: str,
    thresholds: str,
    fail_on_gate: bool,
) -> str:
    """Explain every shard in parallel, then write one index over the shard reports.

    A sub-pipeline so that `model_uri` reaches the loop as a pipeline input: the kfp 2.17 local runner
    replaces every *task output* consumed inside a ParallelFor iteration with the loop item, which
    would hand the shard to `model_uri`. On the cluster it compiles to the same DAG.
    """
    with dsl.ParallelFor(shards, parallelism=MAX_PARALLEL_SHARDS, name="shards") as shard:
        report = explain(
            model_uri=model_uri,
            images_uri=shard.uri,
            reports_uri=reports_uri,
            methods=methods,
            max_images=shard_size,
            run_name=shard.run_name,
            thresholds=thresholds,
            fail_on_gate=fail_on_gate,
        )
        report.set_memory_limit("8G")
        with_cluster_env(report).set_retry(num_retries=2, backoff_duration="30s", backoff_factor=2.0)

    merged = merge_reports(
        report_uris=dsl.Collected(report.outputs["report_uri"]),
        pointing_games=dsl.Collected(report.outputs["pointing_game"]),
        reports_uri=reports_uri,
        model_uri=model_uri,
        run_name=run_name,
    ).set_display_name("report index")
    merged.set_caching_options(False)
    with_cluster_env(merged, mlflow=False).set_retry(num_retries=3, backoff_duration="10s", backoff_factor=2.0)
    return merged.outputs["index_uri"]


@dsl.pipeline(
    name=PIPELINE_NAME,
    description="Grad-CAM family, feature maps, filters and faithfulness for new images, against "
    "models:/<name>@champion or a given version; sharded over parallel explain steps.",
)
def explanation_pipeline(
    modality: str = "fundus",
    images_uri: str = "s3://raw/new",
    model_version: str = "",
    reports_uri: str = "s3://reports",
    work_uri: str = "s3://pipeline-root/shards",
    shard_size: int = 64,
    methods: str = ExplainConfig.methods,
    thresholds: str = "",
    fail_on_gate: bool = False,
) -> str:
    """`model_version` empty = the current champion, pinned once so every shard explains the same model.
    `thresholds` is the faithfulness gate of each shard's report (empty = the defaults); with
    `fail_on_gate` a shard whose explanations fail it fails the run."""
    model = resolve_model(modality=modality, version=model_version).set_display_name("resolve model")
    # "champion" means the champion at run time: never cached.
    model.set_caching_options(False)
    with_cluster_env(model).set_retry(num_retries=3, backoff_duration="10s", backoff_factor=2.0)

    shards = list_shards(
        images_uri=images_uri, shard_size=shard_size, work_uri=f"{work_uri}/{RUN_ID}", run_name=RUN_ID
    )
    shards.set_caching_options(False)  # new images arrive under the same URI
    with_cluster_env(shards, mlflow=False).set_retry(num_retries=3, backoff_duration="10s", backoff_factor=2.0)

    batch = explain_shards(
        model_uri=model.output,
        shards=shards.output,
        reports_uri=reports_uri,
        methods=methods,
        shard_size=shard_size,
        run_name=f"batch-{RUN_ID}",
        thresholds=thresholds,
        fail_on_gate=fail_on_gate,
    ).set_display_name("explain shards")
    return batch.output
