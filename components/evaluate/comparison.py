"""Challenger vs champion on the same test split of this run's dataset, with per-metric floors.

Why both are scored here: the champion's own registry metric was measured on another run's test set,
so comparing it with the challenger's number compares two datasets, not two models (TFX's Evaluator
also re-scores the baseline model on the candidate's eval split). Both models see the same shards
in the same order; `split_fingerprint` (a hash of the shard names and the labels read) is recorded for
each so a reader can check that. A challenger whose outputs are not finite fails the step outright.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from components.common import config
from components.common.checks import Check
from components.common.errors import RetinaError
from components.common.model_ref import ModelRef
from components.evaluate.evaluation import EvaluationResult, compute_metrics

log = logging.getLogger(__name__)
GATE = "evaluate"
DEFAULT_METRIC = {"fundus": "qwk", "oct": "accuracy"}


class NonFiniteOutputs(RetinaError):
    """The model produced NaN/inf on held-out images: it cannot be scored, let alone promoted."""


@dataclass(frozen=True)
class EvaluateConfig:
    """Parameters of the evaluate gate (KFP component, `retina evaluate-challenger` and the function)."""

    modality: str
    data_uri: str
    challenger_uri: str
    champion_uri: str = ""  # empty: the registered model's current `champion`, pinned to its version
    split: str = "test"
    metric: str = ""  # the comparison metric; empty: qwk for fundus, accuracy for oct
    margin: float = 0.0  # the challenger must beat the champion by more than this
    floors: str = "qwk>=0.1"  # absolute floors, `name>=value,...` (QWK 0 is chance for both modalities)
    batch_size: int = 64

    def comparison_metric(self) -> str:
        return self.metric or DEFAULT_METRIC[config.check_modality(self.modality)]


@dataclass
class Scored:
    ref: str  # the pinned model URI scored
    result: EvaluationResult
    fingerprint: str
    finite: bool = True


@dataclass
class Comparison:
    challenger: Scored
    champion: Scored | None
    checks: list[Check] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)


def parse_floors(text: str) -> list[tuple[str, str, float]]:
    """`"qwk>=0.2,accuracy>=0.5"` -> [(metric, op, value)]; a malformed floor is a clear error, up front."""
    out = []
    for part in (p.strip() for p in (text or "").split(",")):
        if not part:
            continue
        for op in (">=", "<=", ">", "<"):
            name, sep, value = part.partition(op)
            if sep:
                try:
                    out.append((name.strip(), op, float(value)))
                except ValueError:
                    raise RetinaError(f"floor {part!r}: {value!r} is not a number") from None
                break
        else:
            raise RetinaError(f"floor {part!r}: expected metric>=value (e.g. qwk>=0.2)")
    return out


def resolve_champion(challenger: ModelRef, modality: str, champion_uri: str) -> ModelRef | None:
    """The champion to compare with, pinned to a version (so push can check it has not moved since)."""
    if champion_uri:
        return ModelRef.parse(champion_uri).pinned()
    name = challenger.name if challenger.kind == "registry" else config.REGISTERED_MODEL[modality]
    try:
        return ModelRef.registry(name, alias=config.ALIAS_CHAMPION).pinned()
    except RetinaError:
        return None  # no champion yet


def split_fingerprint(shards: list[Any], labels: np.ndarray) -> str:
    digest = hashlib.sha256()
    for shard in shards:
        digest.update(str(getattr(shard, "name", shard)).encode())
    digest.update(np.asarray(labels, dtype=np.int64).tobytes())
    return digest.hexdigest()[:16]


def score(model_uri: str, cfg: EvaluateConfig) -> Scored:
    """Score one model on `cfg.split` of `cfg.data_uri`; outputs are checked for NaN/inf."""
    from components.common import shards as data
    from components.common.model_store import load_model

    manifest = data.read_manifest(cfg.data_uri)
    model, info = load_model(model_uri, modality=cfg.modality)
    root = data.stage_dataset(cfg.data_uri)
    shards = data.split_shards(root, cfg.split, manifest)
    dataset = data.make_dataset(shards, cfg.modality, info.image_size, cfg.batch_size)
    labels, outputs = data.collect_predictions(model, dataset)
    finite = bool(np.all(np.isfinite(outputs)))
    if not finite:
        outputs = np.nan_to_num(outputs, nan=0.0, posinf=0.0, neginf=0.0)
    result = compute_metrics(labels, outputs, info, cfg.split)
    result.model_run_id = info.run_id or ""
    return Scored(str(model_uri), result, split_fingerprint(shards, labels), finite)


def gate_checks(cfg: EvaluateConfig, challenger: Scored, champion: Scored | None) -> list[Check]:
    """Floors on the challenger's own numbers, then challenger vs champion on the comparison metric."""
    values = challenger.result.scalar_metrics()
    checks = []
    for name, op, threshold in parse_floors(cfg.floors):
        if name not in values:
            raise RetinaError(f"floor on unknown metric {name!r}: the evaluation reports {', '.join(sorted(values))}")
        checks.append(Check.compare(GATE, f"{name}_floor", values[name], op, threshold))
    metric = cfg.comparison_metric()
    name = f"{metric}_vs_champion"
    if champion is None:
        checks.append(Check.not_applicable(GATE, name, ">", cfg.margin, "no champion yet"))
    elif not champion.finite:
        checks.append(Check.not_applicable(GATE, name, ">", cfg.margin, f"champion {champion.ref} outputs NaN/inf"))
    elif champion.ref == challenger.ref:
        checks.append(Check.not_applicable(GATE, name, ">", cfg.margin, "the challenger is already the champion"))
    else:
        ours, theirs = values[metric], champion.result.scalar_metrics()[metric]
        checks.append(Check.compare(
            GATE, name, ours - theirs, ">", cfg.margin,
            f"challenger {ours:.4f} vs champion {champion.ref} {theirs:.4f} on the same {cfg.split} split"))
    return checks


