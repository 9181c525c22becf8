"""Put a model version into the TF Serving repository and move `stable` to it, with no default request
ever reaching an unverified version.

Why not a canary in the production server: TF Serving answers a request that names no version with the
highest loaded version, so loading a candidate next to `stable` sends it the default traffic before any
check has run. The candidate is therefore checked in a *private* model server (its own free loopback
port, serving only the candidate: `serving.server.start_server`), the way TFX's InfraValidator launches
its own server; only then is it published and labelled.

`deploy_model` (`retina deploy`): registry version -> SavedModel -> private check (AVAILABLE, one Predict
returning one probability per class) -> `push_version`. The training pipeline does the private check in
its own step (components/validate) and calls `push_version` from its push step.

`push_version`:
1. publish the SavedModel at `<base>/<model>/<version>/` (the registry version number is the serving
   version: one number for one model). An existing complete folder is reused only when its content hash
   equals the candidate's; different content under the same number is refused. A folder left by a killed
   upload (no `saved_model.pb`, which is copied last, so no server ever listed it) is replaced.
2. update this model's entry in `<base>/models.config` under optimistic concurrency
   (`config_update.update_entry`: other models' entries are never lost): `stable` = the new version;
   the previous stable stays loaded only when it is older (a newer loaded version would take the
   default traffic).
3. TF Serving checks version labels before it loads anything of a new config (server_core.cc,
   `ReloadConfig` -> `UpdateModelVersionLabelMap` -> `AddModelsViaModelConfigList`): a label may name a
   version that is not AVAILABLE yet only when it is new or keeps its version, and only with
   `--allow_version_labels_for_unavailable_models` (the cluster's flag). Moving `stable` from the old
   version to one that same config would load is refused even with the flag, at every poll of
   models.config, and nothing of that config loads: the new version would silently never serve. So
   `stable` moves in two phases (`move_stable`) with a server address: the already validated version is
   added to the loaded versions with `stable` kept where it is, every replica behind the address must
   report it AVAILABLE (`server_replicas`), then `stable` moves. If it never loads, this model's previous entry is restored and a folder published by
   this call is removed.
4. without a server address nobody can tell when the new version is AVAILABLE, so a push that would move
   an existing `stable` to another version is refused (DeployError) before anything is published or
   written: TF Serving would refuse the config. A first deploy (no `stable` yet) or re-pushing the stable
   version is written in one step: a new or unchanged label is accepted by a running TF Serving with the
   flag, and by a server started later on the written config. Replacing a model therefore needs the
   production server's address: `server_address` / `--server`, else the environment variable
   `RETINA_SERVING_ADDRESS`, which the pipeline's steps get on the cluster from the `retina-endpoints`
   ConfigMap (the headless `tf-serving-replicas` Service, gRPC port 8500, so every replica is waited for:
   infra/k8s/kubeflow/retina-endpoints.yaml).

`server_base_path` is the repository as the *server* sees it (`/models` inside the TF Serving pod that
mirrors `s3://models`, see infra/k8s/serving); it defaults to the environment variable
`RETINA_SERVER_BASE_PATH`, then to `serving_base_uri` (right for the local server, which reads s3://).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from components.common import config, storage
from components.common.errors import RetinaError
from components.common.model_ref import ModelRef

log = logging.getLogger(__name__)

LABEL_STABLE = "stable"
AVAILABLE = "AVAILABLE"
SERVER_BASE_PATH_ENV = "RETINA_SERVER_BASE_PATH"
SERVER_ADDRESS_ENV = "RETINA_SERVING_ADDRESS"  # the production model server, as pipeline steps see it


class DeployError(RetinaError):
    """A deployment that cannot start: unknown model version, unreadable repository."""


class CanaryFailed(DeployError):
    """The new version did not pass the canary check; `stable` was left where it was."""


class Deployment(NamedTuple):
    serving_version: int
    endpoint: str


# --------------------------------------------------------------------------- registry
def resolve_version(
    model_name: str, version: str = "", alias: str = "", tracking_uri: str | None = None
) -> Any:
    """The registry `ModelVersion` for a number, an alias, or (neither given) the champion."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri=tracking_uri) if tracking_uri else MlflowClient()
    version = str(version or "").strip()
    if version and not version.isdigit():  # the component's `version` may carry an alias
        alias, version = version, ""
    alias = alias or ("" if version else config.ALIAS_CHAMPION)
    try:
        if version:
            return client.get_model_version(model_name, version)
        return client.get_model_version_by_alias(model_name, alias)
    except MlflowException as exc:
        what = f"version {version}" if version else f"alias @{alias}"
        raise DeployError(f"registered model {model_name} has no {what} ({exc.error_code})") from exc


