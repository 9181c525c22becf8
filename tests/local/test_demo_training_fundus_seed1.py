"""The demo's fundus settings reach the promised quadratic weighted kappa under training seed 1 (tests/local/demo_training.py)."""

from __future__ import annotations

import pytest

from tests.local.demo_training import check_seed

pytestmark = [pytest.mark.slow, pytest.mark.long(seconds=120)]


def test_demo_fundus_settings_reach_the_promised_score_under_seed_1(tmp_path_factory, tmp_path):
    check_seed("fundus", 1, tmp_path_factory, tmp_path)
