"""What the push step writes on the MLflow model version for each gate's check (components.register.blessing)."""

from __future__ import annotations

from components.common.checks import Check
from components.register.blessing import version_tags


def test_each_check_is_a_version_tag_with_value_threshold_and_verdict() -> None:
    checks = [Check.compare("explain", "randomization_ssim", 0.91, "<=", 0.5, "maps ignore the weights")]
    assert version_tags(checks) == {"gate.explain.randomization_ssim": "0.91 <= 0.5: FAIL (maps ignore the weights)"}
