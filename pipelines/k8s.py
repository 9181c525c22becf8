"""How pipeline steps get their cluster settings: Secrets and a ConfigMap referenced by name.

The compiled YAML names the Kubernetes objects and keys only; values live in the cluster
(infra/k8s/secrets, infra/k8s/kubeflow). So one uploaded pipeline package runs on
any cluster, and no credential ever lands in a pipeline spec, a run record or the KFP UI.
Locally (kfp.local) this platform config is ignored and the steps inherit the process environment that
`components.common.config.apply_stack_env()` filled.
"""

from __future__ import annotations

from dataclasses import dataclass

from kfp import dsl, kubernetes


@dataclass(frozen=True)
class SecretRef:
    name: str
    key_to_env: dict[str, str]
    optional: bool = False


# S3 (SeaweedFS) access keys: every step reads or writes object storage.
S3_SECRET = SecretRef(
    "retina-s3", {"AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY"}
)
# MLflow basic-auth, for a tracking server with auth enabled. Same Secret as the server's own settings
# (infra/k8s/secrets); optional keys, so an open server needs nothing added.
MLFLOW_SECRET = SecretRef(
    "retina-mlflow",
    {"MLFLOW_TRACKING_USERNAME": "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD": "MLFLOW_TRACKING_PASSWORD"},
    optional=True,
)
# Non-secret settings, referenced by name: where S3 is (shared with serving and MLflow) and where
# MLflow and the model server are (infra/k8s/kubeflow/retina-endpoints.yaml).
CONFIG_MAPS: dict[str, tuple[str, ...]] = {
    "retina-s3-config": ("AWS_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL", "AWS_DEFAULT_REGION"),
    "retina-endpoints": ("MLFLOW_TRACKING_URI", "RETINA_SERVING_ADDRESS"),
}

# Where GPU training pods go: the taint GPU node pools carry and the label the GPU operator sets.
GPU_TOLERATION_KEY = "nvidia.com/gpu"
GPU_NODE_LABEL = "nvidia.com/gpu.present"


def with_cluster_env(task: dsl.PipelineTask, mlflow: bool = True) -> dsl.PipelineTask:
    """Give a step the S3 credentials (and MLflow's, if it talks to MLflow) plus the endpoints ConfigMap."""
    secrets = [S3_SECRET, MLFLOW_SECRET] if mlflow else [S3_SECRET]
    for secret in secrets:
        kubernetes.use_secret_as_env(
            task, secret_name=secret.name, secret_key_to_env=secret.key_to_env, optional=secret.optional
        )
    for config_map, keys in CONFIG_MAPS.items():
        kubernetes.use_config_map_as_env(task, config_map_name=config_map, config_map_key_to_env={k: k for k in keys})
    return task


def on_gpu(task: dsl.PipelineTask, gpu_type: str, gpu_count: int) -> dsl.PipelineTask:
    """Request `gpu_count` accelerators of `gpu_type` and allow the pod onto tainted GPU nodes.

    `gpu_type` is the accelerator resource name (`nvidia.com/gpu`); the node selector keeps the pod off
    CPU-only nodes even on clusters whose GPU nodes are not tainted.
    """
    task.set_accelerator_type(gpu_type).set_accelerator_limit(gpu_count)
    kubernetes.add_toleration(task, key=GPU_TOLERATION_KEY, operator="Exists", effect="NoSchedule")
    kubernetes.add_node_selector(task, label_key=GPU_NODE_LABEL, label_value="true")
    return task
