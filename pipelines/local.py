"""Run a pipeline on this machine with the kfp local runner against the local stack.

`kfp.local.SubprocessRunner(use_venv=False)` runs every step as a subprocess of this Python (the project
is installed here, as it is in the image), with the environment of this process: the local SeaweedFS +
MLflow endpoints and keys from `components.common.config.apply_stack_env()`. Kubernetes settings compiled
into the pipeline (GPU, Secrets, ConfigMaps) are ignored locally.
"""

from __future__ import annotations

import builtins
import os
from pathlib import Path
from typing import Any

from components.common.config import apply_stack_env, retina_home
from components.common.errors import RetinaError
from pipelines.compile import load_pipeline


def default_pipeline_root() -> Path:
    return retina_home() / "pipeline-root"


def require_stack_env() -> None:
    """Steps read S3/MLflow from the environment: fail here, with the fix, rather than in step 3."""
    apply_stack_env()
    missing = [k for k in ("AWS_ENDPOINT_URL", "MLFLOW_TRACKING_URI") if not os.environ.get(k)]
    if missing:
        raise RetinaError(f"{', '.join(missing)} not set: run `retina stack up` first (or export them)")


def init_local(pipeline_root: str | Path | None = None) -> Path:
    from kfp import local

    root = Path(pipeline_root or default_pipeline_root()).resolve()
    root.mkdir(parents=True, exist_ok=True)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root))
    return root


def run_local(name: str, arguments: dict[str, Any], pipeline_root: str | Path | None = None) -> dict[str, Any]:
    """Run pipeline `name` (`training` | `explain`) to completion; returns its outputs (may be empty).

    Raises RetinaError naming the failed step when a step fails.
    """
    require_stack_env()
    init_local(pipeline_root)
    pipeline = load_pipeline(name)
    # kfp.local indents step output by swapping `builtins.print` per task; parallel loop iterations swap it
    # concurrently and can leave the indenting version installed. Put the real one back afterwards.
    real_print = builtins.print
    try:
        task = pipeline(**arguments)
    except RuntimeError as exc:  # kfp.local raises RuntimeError("Pipeline ... finished with status FAILURE ...")
        raise RetinaError(f"local {name} pipeline failed: {str(exc).splitlines()[0]}") from exc
    except TypeError as exc:  # an unknown --param
        raise RetinaError(f"{name} pipeline: {exc}") from exc
    finally:
        builtins.print = real_print
    outputs = getattr(task, "outputs", None) or {}
    return dict(outputs)
