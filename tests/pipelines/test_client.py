"""Cron validation (KFP's 6-field form), --param parsing, and upload / run / schedule through kfp.Client."""

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


# --------------------------------------------------------------------- against a KFP API (REST v2beta1)
# The real kfp.Client talks to an in-memory KFP API on loopback (tests/pipelines/kfp_api.py): a real
# API server needs a cluster, so this checks what reaches the server through kfp's own client code.

@pytest.fixture
def kfp_api():
    from tests.pipelines.kfp_api import KfpApiServer

    with KfpApiServer() as api:
        yield api


def test_first_upload_creates_the_pipeline_then_later_uploads_add_versions(kfp_api, capsys) -> None:
    from components.cli import main

    assert main(["pipeline", "upload", "--host", kfp_api.url]) == 0
    assert main(["pipeline", "upload", "--host", kfp_api.url, "--version", "v2-more-epochs"]) == 0
    assert main(["pipeline", "upload", "--host", kfp_api.url]) == 0  # version name defaults to a timestamp

    state = kfp_api.state
    assert [p["display_name"] for p in state.pipelines.values()] == ["retina-training"]
    (pipeline_id,) = state.pipelines
    versions = [v["display_name"] for v in state.versions[pipeline_id]]
    assert versions[:2] == ["retina-training", "v2-more-epochs"]
    assert len(versions) == 3 and versions[2].startswith("v") and versions[2] != "v2-more-epochs"
    assert [u["kind"] for u in state.uploads] == ["pipeline", "version", "version"]
    for upload in state.uploads:  # the package the UI would show: our compiled training pipeline
        assert upload["spec"]["pipelineInfo"]["name"] == "retina-training"
        assert "modality" in upload["spec"]["root"]["inputDefinitions"]["parameters"]
    out = capsys.readouterr().out
    assert f"uploaded retina-training (pipeline {pipeline_id}, version v2-more-epochs)" in out


def test_explanation_pipeline_uploads_under_its_own_name(kfp_api) -> None:
    from pipelines.client import upload

    result = upload(kfp_api.url, "explain", description="batch Grad-CAM reports")
    assert result["name"] == "retina-batch-explanation"
    (pipeline,) = kfp_api.state.pipelines.values()
    assert pipeline["display_name"] == "retina-batch-explanation"
    assert pipeline["description"] == "batch Grad-CAM reports"
    assert kfp_api.state.uploads[0]["spec"]["pipelineInfo"]["name"] == "retina-batch-explanation"


def test_run_on_a_host_sends_the_package_and_typed_parameters(kfp_api, capsys) -> None:
    from components.cli import main

    code = main(["pipeline", "run", "--host", kfp_api.url, "--param", "modality=oct", "--param", "epochs=3",
                 "--param", "promotion_margin=0.02", "--run-name", "oct-retrain", "--experiment", "screening"])
    assert code == 0
    (run,) = kfp_api.state.runs
    experiment = kfp_api.state.experiments[run["experiment_id"]]
    assert experiment["display_name"] == "screening"
    assert run["display_name"] == "oct-retrain"
    assert run["runtime_config"]["parameters"] == {"modality": "oct", "epochs": 3, "promotion_margin": 0.02}
    assert run["pipeline_spec"]["pipeline_spec"]["pipelineInfo"]["name"] == "retina-training"
    assert f"started run {run['run_id']}" in capsys.readouterr().out


def test_schedule_uses_the_newest_uploaded_version_with_a_six_field_cron(kfp_api, capsys) -> None:
    from components.cli import main
    from pipelines.client import upload

    upload(kfp_api.url, "training")
    upload(kfp_api.url, "training", version="v2")
    code = main(["pipeline", "schedule", "--host", kfp_api.url, "--cron", "0  0 3 * * 1", "--param", "modality=fundus",
                 "--name", "weekly-fundus"])
    assert code == 0
    (job,) = kfp_api.state.recurring_runs
    (pipeline_id,) = kfp_api.state.pipelines
    newest = kfp_api.state.versions[pipeline_id][-1]
    assert newest["display_name"] == "v2"
    assert job["pipeline_version_reference"] == {"pipeline_id": pipeline_id,
                                                 "pipeline_version_id": newest["pipeline_version_id"]}
    assert "pipeline_spec" not in job or not job["pipeline_spec"]
    assert job["trigger"]["cron_schedule"]["cron"] == "0 0 3 * * 1"
    assert job["no_catchup"] is True
    assert int(job["max_concurrency"]) == 1  # int64 travels as a JSON string
    assert job["mode"] == "ENABLE" and job["display_name"] == "weekly-fundus"
    assert job["runtime_config"]["parameters"] == {"modality": "fundus"}
    assert kfp_api.state.experiments[job["experiment_id"]]["display_name"] == "retina"
    assert "recurring run recurring-" in capsys.readouterr().out


def test_schedule_without_an_upload_sends_the_compiled_package(kfp_api) -> None:
    from pipelines.client import schedule

    schedule(kfp_api.url, "0 30 2 * * *", "explain", {"images_uri": "s3://raw/new"})
    (job,) = kfp_api.state.recurring_runs
    assert job["pipeline_spec"]["pipeline_spec"]["pipelineInfo"]["name"] == "retina-batch-explanation"
    assert job["runtime_config"]["parameters"] == {"images_uri": "s3://raw/new"}
    assert job["trigger"]["cron_schedule"]["cron"] == "0 30 2 * * *"


def test_unreachable_kfp_host_is_one_line_error(capsys) -> None:
    from components.cli import main

    assert main(["pipeline", "upload", "--host", "http://127.0.0.1:9"]) != 0
    err = capsys.readouterr().err
    assert "127.0.0.1:9" in err and "Traceback" not in err
