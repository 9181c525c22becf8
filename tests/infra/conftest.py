"""Offline kustomize rendering and Kubernetes schema validation for the manifests under infra/k8s.

No kustomize binary or cluster exists here, so this renders the subset of kustomize the project uses
(resources, namespace, name prefix/suffix, labels, annotations, generators, strategic-merge patches,
images, replicas) and refuses anything else, so a manifest never silently passes with a feature that
was skipped. Built-in kinds are validated with the JSON schemas shipped by `kubernetes-validate`
(strict: unknown fields fail); custom resources (KServe) are checked for the fields their CRDs require.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
K8S_ROOT = REPO / "infra" / "k8s"
KUSTOMIZATION_NAMES = ("kustomization.yaml", "kustomization.yml", "Kustomization")

# Kubernetes minor version the manifests target (schemas shipped by kubernetes-validate).
K8S_VERSION = "1.31"

SUPPORTED_KEYS = {
    "apiVersion",
    "kind",
    "metadata",
    "resources",
    "components",
    "namespace",
    "namePrefix",
    "nameSuffix",
    "commonLabels",
    "labels",
    "commonAnnotations",
    "configMapGenerator",
    "secretGenerator",
    "generatorOptions",
    "patches",
    "patchesStrategicMerge",
    "images",
    "replicas",
}

CLUSTER_SCOPED_KINDS = {
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "PersistentVolume",
    "StorageClass",
    "PriorityClass",
    "IngressClass",
    "ValidatingWebhookConfiguration",
    "MutatingWebhookConfiguration",
}

# Custom resources: group/version/kind -> fields their CRD requires (dotted paths).
CRD_REQUIRED_FIELDS: dict[tuple[str, str], list[str]] = {
    ("serving.kserve.io/v1beta1", "InferenceService"): ["metadata.name", "spec.predictor"],
    # full CRD-schema validation: tests/preprocess/test_runners.py (infra/k8s/flink/crd)
    ("flink.apache.org/v1beta1", "FlinkDeployment"): ["metadata.name", "spec.flinkVersion", "spec.image"],
}


class KustomizeError(AssertionError):
    """A kustomization that `kustomize build` would reject (or that uses a feature not rendered here)."""


@dataclass
class Rendered:
    root: Path
    resources: list[dict[str, Any]] = field(default_factory=list)
    files: set[Path] = field(default_factory=set)

    def find(self, kind: str, name: str) -> dict[str, Any]:
        hits = [r for r in self.resources if r.get("kind") == kind and r["metadata"].get("name") == name]
        if not hits:
            raise KeyError(f"{kind}/{name} not rendered from {self.root}")
        return hits[0]


def kustomization_file(directory: Path) -> Path:
    for name in KUSTOMIZATION_NAMES:
        if (directory / name).is_file():
            return directory / name
    raise KustomizeError(f"{directory}: no kustomization.yaml")


def _load_yaml_docs(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise KustomizeError(f"missing resource file: {path}")
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    for d in docs:
        if not isinstance(d, dict) or "kind" not in d or "apiVersion" not in d:
            raise KustomizeError(f"{path}: every document needs apiVersion and kind")
        d.setdefault("metadata", {})
        if not d["metadata"].get("name"):
            raise KustomizeError(f"{path}: {d['kind']} without metadata.name")
    return docs


def _merge(base: Any, patch: Any) -> Any:
    """Strategic merge, the part the manifests need: dicts merge, lists of named dicts merge by name."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for key, value in patch.items():
            if value is None:
                out.pop(key, None)
            else:
                out[key] = _merge(base.get(key), value) if key in base else copy.deepcopy(value)
        return out
    if (
        isinstance(base, list)
        and isinstance(patch, list)
        and all(isinstance(x, dict) and "name" in x for x in base + patch)
    ):
        out = [copy.deepcopy(x) for x in base]
        for item in patch:
            idx = next((i for i, x in enumerate(out) if x["name"] == item["name"]), None)
            if item.get("$patch") == "delete":
                if idx is None:
                    raise KustomizeError(f"$patch: delete of {item['name']!r}, which does not exist")
                del out[idx]
            elif idx is None:
                out.append(copy.deepcopy(item))
            else:
                out[idx] = _merge(out[idx], item)
        return out
    return copy.deepcopy(patch)


