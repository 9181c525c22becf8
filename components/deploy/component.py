"""KFP component for the deploy step: a thin wrapper over `components.deploy.deployment.deploy_model`.

No `from __future__ import annotations` here: KFP reads the real annotation objects.
"""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Markdown, Output

from components.common.images import PROJECT_IMAGE


@dsl.component(base_image=PROJECT_IMAGE, install_kfp_package=False)
def deploy(
    model_name: str,
    version: str,
    serving_base_uri: str,
    server_address: str = "",
    canary_timeout_s: float = 120.0,
    server_base_path: str = "",
) -> NamedTuple("DeployOutputs", [("serving_version", int), ("endpoint", str)]):
    """Publish registry `version` (a number or an alias such as `champion`) of `model_name` into the TF
    Serving repository at `serving_base_uri`; with `server_address`, the server loads it before `stable`
    moves (needed to replace an existing `stable`: TF Serving refuses a label moved to a version it has not
    loaded)."""
    from components.deploy.deployment import deploy_model

    result = deploy_model(
        model_name,
        serving_base_uri,
        version=version,
        server_address=server_address,
        canary_timeout_s=canary_timeout_s,
        server_base_path=server_base_path,
    )
    return (result.serving_version, result.endpoint)


@dsl.component(base_image=PROJECT_IMAGE, install_kfp_package=False)
def push(
    model_name: str,
    version: str,
    staged_uri: str,
    serving_base_uri: str,
    champion_uri: str,
    server_base_path: str,
    server_address: str,
    evaluate_checks: str,
    explain_checks: str,
    validate_checks: str,
    verdict: Output[Markdown],
) -> NamedTuple("PushOutputs", [("promoted", bool), ("serving_version", int), ("reason", str)]):
    """Bless and push: every gate's checks are tagged on the version; only when all passed does `champion`
    move in MLflow and then `stable` in the serving repository."""
    from components.common.checks import parse_checks
    from components.deploy.push import PushConfig, bless_and_push

    checks = parse_checks(evaluate_checks) + parse_checks(explain_checks) + parse_checks(validate_checks)
    cfg = PushConfig(model_name=model_name, version=version, staged_uri=staged_uri, serving_base_uri=serving_base_uri,
                     champion_uri=champion_uri, server_base_path=server_base_path, server_address=server_address)
    result = bless_and_push(cfg, checks, verdict.path)
    return (result.promoted, result.serving_version, result.reason)
