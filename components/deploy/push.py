"""The last step of the training pipeline: bless (MLflow `champion`) and push (serving `stable`), in that
order, only when every gate passed; `rollback` moves both back to the previous blessed version.

TFX's Pusher pushes only a model its Evaluator and InfraValidator blessed; here the blessing is the set of
checks each gate step returned, re-verified from their values (components.common.checks). If the push
fails after `champion` moved, `champion` is put back, so the registry never names a champion that is not
the one being served.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from components.common import storage
from components.common.checks import Check
from components.common.errors import RetinaError
from components.deploy.deployment import Deployment, push_version, stable_version

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PushConfig:
    """Parameters of the bless-and-push step (KFP component and function)."""

    model_name: str
    version: str
    staged_uri: str  # the SavedModel the validate step checked
    serving_base_uri: str
    champion_uri: str = ""  # the champion the evaluate step compared with ("" = there was none)
    server_base_path: str = ""
    server_address: str = ""
    timeout_s: float = 120.0


@dataclass(frozen=True)
class PushResult:
    promoted: bool
    serving_version: int
    reason: str


def bless_and_push(cfg: PushConfig, checks: list[Check], markdown_path: str | None = None) -> PushResult:
    from components.common.checks import markdown_table, write_markdown
    from components.register.blessing import bless, restore_champion

    blessing = bless(cfg.model_name, cfg.version, checks, cfg.champion_uri)
    pushed: Deployment | None = None
    if blessing.blessed:
        try:
            pushed = push_version(cfg.model_name, int(cfg.version), cfg.staged_uri, cfg.serving_base_uri,
                                  cfg.server_base_path, cfg.server_address, cfg.timeout_s)
        except Exception as exc:
            restore_champion(cfg.model_name, blessing.previous_champion, version=str(cfg.version),
                             why=str(exc) or type(exc).__name__)
            log.error("push failed: champion restored to v%s", blessing.previous_champion or "-")
            raise
    decision = (f"**{cfg.model_name} v{cfg.version} is champion and stable** at `{pushed.endpoint}`"
                if pushed else f"**{cfg.model_name} v{cfg.version} was not promoted**; champion and stable unchanged")
    write_markdown(markdown_path, markdown_table("bless and push", checks, f"{decision}\n\n{blessing.reason}"))
    return PushResult(pushed is not None, pushed.serving_version if pushed else 0, blessing.reason)


def rollback(model_name: str, serving_base_uri: str, server_base_path: str = "", server_address: str = "",
             timeout_s: float = 120.0) -> tuple[str, str]:
    """`champion` and `stable` back to the blessed version the current champion replaced; returns (from, to).

    The previous version's folder must still be in the repository: checked before anything moves. `stable`
    moves as a push moves it (`move_stable`), so TF Serving never gets a config it refuses: with a server
    address (or `RETINA_SERVING_ADDRESS`, as a push) the previous version is loaded first on every replica;
    without one the move is written only when the current entry still loads that version (a push keeps the
    older stable loaded for exactly this), else refused.
    """
    import os

    from components.deploy.deployment import SERVER_ADDRESS_ENV, SERVER_BASE_PATH_ENV, move_stable
    from components.register.blessing import move_champion_back, rollback_target
    from serving.model_repository import is_version_present, version_path

    current, previous = rollback_target(model_name)
    if not is_version_present(version_path(serving_base_uri, model_name, int(previous))):
        raise RetinaError(f"{model_name} v{previous} is not in {serving_base_uri}: cannot serve it again")
    config_uri = storage.join(serving_base_uri, "models.config")
    server_base = server_base_path or os.environ.get(SERVER_BASE_PATH_ENV) or serving_base_uri
    server_address = server_address or os.environ.get(SERVER_ADDRESS_ENV, "")
    # serving first: refused or never loaded, nothing moved; if the registry then fails, a retry finds
    # `stable` already on the previous version and moves only the champion
    before = move_stable(config_uri, model_name, server_base, int(previous), server_address, timeout_s,
                         loaded_ok=True)
    move_champion_back(model_name, current, previous)
    log.info("%s: champion v%s -> v%s, stable %s -> %s", model_name, current, previous, stable_version(before),
             previous)
    return current, previous
