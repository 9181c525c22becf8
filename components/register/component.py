"""KFP component for the register step: a thin wrapper over `components.register.registry.register_model`.

No `from __future__ import annotations` here: KFP reads the real annotation objects.
"""

from typing import NamedTuple

from kfp import dsl

from components.common.images import PROJECT_IMAGE


@dsl.component(base_image=PROJECT_IMAGE, install_kfp_package=False)
def register(
    modality: str,
    run_id: str,
    model_uri: str = "",
    metric: str = "",
    margin: float = 0.0,
) -> NamedTuple(
    "RegisterOutputs", [("model_name", str), ("version", str), ("promoted", bool), ("reason", str)]
):
    """Register the run's model; `champion` moves only if `metric` (default: qwk fundus / accuracy oct)
    beats the current champion by more than `margin`."""
    from components.register.registry import register_model

    result = register_model(modality, run_id, model_uri=model_uri, metric=metric, margin=margin)
    return (result.model_name, result.version, result.promoted, result.reason)


@dsl.component(base_image=PROJECT_IMAGE, install_kfp_package=False)
def register_challenger(
    modality: str,
    run_id: str,
    model_uri: str,
) -> NamedTuple("ChallengerOutputs", [("model_name", str), ("version", str), ("model_uri", str)]):
    """Register the run's model as a version with alias `challenger`; `champion` is left to the push step."""
    from components.common.model_ref import ModelRef
    from components.register.registry import register_challenger as register

    result = register(modality, run_id, model_uri=model_uri)
    return (result.model_name, result.version, str(ModelRef.registry(result.model_name, version=result.version)))
