"""The TFJob the train step creates: valid against the operator's CRD schema, credentials by reference,
the launcher's create / adopt / wait / clean-up logic (no TensorFlow, no cluster)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from components.common.errors import RetinaError
from components.train.cli import config_from_args, config_to_argv
from components.train.multinode import (
    RUN_ID_ANNOTATION,
    TFJobClient,
    TFJobOptions,
    job_name,
    job_state,
    run_tfjob,
    tfjob_manifest,
)
from components.train.training import TrainConfig, step_config

REPO = Path(__file__).resolve().parents[2]
SCHEMA = REPO / "infra" / "k8s" / "training" / "crd" / "tfjob-v1.schema.json"


@pytest.fixture(scope="module")
def validator(strict_crd_validator) -> jsonschema.Validator:
    return strict_crd_validator(json.loads(SCHEMA.read_text()))


def _config(**kw: Any) -> TrainConfig:
    base = dict(modality="fundus", data_uri="s3://datasets/fundus/run-1", model_name="efficientnetb0",
                image_size=512, epochs=30, output_uri="s3://models/trained/fundus/run-1")
    base.update(kw)
    return step_config(**base)


def _errors(validator: jsonschema.Validator, manifest: dict) -> list[str]:
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(manifest)]


@pytest.mark.parametrize(("workers", "gpus"), [(1, 1), (2, 1), (4, 8), (3, 0)])
def test_generated_tfjob_is_valid_against_the_operator_crd_schema(validator, workers, gpus):
    manifest = tfjob_manifest(_config(), TFJobOptions(workers=workers, gpus_per_worker=gpus), "retina-train-x",
                              "kubeflow", run_id="abc123")
    assert _errors(validator, manifest) == []
    worker = manifest["spec"]["tfReplicaSpecs"]["Worker"]
    assert worker["replicas"] == workers
    container = worker["template"]["spec"]["containers"][0]
    assert container["name"] == "tensorflow" and container["resources"]["limits"]["nvidia.com/gpu"] == gpus
    assert ("nodeSelector" in worker["template"]["spec"]) is (gpus > 0)


# Values the CRD schema leaves as free strings but the operator's Go types enumerate
# (training-operator v1.9.0, pkg/apis/kubeflow.org/v1/common_types.go).
RESTART_POLICIES = {"Always", "OnFailure", "Never", "ExitCode"}
CLEAN_POD_POLICIES = {"All", "Running", "None"}


def test_enumerated_fields_hold_values_the_operator_knows():
    manifest = tfjob_manifest(_config(), TFJobOptions(), "retina-train-x", "kubeflow")
    assert manifest["spec"]["tfReplicaSpecs"]["Worker"]["restartPolicy"] in RESTART_POLICIES
    assert manifest["spec"]["runPolicy"]["cleanPodPolicy"] in CLEAN_POD_POLICIES
    assert set(manifest["spec"]["tfReplicaSpecs"]) <= {"Chief", "Worker", "PS", "Evaluator", "Master"}


def test_the_schema_check_can_fail(validator):
    """An unknown field and wrong types are each refused (the validator is not vacuous)."""
    good = tfjob_manifest(_config(), TFJobOptions(), "retina-train-x", "kubeflow")
    for path, key, value in [
        (("spec", "tfReplicaSpecs", "Worker"), "replica", 2),  # unknown field
        (("spec", "tfReplicaSpecs", "Worker"), "replicas", "two"),  # wrong type
        (("spec", "runPolicy"), "backoffLimit", "3"),
        (("spec", "tfReplicaSpecs", "Worker", "template", "spec"), "containers", {"name": "tensorflow"}),
        (("spec", "tfReplicaSpecs", "Worker", "template", "spec"), "nodeSelector", {"gpu": True}),
    ]:
        bad = json.loads(json.dumps(good))
        node = bad
        for part in path:
            node = node[part]
        node[key] = value
        assert _errors(validator, bad), f"{'.'.join(path)}.{key}={value!r} passed the schema"


def test_workers_run_the_cli_with_the_same_config_and_credentials_by_reference():
    config = _config(learning_rate=3e-4, head="regression", patience=7)
    manifest = tfjob_manifest(config, TFJobOptions(workers=2), "retina-train-x", "kubeflow", run_id="r1")
    container = manifest["spec"]["tfReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["retina"]
    from components.cli import build_parser

    rebuilt = config_from_args(build_parser().parse_args(container["args"]))
    assert rebuilt == config.replace(run_id="r1", copy_to=None)
    assert manifest["metadata"]["annotations"][RUN_ID_ANNOTATION] == "r1"
    refs = {(next(iter(ref)), ref[next(iter(ref))]["name"]) for ref in container["envFrom"]}
    assert refs == {("secretRef", "retina-s3"), ("secretRef", "retina-mlflow"),
                    ("configMapRef", "retina-s3-config"), ("configMapRef", "retina-endpoints")}
    text = json.dumps(manifest)
    assert "AWS_SECRET_ACCESS_KEY" not in text and "env" not in container  # no literal values at all


def test_secret_and_config_map_names_match_the_pipeline_steps():
    from components.train import multinode
    from pipelines import k8s

    assert {name for name, _ in multinode.SECRETS} == {k8s.S3_SECRET.name, k8s.MLFLOW_SECRET.name}
    assert set(multinode.CONFIG_MAPS) == set(k8s.CONFIG_MAPS)
    assert (multinode.GPU_TOLERATION_KEY, multinode.GPU_NODE_LABEL) == (k8s.GPU_TOLERATION_KEY, k8s.GPU_NODE_LABEL)


def test_multi_worker_jobs_need_shared_storage():
    with pytest.raises(RetinaError, match="s3:// output"):
        tfjob_manifest(_config(output_uri="/tmp/model"), TFJobOptions(), "n", "ns")
    with pytest.raises(RetinaError, match="s3:// checkpoint"):
        tfjob_manifest(_config(checkpoint_uri="/tmp/ckpt"), TFJobOptions(), "n", "ns")
    with pytest.raises(RetinaError, match="at least one worker"):
        tfjob_manifest(_config(), TFJobOptions(workers=0), "n", "ns")


def test_job_name_is_stable_per_output_and_a_valid_dns_label():
    a, b = _config(), _config(output_uri="s3://models/trained/fundus/run-2")
    assert job_name(a) == job_name(_config()) != job_name(b)
    for name in (job_name(a), job_name(_config(output_uri="s3://m/A_Very.Long--Name_" + "x" * 80))):
        assert len(name) <= 63 and name[0].isalpha() and all(c.isalnum() or c == "-" for c in name)
        assert name == name.lower() and "--" not in name and not name.endswith("-")


@pytest.mark.parametrize(("conditions", "state"), [
    ([], "Running"),
    ([{"type": "Created", "status": "True"}, {"type": "Running", "status": "True"}], "Running"),
    ([{"type": "Running", "status": "False"}, {"type": "Succeeded", "status": "True"}], "Succeeded"),
    ([{"type": "Restarting", "status": "True"}, {"type": "Failed", "status": "True", "message": "x"}], "Failed"),
])
def test_job_state_reads_the_operator_conditions(conditions, state):
    assert job_state({"status": {"conditions": conditions}}) == state


class FakeCustomObjects:
    """CustomObjectsApi's four calls on an in-memory store; `script` advances a job's status per poll."""

    def __init__(self, script: list[Any]):
        self.jobs: dict[str, dict] = {}
        self.script, self.created, self.deleted = list(script), [], []

    def get_namespaced_custom_object(self, group, version, namespace, plural, name):
        if name not in self.jobs:
            raise type("ApiException", (Exception,), {"status": 404})()
        job = self.jobs[name]
        if self.script:
            step = self.script.pop(0)
            if isinstance(step, BaseException):
                raise step
            job["status"] = {"conditions": [{"type": step, "status": "True", "message": "m"}]}
        return job

    def create_namespaced_custom_object(self, group, version, namespace, plural, body):
        assert (group, version, plural) == ("kubeflow.org", "v1", "tfjobs")
        self.jobs[body["metadata"]["name"]] = body
        self.created.append(body)
        return body

    def delete_namespaced_custom_object(self, group, version, namespace, plural, name, propagation_policy=None):
        self.jobs.pop(name, None)
        self.deleted.append(name)


def _launch(api: FakeCustomObjects, tmp_path: Path, **kw: Any) -> tuple[str, str]:
    client = TFJobClient("kubeflow", api=api, sleep=lambda s: None)
    return run_tfjob(_config(tracking=False, **kw), TFJobOptions(poll_s=0.0, timeout_s=60),
                     progress=lambda line: None, client=client)


def test_launcher_creates_waits_and_returns_the_output(tmp_path):
    api = FakeCustomObjects(["Created", "Running", "Running", "Succeeded"])
    run_id, model_uri = _launch(api, tmp_path)
    assert (run_id, model_uri) == ("", "s3://models/trained/fundus/run-1")
    assert len(api.created) == 1 and not api.deleted


def test_a_failed_job_fails_the_step_and_a_retry_starts_it_again(tmp_path):
    api = FakeCustomObjects(["Running", "Failed"])
    with pytest.raises(RetinaError, match="failed: m"):
        _launch(api, tmp_path)
    assert len(api.created) == 1
    api.script = ["Failed", "Running", "Succeeded"]  # the retry finds the failed job first
    _launch(api, tmp_path)
    assert len(api.created) == 2 and api.deleted == [api.created[0]["metadata"]["name"]]


def test_a_retried_step_adopts_the_running_job(tmp_path):
    api = FakeCustomObjects(["Running"])
    name = job_name(_config())
    api.jobs[name] = tfjob_manifest(_config(), TFJobOptions(), name, "kubeflow")
    api.script = ["Running", "Succeeded"]
    _launch(api, tmp_path)
    assert api.created == [] and api.deleted == []


def test_a_cancelled_step_deletes_its_job(tmp_path):
    """KFP cancels with SIGTERM (turned into SystemExit): the GPUs must not keep training for nobody."""
    api = FakeCustomObjects(["Running", SystemExit("terminated by signal 15")])
    with pytest.raises(SystemExit):
        _launch(api, tmp_path)
    assert api.deleted == [api.created[0]["metadata"]["name"]]


def test_component_defaults_are_train_config_defaults():
    from components.train.component import train

    defaults = TrainConfig.defaults()
    inputs = train.component_spec.inputs
    for name in ("learning_rate", "head", "mlflow_experiment", "seed", "width", "patience"):
        assert inputs[name].default == defaults[name], name
    assert inputs["checkpoint_uri"].default == "" and defaults["checkpoint_uri"] is None  # '' means unset
    assert inputs["workers"].default == 1  # single-pod training unless asked


def test_cli_round_trips_a_config():
    from components.cli import build_parser

    config = TrainConfig(modality="oct", data_uri="s3://d", epochs=3, tracking=False, output_uri="/o",
                         width=0.5, checkpoint_uri="s3://c", run_id="abc")
    assert config_from_args(build_parser().parse_args(config_to_argv(config))) == config
    assert config_to_argv(TrainConfig(modality="oct", data_uri="d")) == ["train", "--modality", "oct", "--data", "d"]
