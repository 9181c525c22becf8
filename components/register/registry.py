"""Put a trained model into the MLflow registry and decide whether it becomes the champion.

Every trained model becomes a version of `retina-fundus` / `retina-oct` and gets the alias
`challenger`. The alias `champion` — what `deploy` serves by default — moves only when the new
version beats the current champion on one chosen metric by more than a margin, so a noisy
re-training that is "about as good" never churns production. The decision and its reason are
written on the version (tags and description) so the registry UI answers "why is this (not) the
champion?" without anyone reading pipeline logs.

Re-running registration for the same MLflow run never creates a second version: versions are
looked up by `run_id` first. The gate is evaluated again against the champion of that moment, so
the same registry state always gives the same answer.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any, NamedTuple

from components.common import config
from components.common.errors import RetinaError

log = logging.getLogger(__name__)

MODEL_ARTIFACT_PATH = "model"  # where train logs the model directory on its run (INTERFACES "Trained model")
DEFAULT_METRIC = {"fundus": "qwk", "oct": "accuracy"}
# The evaluate step logs held-out test metrics as `test_<name>` on the training run; training itself logs
# per-epoch `<name>` (training split) and `val_<name>`. The gate prefers the test split, then a metric
# named exactly as asked, then validation.
METRIC_KEY_PREFIXES = ("test_", "eval_", "test.", "", "val_", "val.")
TAG_DECISION = "retina.promotion"
TAG_REASON = "retina.promotion_reason"
READY = "READY"
FAILED = "FAILED_REGISTRATION"


class RegistrationError(RetinaError):
    """A run that cannot be registered: unknown run, missing metric, failed registry write."""


class Registration(NamedTuple):
    model_name: str
    version: str
    promoted: bool
    reason: str


@dataclass(frozen=True)
class Gate:
    """The champion gate: `metric` must improve by more than `margin` (in its own units)."""

    metric: str
    margin: float = 0.0
    greater_is_better: bool = True

    def improvement(self, candidate: float, champion: float) -> float:
        return candidate - champion if self.greater_is_better else champion - candidate

    def passes(self, candidate: float, champion: float) -> bool:
        # Strictly more than the margin: with margin 0 a tie does not move production.
        return self.improvement(candidate, champion) > self.margin


def default_metric(modality: str) -> str:
    return DEFAULT_METRIC[config.check_modality(modality)]


def lower_is_better(metric: str) -> bool:
    """Loss-like metrics are minimised; everything the evaluate step reports otherwise is maximised."""
    name = metric.lower()
    return any(word in name for word in ("loss", "error", "mae", "mse", "rmse"))


def _client(tracking_uri: str | None = None) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri) if tracking_uri else MlflowClient()


def find_metric(metrics: dict[str, float], metric: str) -> tuple[str, float] | None:
    """The run's value for `metric`, accepting the evaluate step's `test_` style prefixes."""
    for prefix in METRIC_KEY_PREFIXES:
        key = f"{prefix}{metric}"
        if key in metrics:
            return key, float(metrics[key])
    return None


def dataset_summary(run: Any) -> dict[str, Any]:
    """A compact description of the data the run trained on, from the dataset manifest when reachable.

    Train records the preprocessed dataset location as the run parameter `data_uri`; the manifest
    beside it gives counts per split and the preprocessing code version. Without it the summary
    holds what the run itself knows, so registration never fails over bookkeeping.
    """
    params = dict(run.data.params)
    summary: dict[str, Any] = {}
    data_uri = params.get("data_uri") or params.get("dataset_uri")
    if data_uri:
        summary["uri"] = data_uri
        try:
            from components.common import storage

            manifest = storage.read_json(storage.join(data_uri, "manifest.json"))
        except Exception as exc:  # noqa: BLE001 - a missing manifest is recorded, not fatal
            summary["manifest"] = f"unreadable: {type(exc).__name__}"
        else:
            summary["counts"] = {
                split: info.get("count") for split, info in (manifest.get("splits") or {}).items()
            }
            for key in ("modality", "image_size", "code_version", "rejected_count"):
                if key in manifest:
                    summary[key] = manifest[key]
    for key in ("image_size", "modality"):
        if key in params and key not in summary:
            summary[key] = params[key]
    return summary


def _versions_for_run(client: Any, name: str, run_id: str) -> list[Any]:
    found = client.search_model_versions(f"name='{name}' and run_id='{run_id}'")
    return sorted(found, key=lambda mv: int(mv.version))


def _ensure_registered_model(client: Any, name: str, modality: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        try:
            client.create_registered_model(
                name,
                tags={"modality": modality},
                description=f"Retinal {modality} classifier ({', '.join(config.CLASS_NAMES[modality])}).",
            )
        except MlflowException:  # created concurrently by another registration: fine
            client.get_registered_model(name)


def wait_until_ready(client: Any, name: str, version: str, timeout_s: float = 300.0) -> Any:
    """Poll until the version is READY; a failed registration is an error with the registry's message."""
    deadline = time.monotonic() + timeout_s
    while True:
        mv = client.get_model_version(name, version)
        if mv.status == READY:
            return mv
        if mv.status == FAILED:
            raise RegistrationError(
                f"registry failed to create {name} version {version}: {mv.status_message}"
            )
        if time.monotonic() > deadline:
            raise RegistrationError(
                f"{name} version {version} not READY after {timeout_s:.0f}s ({mv.status})"
            )
        time.sleep(0.5)


