"""One check that can stop a model: its value, threshold and verdict, written where people look.

Every gate step (evaluate, explain, validate) returns its checks as JSON (`checks_json`); the push step
reads them back (`parse_checks`), writes each one as a tag on the MLflow model version
(`components.register.blessing`) and moves `champion` / `stable` only when all of them passed (`all_passed`). The Markdown table
(`markdown_table`) is what each step shows in the Kubeflow UI. TFX's Evaluator writes a BLESSED /
NOT_BLESSED marker per model; here the blessing is spelled out per check so a reviewer sees which
number stopped a model and by how much.
"""

from __future__ import annotations

import json
import math
import operator
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

OPS = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt}


@dataclass(frozen=True)
class Check:
    """`value op threshold` (e.g. `qwk 0.41 >= 0.20`) for one named check of one gate."""

    gate: str
    name: str
    value: float | None
    op: str
    threshold: float | None
    passed: bool
    note: str = ""
    skipped: bool = False  # does not apply here (no champion yet, no lesion masks): reported, never failing

    @classmethod
    def compare(cls, gate: str, name: str, value: float | None, op: str, threshold: float | None,
                note: str = "") -> Check:
        """The verdict is computed here, never passed in: a missing or non-finite value fails."""
        if op not in OPS:
            raise ValueError(f"unknown comparison {op!r}: expected one of {', '.join(OPS)}")
        finite = value is not None and math.isfinite(float(value))
        passed = finite and (threshold is None or OPS[op](float(value), float(threshold)))
        return cls(gate, name, None if value is None else float(value), op,
                   None if threshold is None else float(threshold), bool(passed), note)

    @classmethod
    def not_applicable(cls, gate: str, name: str, op: str, threshold: float | None, note: str) -> Check:
        """A check that cannot be measured here, with the reason; it has no value, so it cannot hide one."""
        return cls(gate, name, None, op, None if threshold is None else float(threshold), True, note, True)

    @classmethod
    def flag(cls, gate: str, name: str, passed: bool, note: str = "") -> Check:
        """A yes/no check (the server loaded it, the warmup replayed)."""
        return cls(gate, name, 1.0 if passed else 0.0, ">=", 1.0, bool(passed), note)

    @property
    def verdict(self) -> str:
        return "N/A" if self.skipped else "PASS" if self.passed else "FAIL"

    def describe(self) -> str:
        value = "n/a" if self.value is None else f"{self.value:.6g}"
        threshold = "" if self.threshold is None else f" {self.op} {self.threshold:.6g}"
        return f"{value}{threshold}: {self.verdict}" + (f" ({self.note})" if self.note else "")


def checks_json(checks: Iterable[Check]) -> str:
    return json.dumps([asdict(c) for c in checks], sort_keys=True)


def parse_checks(text: str) -> list[Check]:
    """Checks back from `checks_json`; the verdict is recomputed, so a hand-edited `passed` cannot bless (a
    check marked not applicable must carry no value)."""
    out = []
    for item in json.loads(text or "[]"):
        if item.get("skipped") and item.get("value") is None:
            out.append(Check.not_applicable(item["gate"], item["name"], item["op"], item.get("threshold"),
                                            item.get("note", "")))
        else:
            out.append(Check.compare(item["gate"], item["name"], item.get("value"), item["op"],
                                     item.get("threshold"), item.get("note", "")))
    return out


def all_passed(checks: Sequence[Check]) -> bool:
    """No checks at all is not a blessing: a gate that did not run cannot pass."""
    return bool(checks) and all(c.passed for c in checks)


def markdown_table(title: str, checks: Sequence[Check], footer: str = "") -> str:
    """The step's verdict for the Kubeflow UI: one row per check, overall verdict first."""
    overall = "PASS" if all_passed(checks) else "FAIL"
    lines = [f"## {title}: **{overall}**", "", "| gate | check | value | threshold | verdict | note |",
             "|---|---|---|---|---|---|"]
    for c in checks:
        value = "n/a" if c.value is None else f"{c.value:.4g}"
        threshold = "" if c.threshold is None else f"{c.op} {c.threshold:.4g}"
        note = c.note.replace("|", "/").replace("\n", " ")
        lines.append(f"| {c.gate} | {c.name} | {value} | {threshold} | {c.verdict} | {note} |")
    if footer:
        lines += ["", footer]
    return "\n".join(lines) + "\n"


def write_markdown(path: str | None, text: str) -> None:
    """Write a KFP Markdown artifact (its parent folder may not exist yet under the local runner)."""
    if not path:
        return
    from pathlib import Path

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(text, encoding="utf-8")


def as_dicts(checks: Iterable[Check]) -> list[dict[str, Any]]:
    return [asdict(c) for c in checks]