def download_model_dir(
    model_name: str, version: str, dst: str | Path, tracking_uri: str | None = None
) -> Path:
    """The registered version's model directory (model.keras + retina_model.json) as a local folder."""
    import mlflow

    uri = ModelRef.registry(model_name, version=version).uri
    try:
        path = mlflow.artifacts.download_artifacts(
            artifact_uri=uri, dst_path=str(dst), tracking_uri=tracking_uri
        )
    except Exception as exc:  # noqa: BLE001 - MLflow raises many kinds; the URI is what the user needs
        raise DeployError(f"cannot download {uri}: {type(exc).__name__}: {exc}") from exc
    return Path(path)


# --------------------------------------------------------------------------- repository
def _num_classes(model_dir: Path) -> int:
    """Class count from the model directory's retina_model.json (what the canary Predict must return)."""
    from components.common.model_store import INFO_FILE, ModelInfo

    info_file = Path(model_dir) / INFO_FILE
    if not info_file.exists():
        raise DeployError(f"registered model folder has no {INFO_FILE}: not a retina model directory")
    return ModelInfo.from_dict(json.loads(info_file.read_text())).num_classes


FINGERPRINT_FILE = "assets.extra/retina_fingerprint.txt"


def model_fingerprint(model: Any, info: Any) -> str:
    """sha256 of the model's metadata and every weight: the same model gives the same value on every export,
    whereas the SavedModel's own bytes differ between two exports of one model."""
    import hashlib

    import numpy as np

    digest = hashlib.sha256(json.dumps(info.to_dict(), sort_keys=True, default=str).encode())
    for weight in model.weights:
        digest.update(weight.path.encode())
        digest.update(np.ascontiguousarray(np.asarray(weight)).tobytes())
    return digest.hexdigest()


def write_fingerprint(export_dir: Path, model: Any, info: Any) -> None:
    path = Path(export_dir) / FINGERPRINT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(model_fingerprint(model, info) + "\n")


def export_local(model_dir: Path, out_dir: Path, export_fn: Callable[..., Path] | None = None) -> Path:
    """The model directory exported as a SavedModel into the local folder `out_dir / "export"`."""
    from components.common.model_store import load_model
    from serving.export import export_saved_model

    model, info = load_model(str(model_dir))
    exported = (export_fn or export_saved_model)(model, info, Path(out_dir) / "export")
    write_fingerprint(exported, model, info)
    return exported


def _fingerprint(uri: str) -> str | None:
    try:
        return storage.read_text(storage.join(uri, FINGERPRINT_FILE)).strip() or None
    except Exception:  # noqa: BLE001 - an export from before fingerprints: compare the bytes only
        return None


def content_hash(uri: str) -> str:
    """sha256 over (relative path, bytes) of every file of a folder, local or s3://, `_SUCCESS` excluded."""
    import hashlib

    root = str(uri).rstrip("/")
    digest = hashlib.sha256()
    for file_uri in sorted(storage.list_uris(root)):
        rel = file_uri[len(root) + 1 :]
        if rel == storage.SUCCESS_MARKER:
            continue
        digest.update(rel.encode() + b"\0")
        digest.update(hashlib.sha256(storage.read_bytes(file_uri)).digest())
    return digest.hexdigest()


