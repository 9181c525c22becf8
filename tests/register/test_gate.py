"""The champion gate's arithmetic and metric lookup, without a registry."""

from __future__ import annotations

import pytest

from components.register.registry import Gate, decide, find_metric, lower_is_better


class _Champion:
    version = "3"


@pytest.mark.parametrize(
    ("candidate", "champion", "margin", "expected"),
    [(0.80, 0.70, 0.05, True), (0.705, 0.70, 0.01, False), (0.70, 0.70, 0.0, False), (0.71, 0.70, 0.0, True)],
)
def test_gate_requires_more_than_margin(candidate, champion, margin, expected):
    promoted, reason = decide(Gate("qwk", margin), candidate, _Champion(), champion)
    assert promoted is expected
    assert "v3" in reason


def test_loss_gate_prefers_lower_values():
    assert lower_is_better("val_loss") and not lower_is_better("qwk")
    assert decide(Gate("loss", 0.0, greater_is_better=False), 0.2, _Champion(), 0.3)[0]
    assert not decide(Gate("loss", 0.0, greater_is_better=False), 0.4, _Champion(), 0.3)[0]


def test_metric_lookup_accepts_evaluate_prefixes():
    assert find_metric({"test_qwk": 0.5, "val_qwk": 0.4}, "qwk") == ("test_qwk", 0.5)
    # training-split `qwk` per epoch must not win over the evaluate step's held-out `test_qwk`
    assert find_metric({"qwk": 0.6, "test_qwk": 0.5}, "qwk") == ("test_qwk", 0.5)
    assert find_metric({"qwk": 0.6, "val_qwk": 0.5}, "qwk") == ("qwk", 0.6)
    assert find_metric({"test_qwk": 0.5}, "test_qwk") == ("test_qwk", 0.5)
    assert find_metric({"accuracy": 0.6}, "qwk") is None


def test_no_champion_always_promotes():
    promoted, reason = decide(Gate("qwk", 0.5), 0.1, None, None)
    assert promoted and "no champion" in reason