def compare_models(cfg: EvaluateConfig) -> Comparison:
    """Score the challenger and the current champion on one split and decide the evaluate gate."""
    parse_floors(cfg.floors)  # a typo costs nothing
    challenger_ref = ModelRef.parse(cfg.challenger_uri).pinned()
    challenger = score(str(challenger_ref), cfg)
    if not challenger.finite:
        raise NonFiniteOutputs(f"{challenger_ref} outputs NaN/inf on the {cfg.split} split of {cfg.data_uri}")
    champion_ref = resolve_champion(challenger_ref, cfg.modality, cfg.champion_uri)
    champion = None
    if champion_ref is not None:
        champion = challenger if str(champion_ref) == str(challenger_ref) else score(str(champion_ref), cfg)
        if champion.fingerprint != challenger.fingerprint:
            raise RetinaError(f"champion and challenger read different {cfg.split} data: refusing to compare")
    return Comparison(challenger, champion, gate_checks(cfg, challenger, champion))


def comparison_markdown(comparison: Comparison) -> str:
    """Side-by-side table (every scalar metric, both models) under the gate's verdict table."""
    from components.common.checks import markdown_table

    ours = comparison.challenger.result.scalar_metrics()
    theirs = comparison.champion.result.scalar_metrics() if comparison.champion else {}
    champion_name = comparison.champion.ref if comparison.champion else "(none)"
    rows = [f"| metric | challenger {comparison.challenger.ref} | champion {champion_name} |", "|---|---|---|"]
    for name in ours:
        other = f"{theirs[name]:.4f}" if name in theirs else "n/a"
        rows.append(f"| {name} | {ours[name]:.4f} | {other} |")
    r = comparison.challenger.result
    rows.append(f"| images | {r.count} | {comparison.champion.result.count if comparison.champion else 'n/a'} |")
    footer = (f"Both scored on split `{r.split}` (fingerprint `{comparison.challenger.fingerprint}`).\n\n"
              + "\n".join(rows))
    return markdown_table("evaluate: challenger vs champion", comparison.checks, footer)


def log_comparison(comparison: Comparison) -> None:
    """Into the challenger's training run: `test_*` for it, `champion_test_*` for the champion on this split."""
    import os

    from components.evaluate.evaluation import log_to_mlflow

    run_id = comparison.challenger.result.model_run_id
    if not (run_id and os.environ.get("MLFLOW_TRACKING_URI")):
        return
    log_to_mlflow(comparison.challenger.result, run_id=run_id)
    if comparison.champion is not None and comparison.champion is not comparison.challenger:
        from mlflow.tracking import MlflowClient

        client, result = MlflowClient(), comparison.champion.result
        for name, value in result.scalar_metrics().items():
            client.log_metric(run_id, f"champion_{result.split}_{name}", value)
        client.set_tag(run_id, "champion_compared", comparison.champion.ref)


def evaluate_challenger(cfg: EvaluateConfig, artifacts: dict[str, Any] | None = None,
                        markdown_path: str | None = None) -> Comparison:
    """What the KFP step and the CLI run: compare, fill the KFP artifacts, log, write the verdict.

    `artifacts` holds the KFP outputs `challenger_metrics`, `challenger_classification`,
    `champion_metrics`, `champion_classification` (duck-typed, so this module imports no KFP).
    """
    from components.common.checks import write_markdown
    from components.evaluate.evaluation import write_kfp_metrics

    comparison = compare_models(cfg)
    artifacts = artifacts or {}
    for who, scored in (("challenger", comparison.challenger), ("champion", comparison.champion)):
        metrics, classification = artifacts.get(f"{who}_metrics"), artifacts.get(f"{who}_classification")
        if metrics is None or classification is None:
            continue
        if scored is None:
            metrics.log_metric("available", 0.0)
            continue
        write_kfp_metrics(scored.result, metrics, classification)
        metrics.metadata["model"] = scored.ref
    log_comparison(comparison)
    text = comparison_markdown(comparison)
    write_markdown(markdown_path, text)
    print(text)
    return comparison
