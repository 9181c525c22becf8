"""Bless: move `champion` to a version only when every gate's check passed, and undo it for a rollback.

Each check (evaluate, explain, validate) is written as a tag `gate.<gate>.<check>` on the model version
("0.41 >= 0.1: PASS"), blessed or not, so the registry UI answers "why is this (not) the champion?".
A blessed version records the champion it replaced (`retina.previous_champion`): `retina rollback`
follows that link back, and a version rolled back from is tagged `retina.rolled_back`.

The champion the challenger was *compared* with is checked again here: if another run moved `champion`
meanwhile, this verdict is stale and nothing moves (the next run compares against the new champion).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from components.common import config
from components.common.checks import Check, all_passed
from components.common.errors import RetinaError
from components.common.model_ref import ModelRef

log = logging.getLogger(__name__)
TAG_PREFIX = "gate."
TAG_BLESSED = "retina.blessed"
TAG_BLESSED_AT = "retina.blessed_at"
TAG_ROLLED_BACK = "retina.rolled_back"
TAG_PREVIOUS = "retina.previous_champion"
TAG_REASON = "retina.promotion_reason"
TAG_DECISION = "retina.promotion"


def version_tags(checks: Iterable[Check]) -> dict[str, str]:
    """`gate.<gate>.<name>` -> `value op threshold: PASS|FAIL (note)` for the MLflow model version."""
    return {f"{TAG_PREFIX}{c.gate}.{c.name}": c.describe()[:4900] for c in checks}


class RollbackError(RetinaError):
    """No earlier blessed version to go back to, or its files are gone."""


@dataclass(frozen=True)
class Blessing:
    blessed: bool
    previous_champion: str  # version number, "" when there was none
    reason: str


def _client() -> Any:
    from mlflow import MlflowClient

    return MlflowClient()


def current_champion(client: Any, name: str) -> str:
    try:
        return str(ModelRef.registry(name, alias=config.ALIAS_CHAMPION).pinned(client).version)
    except RetinaError:
        return ""


def bless(name: str, version: str, checks: list[Check], compared_champion: str = "", client: Any = None) -> Blessing:
    """Tag every check on the version; move `champion` to it only if all passed and the champion it was
    compared with is still the champion. `compared_champion` is a model URI or version ("" = there was none)."""
    client = client or _client()
    version = str(version)
    for key, value in version_tags(checks).items():
        client.set_model_version_tag(name, version, key, value)
    now = current_champion(client, name)
    compared = ModelRef.parse(compared_champion).version if compared_champion.startswith("models:/") else compared_champion
    failed = [f"{c.gate}.{c.name} {c.describe()}" for c in checks if not c.passed]
    if now == version:
        blessing = Blessing(True, client.get_model_version(name, version).tags.get(TAG_PREVIOUS, ""),
                            "already the champion (a retried push)")
    elif not all_passed(checks):
        blessing = Blessing(False, now, "not blessed: " + ("; ".join(failed) or "no checks ran"))
    elif now != (compared or ""):
        blessing = Blessing(False, now, f"not blessed: champion moved from v{compared or '-'} to v{now} during this "
                                        "run; re-run to compare against the new champion")
    else:
        client.set_model_version_tag(name, version, TAG_PREVIOUS, now)
        client.set_model_version_tag(name, version, TAG_BLESSED_AT, f"{time.time():.3f}")
        client.set_registered_model_alias(name, config.ALIAS_CHAMPION, version)
        blessing = Blessing(True, now, f"blessed: all {len(checks)} checks passed; champion v{now or '-'} -> v{version}")
    client.set_model_version_tag(name, version, TAG_BLESSED, "true" if blessing.blessed else "false")
    client.set_model_version_tag(name, version, TAG_DECISION, "champion" if blessing.blessed else "challenger")
    client.set_model_version_tag(name, version, TAG_REASON, blessing.reason[:4900])
    log.info("%s v%s: %s", name, version, blessing.reason)
    return blessing


def restore_champion(name: str, previous: str, client: Any = None, version: str = "", why: str = "") -> None:
    """Put `champion` back on `previous` (or remove it when there was none): push failed after blessing.
    `version`, the one blessed a moment ago, is tagged back to a challenger with the reason, so the registry
    does not call a version blessed that never served."""
    client = client or _client()
    if version:
        client.set_model_version_tag(name, version, TAG_BLESSED, "false")
        client.set_model_version_tag(name, version, TAG_DECISION, "challenger")
        client.set_model_version_tag(name, version, TAG_REASON,
                                     f"passed every check, but the push failed: {why}"[:4900])
        client.delete_model_version_tag(name, version, TAG_BLESSED_AT)
    if previous:
        client.set_registered_model_alias(name, config.ALIAS_CHAMPION, previous)
    else:
        client.delete_registered_model_alias(name, config.ALIAS_CHAMPION)


def rollback_target(name: str, client: Any = None) -> tuple[str, str]:
    """(current champion, the blessed version it replaced); RollbackError when there is nothing to go back to."""
    client = client or _client()
    now = current_champion(client, name)
    if not now:
        raise RollbackError(f"{name} has no champion: nothing to roll back")
    previous = client.get_model_version(name, now).tags.get(TAG_PREVIOUS, "")
    if not previous:
        raise RollbackError(f"{name} v{now} replaced no earlier blessed version: nothing to roll back to")
    return now, previous


def move_champion_back(name: str, current: str, previous: str, client: Any = None) -> None:
    client = client or _client()
    client.set_registered_model_alias(name, config.ALIAS_CHAMPION, previous)
    client.set_model_version_tag(name, current, TAG_ROLLED_BACK, f"{time.time():.3f}")
    client.set_model_version_tag(name, current, TAG_DECISION, "rolled back")
