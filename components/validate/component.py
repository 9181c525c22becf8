"""KFP component `validate`: infra-validation of the candidate, thin over `components.validate.validation`.

No `from __future__ import annotations` here: KFP reads the real annotation objects. Parameters have no
defaults: they come from `ValidateConfig` through the pipeline signature.
"""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Markdown, Output

from components.common.images import PROJECT_IMAGE


@dsl.component(base_image=PROJECT_IMAGE, install_kfp_package=False)
def validate(
    model_uri: str,
    data_uri: str,
    raw_data_uri: str,
    staging_uri: str,
    images: int,
    tensor_tolerance: float,
    image_tolerance: float,
    timeout_s: float,
    verdict: Output[Markdown],
) -> NamedTuple("ValidateOutputs", [("passed", bool), ("checks", str), ("staged_uri", str)]):
    """Export with warmup records, stage, load in a private model server, compare served vs in-process."""
    from components.common.checks import all_passed, checks_json
    from components.validate.validation import ValidateConfig, validate_candidate

    cfg = ValidateConfig(model_uri=model_uri, data_uri=data_uri, raw_data_uri=raw_data_uri, staging_uri=staging_uri,
                         images=images, tensor_tolerance=tensor_tolerance, image_tolerance=image_tolerance,
                         timeout_s=timeout_s)
    result = validate_candidate(cfg, verdict.path)
    return (all_passed(result.checks), checks_json(result.checks), result.staged_uri)