def _champion(client: Any, name: str) -> Any | None:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, config.ALIAS_CHAMPION)
    except MlflowException:
        return None


def _version_metric(client: Any, mv: Any, metric: str) -> float | None:
    """The champion's value for the gate metric: its own run first, the tag we wrote second."""
    if mv.run_id:
        try:
            found = find_metric(client.get_run(mv.run_id).data.metrics, metric)
        except Exception:  # noqa: BLE001 - a deleted run: fall back to the tags copied at registration
            found = None
        if found:
            return found[1]
    for prefix in METRIC_KEY_PREFIXES:
        value = (mv.tags or {}).get(f"metric.{prefix}{metric}")
        if value is not None:
            return float(value)
    return None


def decide(
    gate: Gate, candidate_value: float, champion: Any | None, champion_value: float | None
) -> tuple[bool, str]:
    """Whether the candidate takes `champion`, with a one-line reason a reviewer can check."""
    if champion is None:
        return True, f"no champion yet; {gate.metric}={candidate_value:.4f}"
    if champion_value is None:
        return True, f"champion v{champion.version} has no {gate.metric}; {gate.metric}={candidate_value:.4f}"
    delta = gate.improvement(candidate_value, champion_value)
    comparison = (
        f"{gate.metric} {candidate_value:.4f} vs champion v{champion.version} {champion_value:.4f} "
        f"(improvement {delta:+.4f}, margin {gate.margin:.4f})"
    )
    if gate.passes(candidate_value, champion_value):
        return True, f"promoted: {comparison}"
    return False, f"kept champion: {comparison}"


def _version_for_run(client: Any, name: str, modality: str, run: Any, model_uri: str, metric_key: str) -> Any:
    """The registry version of this run's model: found by run id (a retry never creates a second), else created
    with the run's metrics, dataset and code version as tags."""
    from mlflow.exceptions import MlflowException

    run_id = run.info.run_id
    _ensure_registered_model(client, name, modality)
    existing = _versions_for_run(client, name, run_id)
    if existing:
        mv = existing[0]
        log.info("run %s is already %s version %s; not creating another", run_id, name, mv.version)
    else:
        source = model_uri or f"runs:/{run_id}/{MODEL_ARTIFACT_PATH}"
        tags = {f"metric.{k}": f"{v:.6g}" for k, v in sorted(run.data.metrics.items())}
        tags.update(
            {
                "modality": modality,
                "code_version": config.code_version(),
                "dataset": json.dumps(dataset_summary(run), sort_keys=True)[:4900],
                "gate_metric": metric_key,
            }
        )
        train_code = run.data.tags.get("code_version") or run.data.params.get("code_version")
        if train_code:
            tags["train_code_version"] = train_code
        try:
            mv = client.create_model_version(
                name,
                source,
                run_id=run_id,
                tags=tags,
                await_creation_for=0,
            )
        except MlflowException as exc:
            raise RegistrationError(
                f"cannot create a version of {name} from {source}: {exc.message}"
            ) from exc
        log.info("created %s version %s from %s", name, mv.version, source)
    return mv


