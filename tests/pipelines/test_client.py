"""Cron validation (KFP's 6-field form) and --param parsing, checked without a KFP server."""

from __future__ import annotations

import pytest

from components.common.errors import RetinaError
from pipelines.client import CronError, parse_params, validate_cron


@pytest.mark.parametrize(
    "cron",
    ["0 0 3 * * 1", "0 */15 * * * *", "30 0 3 1,15 * MON-FRI", "0 0 0 ? JAN-JUN 0", "0  0 3 * *  7"],
)
def test_six_field_crons_are_accepted(cron: str) -> None:
    assert validate_cron(cron) == " ".join(cron.split())


def test_five_field_crontab_is_refused_with_the_six_field_fix() -> None:
    with pytest.raises(CronError, match="5 fields") as info:
        validate_cron("0 3 * * 1")
    assert "'0 0 3 * * 1'" in str(info.value)


@pytest.mark.parametrize(
    ("cron", "problem"),
    [
        ("60 0 3 * * 1", "second 60 out of range"),
        ("0 0 24 * * 1", "hour 24 out of range"),
        ("0 0 3 0 * 1", "day of month 0 out of range"),
        ("0 0 3 * 13 1", "month 13 out of range"),
        ("0 0 3 * * 8", "day of week 8 out of range"),
        ("0 0 3 * * FUNDAY", "not a number"),
        ("0 */0 * * * *", "step must be positive"),
        ("0 30-10 * * * *", "runs backwards"),
        ("0 0 3 * * 1 2027", "7 fields"),
    ],
)
def test_bad_crons_name_the_problem(cron: str, problem: str) -> None:
    with pytest.raises(CronError, match=problem):
        validate_cron(cron)


def test_params_keep_numbers_and_booleans_and_leave_strings() -> None:
    params = parse_params(["epochs=3", "promotion_margin=0.01", "modality=oct", "flag=true", "beam_args=--runner=X"])
    assert params == {"epochs": 3, "promotion_margin": 0.01, "modality": "oct", "flag": True,
                      "beam_args": "--runner=X"}


def test_param_without_equals_is_a_user_error() -> None:
    with pytest.raises(RetinaError, match="key=value"):
        parse_params(["epochs"])


def test_schedule_cli_refuses_a_five_field_cron_before_connecting() -> None:
    from components.cli import main

    # An unroutable host: reaching it would hang or fail differently; the cron check comes first.
    assert main(["pipeline", "schedule", "--host", "http://127.0.0.1:9", "--cron", "0 3 * * 1"]) == 2