def publish_version(source: str | Path, version_uri: str) -> bool:
    """Publish the SavedModel folder `source` (local or s3://) at `version_uri`; True when this call wrote it.

    A complete folder already there is reused only when its content hash matches, or when it is the same model
    exported again (`model_fingerprint` of metadata + weights, recorded in the export); a folder without
    `saved_model.pb` (a killed upload: never listed by a server) is replaced.
    """
    from serving.model_repository import SAVED_MODEL_FILE, is_version_present

    if is_version_present(version_uri):
        same_bytes = content_hash(version_uri) == content_hash(str(source))
        same_model = _fingerprint(version_uri) is not None and _fingerprint(version_uri) == _fingerprint(str(source))
        if not (same_bytes or same_model):
            raise DeployError(f"{version_uri} already holds a different SavedModel: refusing to overwrite a "
                              "version a server may have loaded (deploy it under a new registry version)")
        log.info("%s already holds this %s; reusing it", version_uri,
                 "SavedModel (content hash matches)" if same_bytes else "model (weights fingerprint matches)")
        return False
    if storage.exists(version_uri):
        log.warning("removing the incomplete upload left at %s", version_uri)
        storage.delete(version_uri)
    import shutil

    with storage.local_copy(str(source)) as local, tempfile.TemporaryDirectory(prefix="retina-push-") as tmp:
        # the source's own `_SUCCESS` must not travel early: publish_folder writes it last
        clean = Path(tmp) / "version"
        shutil.copytree(local, clean, ignore=shutil.ignore_patterns(storage.SUCCESS_MARKER))
        storage.publish_folder(clean, version_uri, last=[SAVED_MODEL_FILE])
    return True


def promoted_entry(model_name: str, server_base: str, new_version: int, previous: int | None) -> Any:
    """`stable` on the new version; the previous stable stays loaded (quick rollback) only when it is older,
    because TF Serving sends requests that name no version to the highest loaded version."""
    from serving.model_repository import model_entry

    keep = {previous} if previous is not None and previous < new_version else set()
    return model_entry(server_base, model_name, labels={LABEL_STABLE: new_version}, version_policy="specific",
                       versions=sorted({new_version} | keep))


def loading_entry(model_name: str, server_base: str, new_version: int, stable: int | None) -> Any:
    """Phase one of a push to a running server: the validated version is loaded, `stable` stays put."""
    from serving.model_repository import model_entry

    versions = sorted({new_version} | ({stable} if stable is not None else set()))
    return model_entry(server_base, model_name, labels={LABEL_STABLE: stable} if stable is not None else {},
                       version_policy="specific", versions=versions)


def stable_version(entry: Any | None) -> int | None:
    return entry.labels.get(LABEL_STABLE) if entry is not None else None


