"""The demo's oct settings reach the promised accuracy under training seed 2 (tests/local/demo_training.py)."""

from __future__ import annotations

import pytest

from tests.local.demo_training import check_seed

pytestmark = [pytest.mark.slow, pytest.mark.long(seconds=80)]


def test_demo_oct_settings_reach_the_promised_score_under_seed_2(tmp_path_factory, tmp_path):
    check_seed("oct", 2, tmp_path_factory, tmp_path)
