"""Read-merge-write of the shared `models.config` that never loses another deploy's update.

Two deploys overlap (the fundus and the OCT pipeline, or two runs of one model): each re-reads the file,
replaces only its own model's entry and writes back *only if the file is still what it read*; otherwise
it reads again and re-merges. On S3 that is a conditional PUT (`If-Match: <ETag>`, or `If-None-Match: *`
for the first write: RFC 9110 preconditions, honoured by AWS S3 since 2024 and by SeaweedFS, answered
412 PreconditionFailed when another writer got there first). On a local folder an exclusive `flock` on a
sibling lock file serialises the read-merge-rename.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from components.common import storage
from components.common.errors import RetinaError

log = logging.getLogger(__name__)
MAX_ATTEMPTS = 50
CONFLICTS = {"count": 0}  # conditional writes refused in this process (tests and logs read it)

EntryFn = Callable[[Any | None], Any | None]  # current entry of this model (or None) -> new entry (None = remove)


class ConfigConflict(RetinaError):
    """models.config kept changing under us for MAX_ATTEMPTS tries."""


def merge(entries: list[Any], model_name: str, entry: Any | None) -> list[Any]:
    """Every other model's entry unchanged and in place; this model's replaced (or added, or removed)."""
    out, placed = [], False
    for e in entries:
        if e.name == model_name:
            if entry is not None and not placed:
                out.append(entry)
                placed = True
        else:
            out.append(e)
    if entry is not None and not placed:
        out.append(entry)
    return out


def _find(entries: list[Any], model_name: str) -> Any | None:
    return next((e for e in entries if e.name == model_name), None)


def update_entry(config_uri: str, model_name: str, make_entry: EntryFn) -> tuple[Any | None, Any | None]:
    """Apply `make_entry` to this model's entry under optimistic concurrency; returns (before, after)."""
    if storage.is_s3(config_uri):
        return _update_s3(config_uri, model_name, make_entry)
    return _update_local(Path(config_uri), model_name, make_entry)


def _render(entries: list[Any], model_name: str, make_entry: EntryFn) -> tuple[Any, Any, str]:
    from serving.model_repository import format_models_config, parse_models_config

    before = _find(entries, model_name)
    after = make_entry(before)
    text = format_models_config(merge(entries, model_name, after))
    parse_models_config(text)  # refuse to publish what TF Serving would reject
    return before, after, text


def _update_s3(config_uri: str, model_name: str, make_entry: EntryFn) -> tuple[Any, Any]:
    from botocore.exceptions import ClientError

    from serving.model_repository import parse_models_config

    client = storage.s3_client()
    bucket, key = storage.split_s3(config_uri)
    for attempt in range(MAX_ATTEMPTS):
        try:
            got = client.get_object(Bucket=bucket, Key=key)
            text, condition = got["Body"].read().decode(), {"IfMatch": got["ETag"]}
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("NoSuchKey", "404"):
                raise
            text, condition = "", {"IfNoneMatch": "*"}
        entries = parse_models_config(text, config_uri) if text.strip() else []
        before, after, new_text = _render(entries, model_name, make_entry)
        try:
            client.put_object(Bucket=bucket, Key=key, Body=new_text.encode(), **condition)
            return before, after
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            if code not in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409"):
                raise
            CONFLICTS["count"] += 1
            log.info("models.config changed under us (%s); re-reading (attempt %d)", code, attempt + 1)
            time.sleep(random.uniform(0.01, 0.05) * (1 + attempt))
    raise ConfigConflict(f"{config_uri} kept changing: gave up after {MAX_ATTEMPTS} attempts")


def _update_local(path: Path, model_name: str, make_entry: EntryFn) -> tuple[Any, Any]:
    import fcntl

    from serving.model_repository import parse_models_config

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f".{path.name}.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if this process dies
        text = path.read_text() if path.exists() else ""
        entries = parse_models_config(text, str(path)) if text.strip() else []
        before, after, new_text = _render(entries, model_name, make_entry)
        storage.write_text(str(path), new_text)  # temp file + rename: a polling server never reads half
    return before, after