def _json_patch(doc: dict[str, Any], ops: list[dict[str, Any]], where: str) -> None:
    """RFC 6902 add / remove / replace, as kustomize applies JSON6902 patches."""
    for op in ops:
        parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        node: Any = doc
        for part in parts[:-1]:
            try:
                node = node[int(part)] if isinstance(node, list) else node[part]
            except (KeyError, IndexError, ValueError) as exc:
                raise KustomizeError(f"{where}: JSON patch path {op['path']!r} does not exist") from exc
        last = parts[-1]
        kind = op["op"]
        if isinstance(node, list):
            index = len(node) if last == "-" else int(last)
            if kind in ("remove", "replace") and index >= len(node):
                raise KustomizeError(f"{where}: JSON patch path {op['path']!r} does not exist")
            if kind == "add":
                node.insert(index, copy.deepcopy(op["value"]))
            elif kind == "remove":
                del node[index]
            elif kind == "replace":
                node[index] = copy.deepcopy(op["value"])
            else:
                raise KustomizeError(f"{where}: JSON patch op {kind!r} not rendered offline")
        else:
            if kind in ("remove", "replace") and last not in node:
                raise KustomizeError(f"{where}: JSON patch path {op['path']!r} does not exist")
            if kind in ("add", "replace"):
                node[last] = copy.deepcopy(op["value"])
            elif kind == "remove":
                del node[last]
            else:
                raise KustomizeError(f"{where}: JSON patch op {kind!r} not rendered offline")


def _generated(kind: str, spec: dict[str, Any], base_dir: Path, options: dict[str, Any]) -> dict[str, Any]:
    data: dict[str, str] = {}
    for literal in spec.get("literals", []):
        key, _, value = literal.partition("=")
        data[key] = value
    for entry in spec.get("files", []):
        key, sep, rel = entry.partition("=")
        rel = rel if sep else key
        path = base_dir / rel
        if not path.is_file():
            raise KustomizeError(f"{kind} generator {spec.get('name')}: missing file {path}")
        data[key if sep else path.name] = path.read_text()
    for rel in spec.get("envs", []) + ([spec["env"]] if "env" in spec else []):
        path = base_dir / rel
        if not path.is_file():
            raise KustomizeError(f"{kind} generator {spec.get('name')}: missing env file {path}")
        for line in path.read_text().splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                key, _, value = line.partition("=")
                data[key.strip()] = value.strip()
    name = spec["name"]
    if not (options.get("disableNameSuffixHash") or spec.get("options", {}).get("disableNameSuffixHash")):
        name += "-" + hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:10]
    doc: dict[str, Any] = {"apiVersion": "v1", "kind": kind, "metadata": {"name": name}, "data": data}
    if kind == "Secret":
        doc["type"] = spec.get("type", "Opaque")
        doc["stringData"] = doc.pop("data")
    if "namespace" in spec:
        doc["metadata"]["namespace"] = spec["namespace"]
    return doc


def _set_image(resource: dict[str, Any], images: list[dict[str, Any]]) -> None:
    pod = resource.get("spec", {}).get("template", {}).get("spec") or resource.get("spec", {})
    for container in pod.get("containers", []) + pod.get("initContainers", []):
        if not isinstance(container, dict) or "image" not in container:
            continue
        repo, _, tag = container["image"].partition(":")
        for image in images:
            if image["name"] == repo:
                new_repo = image.get("newName", repo)
                if "digest" in image:
                    container["image"] = f"{new_repo}@{image['digest']}"
                else:
                    container["image"] = f"{new_repo}:{image.get('newTag', tag)}" if (tag or "newTag" in image) else new_repo