# --------------------------------------------------------------------------- canary
def canary_image(size: int = 64) -> bytes:
    """A small PNG (smooth colour gradient with a bright disc) that any modality's decoder accepts."""
    import cv2
    import numpy as np

    ramp = np.linspace(0, 255, size, dtype=np.float32)
    rgb = np.stack(np.broadcast_arrays(ramp[None, :], ramp[:, None], np.full((size, size), 64.0)), axis=-1)
    rgb = rgb.astype(np.uint8)
    cv2.circle(rgb, (size // 2, size // 2), size // 6, (250, 240, 200), -1)
    ok, buf = cv2.imencode(".png", rgb)
    if not ok:  # pragma: no cover - encoding a plain uint8 array does not fail
        raise DeployError("cannot encode the canary image")
    return buf.tobytes()


def _status_states(status: Any, version: int) -> list[tuple[str, str]]:
    """(state name, error message) of `version` from a GetModelStatus answer (proto or client result)."""
    from tensorflow_serving.apis import get_model_status_pb2

    out = []
    for vs in getattr(status, "model_version_status", status) or []:
        if isinstance(vs, dict):
            v, state, msg = vs.get("version"), vs.get("state"), vs.get("error_message", "")
        else:
            v, state, msg = vs.version, vs.state, getattr(vs.status, "error_message", "")
            if isinstance(state, int):
                state = get_model_status_pb2.ModelVersionStatus.State.Name(state)
        if int(v) == int(version):
            out.append((str(state), msg or ""))
    return out


def wait_available(client: Any, model_name: str, version: int, timeout_s: float, poll_s: float = 0.5) -> None:
    """Poll GetModelStatus until the version is AVAILABLE; a load error or the timeout fails the canary."""
    deadline = time.monotonic() + timeout_s
    last = "no status yet"
    while True:
        try:
            states = _status_states(client.model_status(model_name, version=version), version)
        except Exception as exc:  # noqa: BLE001 - NOT_FOUND until the server polls the new config/version
            states, last = [], f"{type(exc).__name__}: {_short(exc)}"
        for state, message in states:
            if state == AVAILABLE:
                return
            last = f"state {state}" + (f": {message}" if message else "")
            if state == "END" and message:
                raise CanaryFailed(f"{model_name} version {version} failed to load on the server: {message}")
        if time.monotonic() > deadline:
            raise CanaryFailed(
                f"{model_name} version {version} not AVAILABLE on the server after {timeout_s:.0f}s ({last})"
            )
        time.sleep(poll_s)


def wait_label(client: Any, model_name: str, label: str, version: int, timeout_s: float,
               poll_s: float = 0.5) -> None:
    """Poll until `label` resolves to `version` on the server (GetModelMetadata by label answers with the
    version it resolved, as TF Serving's does); the server applies a config at its next poll."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            resolved = client.metadata(model_name, label=label)["version"]
            last = f"it resolves to version {resolved}"
        except Exception as exc:  # noqa: BLE001 - e.g. an unknown label until the server polls the config
            resolved, last = None, f"{type(exc).__name__}: {_short(exc)}"
        if resolved == version:
            return
        if time.monotonic() > deadline:
            raise CanaryFailed(f"{model_name} label {label!r} not on version {version} after {timeout_s:.0f}s ({last})")
        time.sleep(poll_s)


def _short(exc: Exception) -> str:
    details = getattr(exc, "details", None)
    text = details() if callable(details) else str(exc)
    return (text or type(exc).__name__).splitlines()[0][:300]


def check_canary(
    server_address: str, model_name: str, version: int, num_classes: int, timeout_s: float = 120.0
) -> None:
    """GetModelStatus = AVAILABLE for `version`, then one Predict on it; raises CanaryFailed with the reason."""
    from serving.client import ServingClient

    client = ServingClient(server_address)
    wait_available(client, model_name, version, timeout_s)
    try:
        result = client.predict_images(model_name, [canary_image()], version=version)
    except Exception as exc:  # noqa: BLE001 - any failure of the one Predict fails the canary
        raise CanaryFailed(f"Predict on {model_name} version {version} failed: {_short(exc)}") from exc
    probabilities = _probabilities(result)
    if probabilities is None or len(probabilities) != num_classes:
        raise CanaryFailed(
            f"Predict on {model_name} version {version} returned no {num_classes} class probabilities"
        )


def _probabilities(result: Any) -> list[float] | None:
    """First row of `probabilities` from whatever shape the client returns (list of rows, dict, object)."""
    import numpy as np

    rows = result
    if isinstance(rows, dict):
        rows = rows.get("probabilities")
    elif hasattr(rows, "probabilities"):
        rows = rows.probabilities
    elif isinstance(rows, list | tuple) and rows:
        first = rows[0]
        if isinstance(first, dict):
            return list(first.get("probabilities") or []) or None
        if hasattr(first, "probabilities"):
            return list(first.probabilities)
    if rows is None:
        return None
    arr = np.asarray(rows, dtype=np.float64)
    return list(arr.reshape(arr.shape[0], -1)[0]) if arr.ndim >= 1 and arr.size else None


def _references(entry: Any, version: int) -> bool:
    """Whether a models.config entry names `version`: by label or in its specific-version list."""
    if entry is None:
        return False
    return version in entry.labels.values() or version in (entry.versions or [])


def check_privately(export_dir: Path, model_name: str, version: int, num_classes: int, timeout_s: float) -> None:
    """Load the SavedModel in a private model server (free loopback port, only this version) and canary it."""
    import shutil
    import tempfile as tf_tmp

    from serving.server import ModelsNotAvailable, start_server

    with tf_tmp.TemporaryDirectory(prefix="retina-private-") as tmp:
        shutil.copytree(export_dir, Path(tmp) / model_name / str(version))
        try:  # a fresh export that fails to load fails again: no retries (the server refuses to start)
            server = start_server(model_base_path=str(Path(tmp) / model_name), model_name=model_name, port=0,
                                  poll_interval_s=0, max_num_load_retries=0)
        except ModelsNotAvailable as exc:
            raise CanaryFailed(f"{model_name} version {version} failed to load in a private model server: "
                               f"{exc}") from exc
        try:
            check_canary(server.address, model_name, version, num_classes, timeout_s)
        finally:
            server.stop()


# --------------------------------------------------------------------------- the step
def _current_entry(config_uri: str, model_name: str) -> Any | None:
    from serving.model_repository import read_models_config

    if not storage.exists(config_uri):
        return None
    return next((e for e in read_models_config(config_uri) if e.name == model_name), None)


def refuse_unloaded_move(entry: Any | None, model_name: str, version: int, loaded_ok: bool = False) -> None:
    """Raise DeployError when writing `stable` = `version` in one step would be refused by TF Serving: an
    existing `stable` moves to a version the config in force does not load (with `loaded_ok`, a version
    that entry already lists counts as loaded, as a rollback target kept for quick rollback is)."""
    stable = stable_version(entry)
    if stable is None or stable == version or (loaded_ok and _references(entry, version)):
        return
    raise DeployError(
        f"{model_name}: moving `stable` from v{stable} to v{version} needs the production model server's "
        f"address (server_address, `--server HOST:PORT` or {SERVER_ADDRESS_ENV}; on the cluster the "
        f"tf-serving-replicas Service, port 8500): "
        f"TF Serving refuses a config that moves a label to a version it has not loaded yet, even with "
        f"--allow_version_labels_for_unavailable_models, so v{version} would never serve. Nothing was written. "
        f"A first deploy, or a config for a server started later with that flag, needs no address.")


def move_stable(config_uri: str, model_name: str, server_base: str, version: int, server_address: str = "",
                timeout_s: float = 120.0, loaded_ok: bool = False) -> Any | None:
    """Point `stable` at `version` in models.config without ever writing a config TF Serving refuses;
    returns this model's entry before the move. Without a server address only a one-step write that
    TF Serving accepts is made (`refuse_unloaded_move`, checked again under the config's concurrency
    control). With one: phase one loads `version` with `stable` kept, waits until the server reports it
    AVAILABLE (else the previous entry is restored and CanaryFailed raised), then phase two moves `stable`
    and waits until every replica resolves it to `version` (else the same restore and CanaryFailed)."""
    from components.deploy.config_update import update_entry

    def one_step(old: Any | None) -> Any:
        refuse_unloaded_move(old, model_name, version, loaded_ok)
        return promoted_entry(model_name, server_base, version, stable_version(old))

    if not server_address:
        return update_entry(config_uri, model_name, one_step)[0]
    previous, _ = update_entry(config_uri, model_name, lambda old: loading_entry(
        model_name, server_base, version, stable_version(old)))
    try:
        _wait_on_every_replica(server_address, model_name, version, timeout_s)
    except CanaryFailed:
        update_entry(config_uri, model_name, lambda _current: previous)
        log.warning("the model server did not load %s v%d: restored the previous entry", model_name, version)
        raise
    update_entry(config_uri, model_name, lambda old: promoted_entry(model_name, server_base, version,
                                                                    stable_version(old)))
    try:  # phase two confirmed: every replica took the moved label (one refusing it would serve the old one)
        _wait_on_every_replica(server_address, model_name, version, timeout_s, label=LABEL_STABLE)
    except CanaryFailed:
        update_entry(config_uri, model_name, lambda _current: previous)
        log.warning("a model server did not move %s to %s v%d: restored the previous entry", LABEL_STABLE,
                    model_name, version)
        raise
    return previous


def server_replicas(server_address: str) -> list[str]:
    """Every model server behind `server_address`: each of a comma-separated list, and each IPv4 address of
    a name that resolves to several (a headless Service: one per ready pod, `tf-serving-replicas` in
    infra/k8s/serving). Why: TF Serving replicas poll models.config on their own, and one that has not
    loaded the new version when `stable` moves refuses that config at every poll; a ClusterIP Service
    answers from one replica only."""
    import socket

    replicas: list[str] = []
    for address in filter(None, (a.strip() for a in server_address.split(","))):
        host, sep, port = address.rpartition(":")
        ips: list[str] = []
        if sep and port.isdigit() and host and not host.startswith(("[", "unix")):
            try:
                ips = sorted({info[4][0] for info in socket.getaddrinfo(host, int(port), socket.AF_INET,
                                                                        socket.SOCK_STREAM)})
            except OSError:  # unresolvable now: the client reports it while waiting
                ips = []
        replicas += [f"{ip}:{port}" for ip in ips] if len(ips) > 1 else [address]
    return replicas


def _wait_on_every_replica(server_address: str, model_name: str, version: int, timeout_s: float,
                           label: str = "") -> None:
    """`wait_available` (or with `label`, `wait_label`) on each replica, within one shared deadline;
    CanaryFailed names the replica."""
    from serving.client import ServingClient

    deadline = time.monotonic() + timeout_s
    for replica in server_replicas(server_address):
        try:
            with ServingClient(replica) as client:
                left = max(0.0, deadline - time.monotonic())
                if label:
                    wait_label(client, model_name, label, version, left)
                else:
                    wait_available(client, model_name, version, left)
        except CanaryFailed as exc:
            raise CanaryFailed(f"{exc} [replica {replica}]") from exc


def push_version(model_name: str, version: int, source: str | Path, serving_base_uri: str,
                 server_base_path: str = "", server_address: str = "", timeout_s: float = 120.0) -> Deployment:
    """Publish a checked SavedModel and move `stable` to it (see the module docstring). A push that cannot
    be made safely (steps 3-4) leaves the repository as it was: a folder this call published is removed."""
    from serving.model_repository import version_path

    if not serving_base_uri:
        raise DeployError("a serving base URI is required (the TF Serving model repository, s3:// or a folder)")
    server_base = server_base_path or os.environ.get(SERVER_BASE_PATH_ENV) or serving_base_uri
    server_address = server_address or os.environ.get(SERVER_ADDRESS_ENV, "")
    version_uri = version_path(serving_base_uri, model_name, version)
    config_uri = storage.join(serving_base_uri, "models.config")
    if not server_address:  # refused before anything is uploaded
        refuse_unloaded_move(_current_entry(config_uri, model_name), model_name, version)
    published_now = publish_version(source, version_uri)
    try:
        previous = move_stable(config_uri, model_name, server_base, version, server_address, timeout_s)
    except DeployError:
        current = _current_entry(config_uri, model_name)
        if published_now and not _references(current, version):
            storage.delete(version_uri)
        raise
    log.info("models.config: %s stable %s -> %d", model_name, stable_version(previous), version)
    endpoint = f"grpc://{server_address}/{model_name}/versions/{version}" if server_address else version_uri
    return Deployment(version, endpoint)


def deploy_model(
    model_name: str,
    serving_base_uri: str,
    version: str = "",
    alias: str = "",
    server_address: str = "",
    canary_timeout_s: float = 120.0,
    server_base_path: str = "",
    tracking_uri: str | None = None,
    export_fn: Callable[..., Path] | None = None,
) -> Deployment:
    """Registry version (number, alias, default `champion`) -> private check -> `push_version`.

    Returns `(serving_version, endpoint)`: `grpc://<server>/<model>/versions/<n>` when a production
    server was named, else the published version folder.
    """
    if not serving_base_uri:
        raise DeployError("a serving base URI is required (the TF Serving model repository, s3:// or a folder)")
    mv = resolve_version(model_name, version, alias, tracking_uri)
    serving_version = int(mv.version)
    with tempfile.TemporaryDirectory(prefix="retina-deploy-") as tmp:
        model_dir = download_model_dir(model_name, str(serving_version), Path(tmp) / "download", tracking_uri)
        num_classes = _num_classes(model_dir)
        exported = export_local(model_dir, Path(tmp), export_fn)
        log.info("checking %s v%d in a private model server", model_name, serving_version)
        check_privately(exported, model_name, serving_version, num_classes, canary_timeout_s)
        return push_version(model_name, serving_version, exported, serving_base_uri, server_base_path,
                            server_address, canary_timeout_s)
