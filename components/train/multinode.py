"""Multi-node training: the train step as a Kubeflow `TFJob` with N GPU workers, created and awaited.

Why TFJob (training-operator v1, `kubeflow.org/v1`) and not Trainer v2's `TrainJob`
(`trainer.kubeflow.org/v1alpha1`): Trainer v2 is the maintained line, but its runtimes cover PyTorch,
JAX, MPI, XGBoost and others and none sets `TF_CONFIG`; `TFJob` (training-operator release-1.9,
still shipped and maintained as the legacy line) writes each worker's `TF_CONFIG`, which
`tf.distribute.MultiWorkerMirroredStrategy` reads as it is (`components.train.training`). A TrainJob
would need our own rendezvous from JobSet host names; see infra/k8s/training/README.md.

`tfjob_manifest` is a pure function (validated against the operator's CRD schema in the tests);
`run_tfjob` is what the `train` component runs when asked for more than one worker: it opens the MLflow run
(so the run id is known and a failed job leaves a FAILED run), creates the TFJob with the `kubernetes`
client, waits for Succeeded/Failed, and copies the chief's model folder into the KFP artifact.
Credentials reach the workers by Secret reference only (`envFrom`), never as values.
A retried step adopts the job of the same name (same output URI) instead of starting a second one.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.common import storage
from components.common.errors import RetinaError
from components.common.images import GPU_IMAGE
from components.train.training import TrainConfig, train_step

GROUP, VERSION, PLURAL, KIND = "kubeflow.org", "v1", "tfjobs", "TFJob"
RUN_ID_ANNOTATION = "retina-xai/mlflow-run-id"
# The container TFJob's controller treats as the TensorFlow one (its default container name).
CONTAINER = "tensorflow"
# Same Secrets and ConfigMaps as every pipeline step (pipelines/k8s.py; infra/k8s/secrets, infra/k8s/kubeflow).
SECRETS = (("retina-s3", False), ("retina-mlflow", True))  # (name, optional)
CONFIG_MAPS = ("retina-s3-config", "retina-endpoints")
GPU_TOLERATION_KEY = "nvidia.com/gpu"
GPU_NODE_LABEL = "nvidia.com/gpu.present"
SA_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


@dataclass(frozen=True)
class TFJobOptions:
    """How the job runs on the cluster (not what it trains: that is the TrainConfig)."""

    workers: int = 2
    gpus_per_worker: int = 1
    gpu_resource: str = "nvidia.com/gpu"
    cpu: str = "4"
    memory: str = "32Gi"
    image: str = GPU_IMAGE
    namespace: str = ""  # default: the namespace this pod runs in
    backoff_limit: int = 3  # pod restarts (preemption, a worker lost) before the job fails
    timeout_s: int = 3 * 24 * 3600
    poll_s: float = 30.0
    ttl_after_finished_s: int = 24 * 3600


def run_train_step(config: TrainConfig, workers: int = 1, gpus_per_worker: int = 1) -> tuple[str, str]:
    """What the KFP `train` component runs: (run_id, model_uri), the model folder copied into the artifact.

    `workers` <= 1: train in this pod (all its GPUs, MirroredStrategy), as before. `workers` > 1: this
    pod only launches and awaits a TFJob of `workers` pods with `gpus_per_worker` GPUs each
    (MultiWorkerMirroredStrategy).
    """
    if workers <= 1:
        return train_step(config)
    return run_tfjob(config, TFJobOptions(workers=workers, gpus_per_worker=gpus_per_worker))


def job_name(config: TrainConfig) -> str:
    """Deterministic per output folder: a retried step finds the job it started (DNS-1035, <= 63 chars)."""
    key = config.output_uri or config.data_uri
    stem = re.sub(r"[^a-z0-9-]+", "-", storage.basename(key).lower()).strip("-")[:30] or "model"
    digest = hashlib.sha256(key.encode()).hexdigest()[:10]
    return f"retina-train-{stem}-{digest}".replace("--", "-")


def worker_argv(config: TrainConfig) -> list[str]:
    """`retina train ...` for every worker: the same command line, TF_CONFIG tells them apart."""
    from components.train.cli import config_to_argv

    return config_to_argv(config.replace(copy_to=None, callbacks=()))


def tfjob_manifest(config: TrainConfig, options: TFJobOptions, name: str, namespace: str,
                   run_id: str = "") -> dict[str, Any]:
    """The TFJob for `config` on `options.workers` GPU workers (pure: no cluster access)."""
    if options.workers < 1:
        raise RetinaError(f"a TFJob needs at least one worker, got {options.workers}")
    for what, uri in (("output", config.output_uri), ("checkpoint", config.checkpoint_uri)):
        if not uri or not storage.is_s3(uri):
            raise RetinaError(f"a multi-worker job needs an s3:// {what} URI that every worker reaches, got {uri!r}")
    if run_id:
        config = config.replace(run_id=run_id)
    env_from: list[dict[str, Any]] = [{"secretRef": {"name": s, "optional": opt}} for s, opt in SECRETS]
    env_from += [{"configMapRef": {"name": c}} for c in CONFIG_MAPS]
    container = {
        "name": CONTAINER, "image": options.image, "command": ["retina"], "args": worker_argv(config),
        "envFrom": env_from,
        "ports": [{"name": "tfjob-port", "containerPort": 2222, "protocol": "TCP"}],
        "resources": {"requests": {"cpu": options.cpu, "memory": options.memory},
                      "limits": {"memory": options.memory, options.gpu_resource: options.gpus_per_worker}},
    }
    pod_spec: dict[str, Any] = {"containers": [container]}
    if options.gpus_per_worker > 0:
        pod_spec["tolerations"] = [{"key": GPU_TOLERATION_KEY, "operator": "Exists", "effect": "NoSchedule"}]
        pod_spec["nodeSelector"] = {GPU_NODE_LABEL: "true"}
    labels = {"app.kubernetes.io/part-of": "retina-xai", "app.kubernetes.io/component": "train"}
    return {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": KIND,
        "metadata": {"name": name, "namespace": namespace, "labels": labels,
                     "annotations": {RUN_ID_ANNOTATION: run_id} if run_id else {}},
        "spec": {
            "runPolicy": {"cleanPodPolicy": "Running", "backoffLimit": options.backoff_limit,
                          "activeDeadlineSeconds": options.timeout_s,
                          "ttlSecondsAfterFinished": options.ttl_after_finished_s},
            "tfReplicaSpecs": {"Worker": {
                "replicas": options.workers,
                # a lost worker fails its peers' collectives: every pod restarts and resumes the checkpoint
                "restartPolicy": "OnFailure",
                "template": {"metadata": {"labels": labels,
                                          "annotations": {"sidecar.istio.io/inject": "false"}},
                             "spec": pod_spec},
            }},
        },
    }


def job_state(job: dict[str, Any]) -> str:
    """'Succeeded', 'Failed' or 'Running' from the job's status conditions (the newest true one wins)."""
    conditions = (job.get("status") or {}).get("conditions") or []
    for condition in reversed(conditions):
        if condition.get("status") == "True" and condition.get("type") in ("Succeeded", "Failed"):
            return str(condition["type"])
    return "Running"