def _run_metric(client: Any, run_id: str, metric: str) -> tuple[Any, str, float]:
    """The MLflow run and the value it logged for `metric` (under its own or a known alias key)."""
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(run_id)
    except MlflowException as exc:
        raise RegistrationError(f"no MLflow run {run_id!r} at {client.tracking_uri}") from exc
    found = find_metric(run.data.metrics, metric)
    if found is None:
        available = ", ".join(sorted(run.data.metrics)) or "none"
        raise RegistrationError(f"run {run_id} has no metric {metric!r} (logged: {available})")
    return run, found[0], found[1]


def register_model(
    modality: str,
    run_id: str,
    model_uri: str = "",
    metric: str = "",
    margin: float = 0.0,
    greater_is_better: bool | None = None,
    tracking_uri: str | None = None,
    ready_timeout_s: float = 300.0,
    registered_model: str = "",
) -> Registration:
    """Register the run's model as a version of the modality's registered model and apply the champion gate.

    `model_uri` overrides the version's source (default `runs:/<run_id>/model`, the model directory
    train logged). `metric` defaults to QWK for fundus grading and accuracy for OCT; `margin` is
    in the metric's units. `registered_model` overrides the registry name (a staging registry,
    isolated tests). Returns `(model_name, version, promoted, reason)`.
    """
    config.check_modality(modality)
    if not run_id:
        raise RegistrationError("a run id is required: the MLflow run that logged the model")
    metric = metric or default_metric(modality)
    if margin < 0:
        raise RegistrationError(f"margin must be >= 0, got {margin}")
    gate = Gate(
        metric, float(margin), not lower_is_better(metric) if greater_is_better is None else greater_is_better
    )
    name = registered_model or config.REGISTERED_MODEL[modality]
    client = _client(tracking_uri)
    run, metric_key, candidate_value = _run_metric(client, run_id, metric)

    mv = _version_for_run(client, name, modality, run, model_uri, metric_key)
    mv = wait_until_ready(client, name, mv.version, ready_timeout_s)
    version = str(mv.version)

    champion = _champion(client, name)
    if champion is not None and str(champion.version) == version:
        promoted, reason = True, f"already the champion; {metric}={candidate_value:.4f}"
    else:
        champion_value = _version_metric(client, champion, metric) if champion is not None else None
        promoted, reason = decide(gate, candidate_value, champion, champion_value)

    client.set_registered_model_alias(name, config.ALIAS_CHALLENGER, version)
    if promoted:
        client.set_registered_model_alias(name, config.ALIAS_CHAMPION, version)
    client.set_model_version_tag(name, version, TAG_DECISION, "champion" if promoted else "challenger")
    client.set_model_version_tag(name, version, TAG_REASON, reason)
    client.update_model_version(name, version, description=f"run {run_id}: {reason}")
    log.info("%s v%s: %s", name, version, reason)
    return Registration(name, version, promoted, reason)


def register_challenger(modality: str, run_id: str, model_uri: str = "", tracking_uri: str | None = None,
                        registered_model: str = "", ready_timeout_s: float = 300.0) -> Registration:
    """Register the run's model and point `challenger` at it; `champion` is not touched.

    The training pipeline's gates then tag this version with their checks, and only the push step moves
    `champion` (components.register.blessing). A retry finds the same version by run id.
    """
    from mlflow.exceptions import MlflowException

    config.check_modality(modality)
    if not run_id:
        raise RegistrationError("a run id is required: the MLflow run that logged the model")
    name = registered_model or config.REGISTERED_MODEL[modality]
    client = _client(tracking_uri)
    try:
        run = client.get_run(run_id)
    except MlflowException as exc:
        raise RegistrationError(f"no MLflow run {run_id!r} at {client.tracking_uri}") from exc
    mv = _version_for_run(client, name, modality, run, model_uri, "")
    version = str(wait_until_ready(client, name, mv.version, ready_timeout_s).version)
    client.set_registered_model_alias(name, config.ALIAS_CHALLENGER, version)
    client.set_model_version_tag(name, version, TAG_DECISION, "challenger")
    return Registration(name, version, False, "registered as challenger; awaiting the gates")
