"""Checks carry value, threshold and verdict; the verdict is always recomputed from the numbers."""

from __future__ import annotations

import json
import math

import pytest

from components.common.checks import (
    Check,
    all_passed,
    checks_json,
    markdown_table,
    parse_checks,
)


@pytest.mark.parametrize(("value", "op", "threshold", "passed"), [
    (0.3, ">=", 0.2, True), (0.2, ">=", 0.2, True), (0.2, ">", 0.2, False), (0.01, "<=", 1e-4, False),
    (math.nan, "<=", 1.0, False), (math.inf, ">=", 0.0, False), (None, ">=", 0.0, False),
])
def test_compare_computes_the_verdict_and_non_finite_fails(value, op, threshold, passed) -> None:
    assert Check.compare("g", "c", value, op, threshold).passed is passed


def test_round_trip_recomputes_a_tampered_verdict() -> None:
    checks = [Check.compare("evaluate", "qwk_floor", 0.05, ">=", 0.1), Check.flag("validate", "available", True)]
    tampered = json.loads(checks_json(checks))
    tampered[0]["passed"] = True
    parsed = parse_checks(json.dumps(tampered))
    assert [c.passed for c in parsed] == [False, True]
    assert not all_passed(parsed) and not all_passed([])


def test_markdown_shows_value_threshold_and_verdict() -> None:
    checks = [Check.compare("explain", "randomization_ssim", 0.91, "<=", 0.5, "maps ignore the weights")]
    table = markdown_table("explain", checks)
    assert "**FAIL**" in table and "| explain | randomization_ssim | 0.91 | <= 0.5 | FAIL |" in table


def test_a_check_that_does_not_apply_survives_the_round_trip_without_a_value() -> None:
    checks = [Check.not_applicable("explain", "drift_ssim_vs_champion", ">=", -1.0, "no champion yet")]
    [parsed] = parse_checks(checks_json(checks))
    assert parsed.passed and parsed.skipped and parsed.describe() == "n/a >= -1: N/A (no champion yet)"
    forged = json.loads(checks_json([Check.compare("evaluate", "qwk_floor", 0.0, ">=", 0.1)]))
    forged[0]["skipped"] = True  # a value cannot be declared not applicable
    assert not parse_checks(json.dumps(forged))[0].passed