def _failure_message(job: dict[str, Any]) -> str:
    for condition in reversed((job.get("status") or {}).get("conditions") or []):
        if condition.get("type") == "Failed":
            return str(condition.get("message") or condition.get("reason") or "")
    return ""


def _current_namespace() -> str:
    if SA_NAMESPACE_FILE.exists():
        return SA_NAMESPACE_FILE.read_text().strip()
    return "kubeflow"


def _custom_objects_api() -> Any:
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.CustomObjectsApi()


def _is_not_found(exc: Exception) -> bool:
    return getattr(exc, "status", None) == 404


class TFJobClient:
    """The four calls the launcher makes, on one namespace (a thin layer over CustomObjectsApi)."""

    def __init__(self, namespace: str, api: Any = None, sleep: Callable[[float], None] = time.sleep):
        self.namespace, self.api, self.sleep = namespace, api or _custom_objects_api(), sleep

    def get(self, name: str) -> dict[str, Any] | None:
        try:
            return self.api.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name)
        except Exception as exc:
            if _is_not_found(exc):
                return None
            raise

    def create(self, manifest: dict[str, Any]) -> dict[str, Any]:
        return self.api.create_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, manifest)

    def delete(self, name: str) -> None:
        try:
            self.api.delete_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name,
                                                     propagation_policy="Foreground")
        except Exception as exc:
            if not _is_not_found(exc):
                raise

    def wait(self, name: str, timeout_s: float, poll_s: float, progress: Callable[[str], None]) -> dict[str, Any]:
        """Poll until the job is Succeeded or Failed; raises on timeout or when the job disappears."""
        deadline, last = time.monotonic() + timeout_s, ""
        while True:
            job = self.get(name)
            if job is None:
                raise RetinaError(f"TFJob {self.namespace}/{name} was deleted while it ran")
            state = job_state(job)
            if state != last:
                progress(f"TFJob {self.namespace}/{name}: {state}")
                last = state
            if state != "Running":
                return job
            if time.monotonic() > deadline:
                raise RetinaError(f"TFJob {self.namespace}/{name} still running after {timeout_s:.0f} s")
            self.sleep(poll_s)


