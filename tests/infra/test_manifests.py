"""The Kubernetes manifests render like `kustomize build` and validate against the Kubernetes schemas, offline."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

K8S = Path(__file__).resolve().parents[2] / "infra" / "k8s"


def _kustomization_dirs() -> list[Path]:
    return sorted(p.parent for p in K8S.rglob("kustomization.yaml"))


@pytest.mark.parametrize("directory", _kustomization_dirs(), ids=lambda p: str(p.relative_to(K8S)) or ".")
def test_every_kustomization_renders_and_validates(directory: Path, kustomize) -> None:
    rendered = kustomize.render(directory)
    assert rendered.resources, f"{directory} renders no resources"
    for resource in rendered.resources:
        kustomize.validate(resource)


def test_every_manifest_file_is_used_by_a_kustomization(kustomize) -> None:
    """A YAML file no kustomization references is never applied: dead config, or a forgotten resource line."""
    used: set[Path] = set()
    for directory in _kustomization_dirs():
        used |= kustomize.render(directory).files
    orphans = [p for p in K8S.rglob("*.yaml") if p.resolve() not in used]
    assert not orphans, f"not referenced by any kustomization: {orphans}"


def test_default_install_composes_every_base(kustomize) -> None:
    rendered = kustomize.render(K8S)
    bases = {d.name for d in K8S.iterdir() if d.is_dir()}
    top = yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]
    assert {"kubeflow", "secrets", "mlflow", "serving"} <= set(top)
    assert set(top) <= bases
    # KServe is opt-in: an InferenceService needs the KServe CRDs, which a plain KFP cluster lacks.
    assert all(r["kind"] != "InferenceService" for r in rendered.resources)


def test_launcher_pipeline_root_is_on_s3_with_credentials_by_reference(kustomize) -> None:
    launcher = kustomize.render(K8S / "kubeflow").find("ConfigMap", "kfp-launcher")
    assert launcher["metadata"]["namespace"] == "kubeflow"
    assert launcher["data"]["defaultPipelineRoot"].startswith("s3://pipeline-root/")
    providers = yaml.safe_load(launcher["data"]["providers"])
    default = providers["s3"]["default"]
    assert default["credentials"]["fromEnv"] is False
    ref = default["credentials"]["secretRef"]
    assert set(ref) == {"secretName", "accessKeyKey", "secretKeyKey"}
    assert default["forcePathStyle"] is True  # SeaweedFS serves buckets by path, not virtual host


def test_secrets_and_config_maps_the_pipelines_reference_exist_in_the_default_install(kustomize) -> None:
    """Every Secret / ConfigMap name the launcher and the compiled pipelines reference is created by the install.

    The Secrets are value-less templates (filled on the cluster), so their keys are checked in the
    documentation of the Secret's file rather than in `data`.
    """
    from pipelines.k8s import CONFIG_MAPS, MLFLOW_SECRET, S3_SECRET

    rendered = kustomize.render(K8S)
    launcher = rendered.find("ConfigMap", "kfp-launcher")
    ref = yaml.safe_load(launcher["data"]["providers"])["s3"]["default"]["credentials"]["secretRef"]
    by_name = {(r["kind"], r["metadata"]["name"]): r for r in rendered.resources}
    for name in {ref["secretName"], S3_SECRET.name, MLFLOW_SECRET.name}:
        assert ("Secret", name) in by_name, f"Secret {name} is not created by infra/k8s"
        assert by_name[("Secret", name)]["metadata"]["namespace"] == "kubeflow"
    secret_docs = "\n".join(p.read_text() for p in (K8S / "secrets").glob("*.yaml"))
    for key in [ref["accessKeyKey"], ref["secretKeyKey"], *S3_SECRET.key_to_env]:
        assert key in secret_docs, f"key {key} of Secret {S3_SECRET.name} is not documented"
    for name, keys in CONFIG_MAPS.items():
        config_map = by_name[("ConfigMap", name)]
        assert config_map["metadata"]["namespace"] == "kubeflow"
        assert set(keys) <= set(config_map["data"]), f"ConfigMap {name} lacks {set(keys) - set(config_map['data'])}"


def test_endpoints_point_at_services_of_the_default_install(kustomize) -> None:
    """MLflow and TF Serving addresses in retina-endpoints name Services (and ports) the install creates."""
    rendered = kustomize.render(K8S)
    data = rendered.find("ConfigMap", "retina-endpoints")["data"]
    for address in (data["MLFLOW_TRACKING_URI"].split("://", 1)[1], data["RETINA_SERVING_ADDRESS"]):
        host, port = address.rstrip("/").rsplit(":", 1)
        service, namespace = host.split(".")[:2]
        svc = rendered.find("Service", service)
        assert svc["metadata"]["namespace"] == namespace
        assert int(port) in {p["port"] for p in svc["spec"]["ports"]}


def test_schema_validation_rejects_a_broken_manifest(kustomize) -> None:
    """The validator is live: a Deployment without containers and a misspelt field both fail."""
    bad = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "x"},
        "spec": {"selector": {"matchLabels": {"a": "b"}}, "template": {"spec": {"containerz": []}}},
    }
    with pytest.raises(AssertionError, match="Deployment/x"):
        kustomize.validate(bad)
    isvc = {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService", "metadata": {"name": "m"}, "spec": {}}
    with pytest.raises(AssertionError, match="spec.predictor"):
        kustomize.validate(isvc)


def test_renderer_rejects_dangling_resource_paths(tmp_path: Path, kustomize) -> None:
    (tmp_path / "kustomization.yaml").write_text("resources:\n  - missing.yaml\n")
    with pytest.raises(kustomize.Error, match="missing.yaml"):
        kustomize.render(tmp_path)


def test_install_creates_the_buckets_it_points_at(kustomize) -> None:
    """The pipeline root, MLflow's artifacts and the serving repository live in buckets a Job creates."""
    from components.common.config import BUCKETS
    from components.common.images import PROJECT_IMAGE
    from pipelines.k8s import S3_SECRET

    rendered = kustomize.render(K8S)
    job = rendered.find("Job", "retina-buckets")
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == PROJECT_IMAGE
    assert container["command"] == ["retina", "buckets"]
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"] if "valueFrom" in e}
    assert {r["name"] for r in refs.values()} == {S3_SECRET.name}
    assert set(refs) == set(S3_SECRET.key_to_env)
    assert all("value" not in e for e in container["env"])  # credentials by reference only
    launcher = rendered.find("ConfigMap", "kfp-launcher")
    config = rendered.find("ConfigMap", "retina-s3-config")["data"]
    used = {launcher["data"]["defaultPipelineRoot"], config["MLFLOW_ARTIFACTS_DESTINATION"], f"s3://{config['MODELS_BUCKET']}"}
    for uri in used:
        assert uri.removeprefix("s3://").split("/")[0] in BUCKETS, uri


def test_mlflow_secret_documents_every_key_the_pipelines_read() -> None:
    from pipelines.k8s import MLFLOW_SECRET

    text = (K8S / "secrets" / "mlflow-secret.yaml").read_text()
    for key in MLFLOW_SECRET.key_to_env:
        assert key in text, f"key {key} of Secret {MLFLOW_SECRET.name} is not documented"
