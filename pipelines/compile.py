"""Compile the pipelines to KFP YAML packages (what the Kubeflow UI uploads and `kfp.Client` sends)."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from components.common.errors import RetinaError

# CLI name -> (module, pipeline function, package file name)
PIPELINES: dict[str, tuple[str, str, str]] = {
    "training": ("pipelines.training", "training_pipeline", "retina-training.yaml"),
    "explain": ("pipelines.explain", "explanation_pipeline", "retina-batch-explanation.yaml"),
}


def load_pipeline(name: str) -> Any:
    """The `@dsl.pipeline` object for a CLI name (`training`, `explain`); imports the step components."""
    if name not in PIPELINES:
        raise RetinaError(f"unknown pipeline {name!r}: expected one of {', '.join(PIPELINES)}")
    module, attr, _ = PIPELINES[name]
    return getattr(importlib.import_module(module), attr)


def compile_pipeline(name: str, out_dir: str | Path) -> Path:
    from kfp import compiler

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / PIPELINES[name][2] if name in PIPELINES else out / f"{name}.yaml"
    compiler.Compiler().compile(load_pipeline(name), str(path))
    return path


def compile_all(out_dir: str | Path, names: list[str] | None = None) -> dict[str, Path]:
    """Write one YAML package per pipeline into `out_dir`; returns name -> path."""
    return {name: compile_pipeline(name, out_dir) for name in (names or list(PIPELINES))}
