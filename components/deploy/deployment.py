"""Put a registered model version into the TF Serving model repository, behind a canary check.

Flow (one `deploy_model` call):

1. Resolve the registry version (`--version N`, an alias such as `champion`, default `champion`).
   The serving version number is the registry version number, so `retina-oct` v7 in MLflow is
   `<base>/retina-oct/7/` on disk and version 7 on the gRPC API: one number for one model.
2. Export the model directory as a SavedModel (`serving.export.export_saved_model`) and publish it
   with `storage.publish_folder(..., last=["saved_model.pb"])`: a polling server never sees half a
   version. A version already present is reused (re-running a deploy is harmless).
3. Rewrite `<base>/models.config`: specific versions {previous stable, new}; label `stable` stays on
   the previous stable version, `canary` names the new one.
4. With a server address, the canary check: GetModelStatus for the new version must reach AVAILABLE
   within the timeout, then one Predict on `predict_image` with a small generated image must return
   one probability per class. On success `stable` moves to the new version and `canary` is dropped
   (the previous stable version stays loaded, unlabeled, for a quick rollback; the next deploy
   unloads it). On failure the model's previous config entry is restored verbatim, the failed
   version folder is removed from the repository (so a server in "latest" mode never picks it up),
   and `CanaryFailed` says why.
   Without a server address nothing is verified, so nothing is promoted: the new version is staged
   as `canary`, and running the same deploy later with `--server` verifies and promotes it.

`server_base_path` is the repository as the *server* sees it (`/models` inside the TF Serving pod
that mirrors `s3://models`, see infra/k8s/serving); it defaults to the environment variable
`RETINA_SERVER_BASE_PATH` (set it in the cluster's pipeline environment), then to `serving_base_uri`
(right for the local server, which reads s3:// itself).
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

log = logging.getLogger(__name__)

LABEL_STABLE = "stable"
LABEL_CANARY = "canary"
AVAILABLE = "AVAILABLE"
SERVER_BASE_PATH_ENV = "RETINA_SERVER_BASE_PATH"


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

    uri = f"models:/{model_name}/{version}"
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


def export_version(model_dir: Path, version_uri: str, export_fn: Callable[..., Path] | None = None) -> str:
    """Export the model directory as a SavedModel and publish it at `version_uri`, saved_model.pb last."""
    from components.common.model_store import load_model
    from serving.export import export_saved_model

    model, info = load_model(str(model_dir))
    with tempfile.TemporaryDirectory(prefix="retina-export-") as tmp:
        exported = (export_fn or export_saved_model)(model, info, Path(tmp) / "export")
        # A folder without saved_model.pb is a leftover of an interrupted publish: replace it.
        return storage.publish_folder(exported, version_uri, last=["saved_model.pb"], overwrite=True)


def _model_entry(entries: list[Any], model_name: str) -> Any | None:
    return next((e for e in entries if e.name == model_name), None)


def canary_entry(model_name: str, server_base: str, new_version: int, stable: int | None) -> Any:
    """Config entry while the canary is checked: both versions loaded, `stable` unchanged."""
    from serving.model_repository import model_entry

    labels = {LABEL_CANARY: new_version}
    if stable is not None:
        labels[LABEL_STABLE] = stable
    versions = sorted({new_version} | ({stable} if stable is not None else set()))
    return model_entry(server_base, model_name, labels=labels, version_policy="specific", versions=versions)


def promoted_entry(model_name: str, server_base: str, new_version: int, previous: int | None) -> Any:
    """Config entry after a passing check: `stable` on the new version, the previous one kept loaded."""
    from serving.model_repository import model_entry

    versions = sorted({new_version} | ({previous} if previous is not None else set()))
    return model_entry(
        server_base,
        model_name,
        labels={LABEL_STABLE: new_version},
        version_policy="specific",
        versions=versions,
    )


def _write_entry(config_uri: str, entries: list[Any], model_name: str, entry: Any | None) -> None:
    from serving.model_repository import write_models_config

    others = [e for e in entries if e.name != model_name]
    write_models_config(config_uri, others + ([entry] if entry is not None else []))


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


# --------------------------------------------------------------------------- the step
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
    """Publish a registered version into the serving repository and (with a server) canary-check it.

    Returns `(serving_version, endpoint)`: the endpoint is `grpc://<server>/<model>/versions/<n>`
    when checked, else the published version folder.
    """
    if not serving_base_uri:
        raise DeployError(
            "a serving base URI is required (the TF Serving model repository, s3:// or a folder)"
        )
    from serving.model_repository import is_version_present, read_models_config, version_path

    mv = resolve_version(model_name, version, alias, tracking_uri)
    serving_version = int(mv.version)
    server_base = server_base_path or os.environ.get(SERVER_BASE_PATH_ENV) or serving_base_uri
    version_uri = version_path(serving_base_uri, model_name, serving_version)
    config_uri = storage.join(serving_base_uri, "models.config")
    log.info("deploying %s version %d to %s", model_name, serving_version, version_uri)

    with tempfile.TemporaryDirectory(prefix="retina-deploy-") as tmp:
        model_dir = download_model_dir(model_name, str(serving_version), tmp, tracking_uri)
        num_classes = _num_classes(model_dir)
        published_now = not is_version_present(version_uri)
        if not published_now:
            log.info("%s already holds a complete SavedModel; reusing it", version_uri)
        else:
            log.info("exporting SavedModel (serving_default + predict_image) and publishing it")
            export_version(model_dir, version_uri, export_fn)

    entries = read_models_config(config_uri) if storage.exists(config_uri) else []
    previous_entry = _model_entry(entries, model_name)
    stable = previous_entry.labels.get(LABEL_STABLE) if previous_entry is not None else None
    _write_entry(
        config_uri, entries, model_name, canary_entry(model_name, server_base, serving_version, stable)
    )
    log.info("models.config: %s canary=%d stable=%s", model_name, serving_version, stable)

    if not server_address:
        log.info("no server address: version %d staged as canary, stable unchanged", serving_version)
        return Deployment(serving_version, version_uri)

    log.info("canary check on %s (timeout %.0fs)", server_address, canary_timeout_s)
    try:
        check_canary(server_address, model_name, serving_version, num_classes, canary_timeout_s)
    except CanaryFailed:
        _write_entry(config_uri, entries, model_name, previous_entry)
        # Remove only what this call published, and never a version the restored entry still serves or labels
        # (a staged canary re-checked, a kept older version redeployed as a rollback).
        if published_now and not _references(previous_entry, serving_version):
            storage.delete(version_uri)
        log.warning("canary failed: restored the previous models.config entry for %s", model_name)
        raise
    _write_entry(
        config_uri, entries, model_name, promoted_entry(model_name, server_base, serving_version, stable)
    )
    log.info("canary passed: stable -> %s version %d", model_name, serving_version)
    return Deployment(serving_version, f"grpc://{server_address}/{model_name}/versions/{serving_version}")
