"""The demo's fundus settings reach the promised quadratic weighted kappa under every training seed (tests/local/demo_training.py)."""

from __future__ import annotations

import pytest

from tests.local.demo_training import check_every_seed

pytestmark = [pytest.mark.slow, pytest.mark.long]


def test_demo_fundus_settings_reach_the_promised_score_on_every_seed(tmp_path):
    check_every_seed("fundus", tmp_path)