def _open_run(config: TrainConfig, existing: dict[str, Any] | None) -> str:
    """The MLflow run the chief logs into: the adopted job's run, or a new one."""
    import mlflow
    from mlflow.tracking import MlflowClient

    adopted = ((existing or {}).get("metadata", {}).get("annotations") or {}).get(RUN_ID_ANNOTATION)
    if adopted:
        return str(adopted)
    experiment = mlflow.set_experiment(config.mlflow_experiment)
    run = MlflowClient().create_run(experiment.experiment_id, run_name=config.run_name)
    return run.info.run_id


def _fail_run(run_id: str) -> None:
    from mlflow.tracking import MlflowClient

    if run_id:
        MlflowClient().set_terminated(run_id, status="FAILED")


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """KFP stops a cancelled step with SIGTERM: raise instead of dying, so the job is deleted."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise SystemExit(f"terminated by signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_tfjob(config: TrainConfig, options: TFJobOptions, progress: Callable[[str], None] = print,
              client: TFJobClient | None = None) -> tuple[str, str]:
    """Create (or adopt) the TFJob, wait for it, copy the model into `config.copy_to`; (run_id, model_uri)."""
    namespace = options.namespace or _current_namespace()
    client = client or TFJobClient(namespace)
    name = job_name(config)
    existing = client.get(name)
    if existing is not None and job_state(existing) == "Failed":
        client.delete(name)  # a retry starts over (from the checkpoint), not from a failed job
        existing = None
    run_id = _open_run(config, existing) if config.tracking else ""
    if existing is None:
        client.create(tfjob_manifest(config, options, name, namespace, run_id))
        progress(f"created TFJob {namespace}/{name}: {options.workers} workers x "
                 f"{options.gpus_per_worker} {options.gpu_resource}; MLflow run {run_id or '-'}")
    try:
        with _sigterm_raises():
            job = client.wait(name, options.timeout_s, options.poll_s, progress)
    except BaseException:
        client.delete(name)
        _fail_run(run_id)
        raise
    if job_state(job) == "Failed":
        _fail_run(run_id)
        raise RetinaError(f"TFJob {namespace}/{name} failed: {_failure_message(job)}")
    if config.copy_to:
        with storage.local_copy(str(config.output_uri)) as local:
            shutil.copytree(local, config.copy_to, dirs_exist_ok=True)
    return run_id, str(config.output_uri)
