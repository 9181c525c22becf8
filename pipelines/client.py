"""Talk to a Kubeflow Pipelines API server: upload a pipeline (or a new version), start a run, schedule one.

KFP's recurring runs take a 6-field cron (seconds first: `0 0 3 * * 1` = Mondays 03:00); a 5-field
crontab line is the most common mistake, so it is refused here with the fix rather than by the server.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any

from components.cli import parse_params  # noqa: F401 - re-exported: `retina pipeline ... --param`
from components.common.errors import RetinaError
from pipelines.compile import PIPELINES, compile_pipeline

# (name, lowest, highest) for each of KFP's six cron fields.
CRON_FIELDS = (
    ("second", 0, 59),
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day of month", 1, 31),
    ("month", 1, 12),
    ("day of week", 0, 6),
)
_NAMES = {
    "month": {m: i + 1 for i, m in enumerate("JAN FEB MAR APR MAY JUN JUL AUG SEP OCT NOV DEC".split())},
    "day of week": {d: i for i, d in enumerate("SUN MON TUE WED THU FRI SAT".split())},
}
_ITEM = re.compile(r"^(\*|\?|[0-9A-Za-z]+(?:-[0-9A-Za-z]+)?)(?:/([0-9]+))?$")


class CronError(RetinaError):
    pass


def _value(text: str, field: str, low: int, high: int, cron: str) -> int:
    named = _NAMES.get(field, {}).get(text.upper())
    if named is not None:
        return named
    if not text.isdigit():
        raise CronError(f"cron {cron!r}: {field} {text!r} is not a number")
    value = int(text)
    # day of week 7 is Sunday in most cron dialects, KFP's (robfig/cron) included.
    if not (low <= value <= high or (field == "day of week" and value == 7)):
        raise CronError(f"cron {cron!r}: {field} {value} out of range {low}-{high}")
    return value


def validate_cron(cron: str) -> str:
    """Check a KFP cron expression (6 fields, seconds first); returns it normalised to single spaces."""
    fields = cron.split()
    if len(fields) == 5:
        raise CronError(
            f"cron {cron!r} has 5 fields; KFP expects 6 with seconds first, "
            f"e.g. {'0 ' + ' '.join(fields)!r} for the same schedule"
        )
    if len(fields) != 6:
        raise CronError(f"cron {cron!r} has {len(fields)} fields; KFP expects 6: second minute hour day month weekday")
    for text, (field, low, high) in zip(fields, CRON_FIELDS, strict=True):
        for item in text.split(","):
            match = _ITEM.match(item)
            if not match:
                raise CronError(f"cron {cron!r}: cannot read {field} {item!r}")
            base, step = match.groups()
            if step is not None and int(step) == 0:
                raise CronError(f"cron {cron!r}: {field} step must be positive")
            if base == "?" and field not in ("day of month", "day of week"):
                raise CronError(f"cron {cron!r}: '?' is only allowed for day of month / day of week")
            if base in ("*", "?"):
                continue
            lo_text, _, hi_text = base.partition("-")
            lo = _value(lo_text, field, low, high, cron)
            if hi_text and _value(hi_text, field, low, high, cron) < lo:
                raise CronError(f"cron {cron!r}: {field} range {base!r} runs backwards")
    return " ".join(fields)


def connect(host: str) -> Any:
    import kfp

    try:
        return kfp.Client(host=host)
    except Exception as exc:  # noqa: BLE001 - connection/auth problems surface in many types
        raise RetinaError(f"cannot reach the KFP API at {host}: {exc}") from exc


def _package(pipeline: str, workdir: str) -> Path:
    return compile_pipeline(pipeline, workdir)


def _pipeline_id(client: Any, name: str) -> str | None:
    try:
        return client.get_pipeline_id(name)
    except Exception:  # noqa: BLE001 - older servers raise when the name is unknown
        return None


def upload(host: str, pipeline: str = "training", name: str = "", version: str = "", description: str = "") -> dict:
    """Upload the compiled pipeline as `name`, or, when `name` exists, add it as a new version
    (`version`, default a UTC timestamp) so runs and schedules keep their history."""
    import datetime as dt

    client = connect(host)
    name = name or pipeline_display_name(pipeline)
    with tempfile.TemporaryDirectory() as tmp:
        package = str(_package(pipeline, tmp))
        existing = _pipeline_id(client, name)
        if existing is None:
            created = client.upload_pipeline(package, pipeline_name=name, description=description or None)
            return {"pipeline_id": created.pipeline_id, "name": name, "version": name}
        version = version or dt.datetime.now(dt.UTC).strftime("v%Y%m%d-%H%M%S")
        made = client.upload_pipeline_version(
            package, pipeline_version_name=version, pipeline_id=existing, description=description or None
        )
        return {"pipeline_id": existing, "name": name, "version": version, "version_id": made.pipeline_version_id}


def pipeline_display_name(pipeline: str) -> str:
    return PIPELINES[pipeline][2].removesuffix(".yaml") if pipeline in PIPELINES else pipeline


def start_run(host: str, pipeline: str, params: dict[str, Any], experiment: str = "retina", run_name: str = "") -> str:
    client = connect(host)
    with tempfile.TemporaryDirectory() as tmp:
        result = client.create_run_from_pipeline_package(
            str(_package(pipeline, tmp)), arguments=params, run_name=run_name or None, experiment_name=experiment
        )
    return result.run_id


def schedule(
    host: str,
    cron: str,
    pipeline: str = "training",
    params: dict[str, Any] | None = None,
    job_name: str = "",
    experiment: str = "retina",
    max_concurrency: int = 1,
) -> str:
    """Create a recurring run (e.g. weekly retraining); uses the uploaded pipeline's newest version if any."""
    cron = validate_cron(cron)
    client = connect(host)
    experiment_id = client.create_experiment(experiment).experiment_id
    name = pipeline_display_name(pipeline)
    job_name = job_name or f"{name}-scheduled"
    pipeline_id = _pipeline_id(client, name)
    kwargs: dict[str, Any] = dict(
        experiment_id=experiment_id, job_name=job_name, cron_expression=cron, max_concurrency=max_concurrency,
        params=params or {}, no_catchup=True,
    )
    if pipeline_id:
        versions = client.list_pipeline_versions(pipeline_id, sort_by="created_at desc", page_size=1)
        kwargs.update(pipeline_id=pipeline_id, version_id=versions.pipeline_versions[0].pipeline_version_id)
        return client.create_recurring_run(**kwargs).recurring_run_id
    with tempfile.TemporaryDirectory() as tmp:
        return client.create_recurring_run(pipeline_package_path=str(_package(pipeline, tmp)), **kwargs).recurring_run_id
