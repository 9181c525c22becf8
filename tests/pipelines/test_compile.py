"""Both pipelines compile; the packages carry the GPU request, secret references, scheduling rules and images."""

from __future__ import annotations

import pytest

from components.common.images import GPU_IMAGE, PROJECT_IMAGE
from pipelines.k8s import CONFIG_MAPS, GPU_NODE_LABEL, GPU_TOLERATION_KEY, MLFLOW_SECRET, S3_SECRET


def _executors(doc: dict) -> dict:
    return doc["spec"]["deploymentSpec"]["executors"]


def _k8s_executors(doc: dict) -> dict:
    return doc["platform"]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def _all_tasks(doc: dict) -> dict[str, dict]:
    """Every task of the root DAG and of the sub-DAGs (conditions, loops, nested pipelines), by name."""
    tasks = dict(doc["spec"]["root"]["dag"]["tasks"])
    for component in doc["spec"]["components"].values():
        tasks.update(component.get("dag", {}).get("tasks", {}))
    return tasks


def test_both_pipelines_compile(compiled) -> None:
    assert set(compiled) == {"training", "explain"}
    assert compiled["training"]["spec"]["pipelineInfo"]["name"] == "retina-training"
    assert compiled["explain"]["spec"]["pipelineInfo"]["name"] == "retina-batch-explanation"


def test_train_requests_the_gpu_from_pipeline_parameters(compiled) -> None:
    doc = compiled["training"]
    accelerator = _executors(doc)["exec-train"]["container"]["resources"]["accelerator"]
    assert "gpu_type" in accelerator["resourceType"]
    assert "gpu_count" in accelerator["resourceCount"]
    params = doc["spec"]["root"]["inputDefinitions"]["parameters"]
    assert params["gpu_type"]["defaultValue"] == "nvidia.com/gpu"
    # Only training asks for an accelerator.
    others = [name for name, ex in _executors(doc).items() if name != "exec-train" and "accelerator" in
              ex["container"].get("resources", {})]
    assert others == []


def test_train_tolerates_gpu_taint_and_selects_gpu_nodes(compiled) -> None:
    train = _k8s_executors(compiled["training"])["exec-train"]
    assert train["tolerations"] == [{"key": GPU_TOLERATION_KEY, "operator": "Exists", "effect": "NoSchedule"}]
    assert train["nodeSelector"]["labels"] == {GPU_NODE_LABEL: "true"}
    assert "tolerations" not in _k8s_executors(compiled["training"])["exec-evaluate-challenger"]


@pytest.mark.parametrize("pipeline", ["training", "explain"])
def test_every_step_gets_s3_credentials_by_secret_reference(compiled, pipeline) -> None:
    doc = compiled[pipeline]
    k8s = _k8s_executors(doc)
    assert set(k8s) == set(_executors(doc)), "a step without the cluster settings"
    for name, ex in k8s.items():
        secrets = {s["secretName"]: s for s in ex["secretAsEnv"]}
        assert S3_SECRET.name in secrets, name
        assert {k["secretKey"] for k in secrets[S3_SECRET.name]["keyToEnv"]} == set(S3_SECRET.key_to_env)
        maps = {c["configMapNameParameter"]["runtimeValue"]["constant"] for c in ex["configMapAsEnv"]}
        assert maps == set(CONFIG_MAPS), name
    # Steps that talk to MLflow also get its (optional) credentials.
    mlflow_steps = [n for n, ex in k8s.items() if any(s["secretName"] == MLFLOW_SECRET.name for s in ex["secretAsEnv"])]
    assert any("register" in n for n in mlflow_steps) or pipeline == "explain"


@pytest.mark.parametrize("pipeline", ["training", "explain"])
def test_no_credential_value_is_compiled_in(compiled, pipeline, sentinel_secrets) -> None:
    text = compiled[pipeline]["text"]
    for key, value in sentinel_secrets.items():
        assert value not in text, f"{key} value leaked into the {pipeline} package"


@pytest.mark.parametrize("pipeline", ["training", "explain"])
def test_steps_run_the_project_images(compiled, pipeline) -> None:
    images = {name: ex["container"]["image"] for name, ex in _executors(compiled[pipeline]).items()}
    assert set(images.values()) <= {PROJECT_IMAGE, GPU_IMAGE}
    if pipeline == "training":
        assert images["exec-train"] == GPU_IMAGE
        assert {n for n, i in images.items() if i == GPU_IMAGE} == {"exec-train"}