def render(directory: Path, _stack: tuple[Path, ...] = ()) -> Rendered:
    """`kustomize build directory`, offline, for the features listed in SUPPORTED_KEYS."""
    directory = directory.resolve()
    if directory in _stack:
        raise KustomizeError(f"cycle in kustomizations: {' -> '.join(map(str, _stack + (directory,)))}")
    kfile = kustomization_file(directory)
    spec = yaml.safe_load(kfile.read_text()) or {}
    unknown = set(spec) - SUPPORTED_KEYS
    if unknown:
        raise KustomizeError(f"{kfile}: keys not rendered offline: {sorted(unknown)}")
    out = Rendered(root=directory, files={kfile})

    for entry in list(spec.get("resources", [])) + list(spec.get("components", [])):
        if "://" in entry or entry.startswith("github.com/"):
            raise KustomizeError(f"{kfile}: remote resource {entry!r} cannot be rendered offline")
        path = directory / entry
        if path.is_dir():
            child = render(path, _stack + (directory,))
            out.resources.extend(child.resources)
            out.files |= child.files
        elif path.is_file():
            out.resources.extend(_load_yaml_docs(path))
            out.files.add(path.resolve())
        else:
            raise KustomizeError(f"{kfile}: resource {entry!r} does not exist ({path})")

    options = spec.get("generatorOptions", {})
    for kind, key in (("ConfigMap", "configMapGenerator"), ("Secret", "secretGenerator")):
        for gen in spec.get(key, []):
            out.resources.append(_generated(kind, gen, directory, options))

    patches = [{"path": p} for p in spec.get("patchesStrategicMerge", [])] + list(spec.get("patches", []))
    for patch in patches:
        if "path" in patch:
            ppath = directory / patch["path"]
            if not ppath.is_file():
                raise KustomizeError(f"{kfile}: patch file {patch['path']!r} does not exist")
            out.files.add(ppath.resolve())
            body = yaml.safe_load(ppath.read_text())
        else:
            body = yaml.safe_load(patch["patch"])
        if isinstance(body, list) and "target" not in patch:
            raise KustomizeError(f"{kfile}: a JSON6902 patch needs a target")
        target = patch.get("target") or {"kind": body.get("kind"), "name": body.get("metadata", {}).get("name")}
        hits = [
            r
            for r in out.resources
            if r["kind"] == target.get("kind") and (not target.get("name") or r["metadata"]["name"] == target["name"])
        ]
        if not hits:
            raise KustomizeError(f"{kfile}: patch target {target} matches no resource")
        for r in hits:
            if isinstance(body, list):
                _json_patch(r, body, str(kfile))
                continue
            merged = _merge(r, {k: v for k, v in body.items() if k not in ("apiVersion", "kind")})
            r.clear()
            r.update(merged)

    for r in out.resources:
        meta = r["metadata"]
        if "namespace" in spec and r["kind"] not in CLUSTER_SCOPED_KINDS:
            meta["namespace"] = spec["namespace"]
        meta["name"] = spec.get("namePrefix", "") + meta["name"] + spec.get("nameSuffix", "")
        labels = dict(spec.get("commonLabels", {}))
        for group in spec.get("labels", []):
            labels.update(group.get("pairs", {}))
        if labels:
            meta["labels"] = {**meta.get("labels", {}), **labels}
        if spec.get("commonAnnotations"):
            meta["annotations"] = {**meta.get("annotations", {}), **spec["commonAnnotations"]}
        _set_image(r, spec.get("images", []))
        for rep in spec.get("replicas", []):
            if meta["name"] == rep["name"] and "replicas" in r.get("spec", {}):
                r["spec"]["replicas"] = rep["count"]

    seen: set[tuple[str, str, str, str]] = set()
    for r in out.resources:
        key = (r["apiVersion"].split("/")[0], r["kind"], r["metadata"].get("namespace", ""), r["metadata"]["name"])
        if key in seen:
            raise KustomizeError(f"{kfile}: duplicate resource {key}")
        seen.add(key)
    return out


def _dotted(doc: dict[str, Any], path: str) -> Any:
    node: Any = doc
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def validate_resource(resource: dict[str, Any]) -> None:
    """Schema-check one rendered resource; raises AssertionError naming the resource and the field."""
    import kubernetes_validate

    ident = f"{resource['kind']}/{resource['metadata'].get('name')}"
    crd_fields = CRD_REQUIRED_FIELDS.get((resource["apiVersion"], resource["kind"]))
    if crd_fields is not None:
        missing = [f for f in crd_fields if _dotted(resource, f) in (None, "", {}, [])]
        assert not missing, f"{ident}: missing required fields {missing}"
        return
    try:
        kubernetes_validate.validate(resource, K8S_VERSION, strict=True)
    except kubernetes_validate.SchemaNotFoundError as exc:
        raise AssertionError(f"{ident}: no schema for {resource['apiVersion']} {resource['kind']}") from exc
    except kubernetes_validate.ValidationError as exc:
        where = ".".join(str(p) for p in exc.path) or "<root>"
        raise AssertionError(f"{ident}: {where}: {exc.message}") from exc


@pytest.fixture(scope="session")
def k8s_root() -> Path:
    return K8S_ROOT


@pytest.fixture(scope="session")
def kustomize() -> Any:
    """The offline renderer and validator, as a fixture (conftest modules are not importable by tests)."""
    from types import SimpleNamespace

    return SimpleNamespace(render=render, validate=validate_resource, Error=KustomizeError)
