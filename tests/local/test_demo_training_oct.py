"""The demo's oct settings reach the promised accuracy under every training seed (tests/local/demo_training.py)."""

from __future__ import annotations

import pytest

from tests.local.demo_training import check_every_seed

pytestmark = [pytest.mark.slow, pytest.mark.long]


def test_demo_oct_settings_reach_the_promised_score_on_every_seed(tmp_path):
    check_every_seed("oct", tmp_path)