def test_side_effect_steps_are_never_cached_and_all_retry(compiled) -> None:
    tasks = _all_tasks(compiled["training"])
    gates = ("register-challenger", "evaluate-challenger", "explain-challenger", "validate", "push")
    for name in ("train", *gates):
        assert tasks[name]["cachingOptions"].get("enableCache", False) is False, name
    for name in ("preprocess", "train", *gates):
        assert tasks[name]["retryPolicy"]["maxRetryCount"] >= 2, name


def test_push_is_the_one_step_that_moves_anything_and_runs_after_every_gate(compiled) -> None:
    """TFX's Evaluator -> InfraValidator -> Pusher: every gate's checks are inputs of push; nothing deploys
    before it, and the faithfulness thresholds reach the explain gate."""
    tasks = _all_tasks(compiled["training"])
    push = tasks["push"]
    assert {"evaluate-challenger", "explain-challenger", "validate", "register-challenger"} <= set(
        push["dependentTasks"])
    for key, producer in (("evaluate_checks", "evaluate-challenger"), ("explain_checks", "explain-challenger"),
                          ("validate_checks", "validate")):
        assert push["inputs"]["parameters"][key]["taskOutputParameter"]["producerTask"] == producer
    assert not any("deploy" in name for name in tasks)
    explain = tasks["explain-challenger"]["inputs"]["parameters"]
    assert explain["thresholds"]["componentInputParameter"] == "explain_thresholds"
    params = compiled["training"]["spec"]["root"]["inputDefinitions"]["parameters"]
    for name in ("metric_floors", "explain_thresholds", "min_drift_ssim", "tensor_tolerance", "image_tolerance"):
        assert "defaultValue" in params[name], name


def test_batch_explanation_fans_out_over_shards(compiled) -> None:
    tasks = _all_tasks(compiled["explain"])
    loops = [t for t in tasks.values() if "iterator" in t or "parameterIterator" in t]
    assert loops, "no ParallelFor"
    assert "parameterIterator" in loops[0]
    assert {"resolve-model", "list-shards", "explain", "merge-reports"} <= set(tasks)


@pytest.mark.parametrize("pipeline", ["training", "explain"])
def test_steps_do_not_pip_install_at_start(compiled, pipeline) -> None:
    """The images already hold kfp and the project: a pod on an offline cluster must not reach for PyPI."""
    for name, ex in _executors(compiled[pipeline]).items():
        command = " ".join(ex["container"].get("command", []))
        assert "pip install" not in command, name


def test_each_shard_is_explained_under_its_own_report_name(compiled) -> None:
    """The explain step reads both `uri` and `run_name` from the loop item (a constant run name would make
    every shard after the first collide with the first shard's report)."""
    explain_inputs = _all_tasks(compiled["explain"])["explain"]["inputs"]["parameters"]
    for key, field in (("images_uri", "uri"), ("run_name", "run_name")):
        param = explain_inputs[key]
        assert param.get("componentInputParameter", "").endswith("loop-item"), (key, param)
        assert param.get("parameterExpressionSelector") == f'parseJson(string_value)["{field}"]', (key, param)


@pytest.mark.parametrize(("pipeline", "thresholds", "fail"), [
    ("explain", "thresholds", "fail_on_gate"),
])
def test_faithfulness_gate_is_a_pipeline_parameter_wired_to_the_explain_step(compiled, pipeline, thresholds,
                                                                               fail) -> None:
    doc = compiled[pipeline]
    params = doc["spec"]["root"]["inputDefinitions"]["parameters"]
    assert params[thresholds]["parameterType"] == "STRING" and params[fail]["parameterType"] == "BOOLEAN"
    explain_task = next(t for t in _all_tasks(doc).values() if t["componentRef"]["name"] == "comp-explain")
    inputs = explain_task["inputs"]["parameters"]
    assert {"thresholds", "fail_on_gate"} <= set(inputs)
    explain_outputs = doc["spec"]["components"]["comp-explain"]["outputDefinitions"]["parameters"]
    assert explain_outputs["gate_passed"]["parameterType"] == "BOOLEAN"
    if pipeline == "training":
        outputs = doc["spec"]["root"]["outputDefinitions"]["parameters"]
        assert outputs["explanation_gate_passed"]["parameterType"] == "BOOLEAN"
