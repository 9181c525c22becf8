"""The serving pod's model sync (infra/k8s/serving/base/model-sync.sh), run by a real shell with the real AWS
CLI (`awscli`, the dev extra) against the session's SeaweedFS S3.

Each test gets a bucket of its own (`MODELS_BUCKET`). The `aws` on the script's PATH is the real CLI behind a
one-line wrapper that logs each call, so a test can tell which prefixes the script asked to sync. Everything
is real: the CLI's `--exclude`/`--include` filters and `--delete`, and what the script decides — which
models and versions models.config serves, which versions are complete (`_SUCCESS`), the one-rename
publish, removing what is no longer served, replacing the bootstrap models.config.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from components.common import storage

pytestmark = pytest.mark.stack

SCRIPT = Path(__file__).resolve().parents[2] / "infra" / "k8s" / "serving" / "base" / "model-sync.sh"

# The sync mirrors only the models the config names (h19): the bootstrap serves every retina-oct version.
BOOTSTRAP = 'model_config_list { config { name: "retina-oct" model_version_policy { all {} } } }\n'


def _real_aws() -> str:
    """The CLI the dev extra installs next to this interpreter, else one on PATH."""
    beside = Path(sys.executable).parent / "aws"
    found = str(beside) if beside.exists() else shutil.which("aws")
    if found is None:
        pytest.skip("no AWS CLI: `pip install -e '.[dev]'` installs awscli")
    return found


@dataclass
class Sync:
    bucket: str  # s3://<a bucket of this test's own>
    models: Path  # MODEL_REPOSITORY, what TF Serving reads
    run: Callable[[], str]  # one `model-sync.sh --once`; returns its stdout
    calls: Path  # one line per `aws` call the script made

    def put(self, key: str, data: bytes | str = b"") -> None:
        storage.write_bytes(f"{self.bucket}/{key}", data.encode() if isinstance(data, str) else data)

    def publish(self, model: str, version: int, complete: bool = True) -> None:
        """A version as the deploy step uploads it: `_SUCCESS` last, absent while the upload is in flight."""
        self.put(f"{model}/{version}/variables/variables.index", b"x")
        self.put(f"{model}/{version}/saved_model.pb", b"pb")
        if complete:
            self.put(f"{model}/{version}/_SUCCESS")

    def versions(self, model: str) -> list[str]:
        folder = self.models / model
        return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


@pytest.fixture
def sync(stack, tmp_path: Path) -> Sync:
    if shutil.which("sh") is None or shutil.which("awk") is None:
        pytest.skip("no POSIX shell / awk")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "aws").write_text(f'#!/bin/sh\necho "$*" >> "$AWS_CALLS_LOG"\nexec "{_real_aws()}" "$@"\n')
    (bin_dir / "aws").chmod(0o755)
    bucket = f"model-sync-{uuid.uuid4().hex[:12]}"
    storage.ensure_buckets([bucket])
    models = tmp_path / "models"
    models.mkdir()
    (tmp_path / "bootstrap.config").write_text(BOOTSTRAP)
    calls = tmp_path / "aws-calls.log"
    env = {
        **os.environ,  # the stack's AWS_ENDPOINT_URL, credentials and region
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "AWS_CALLS_LOG": str(calls),
        "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),  # the script sets HOME=/tmp: read no stray ~/.aws
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials"),
        "MODELS_BUCKET": bucket,
        "MODEL_REPOSITORY": str(models),
        "BOOTSTRAP_CONFIG": str(tmp_path / "bootstrap.config"),
    }

    def run() -> str:
        done = subprocess.run(["sh", str(SCRIPT), "--once"], env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    return Sync(f"s3://{bucket}", models, run, calls)


def test_only_complete_versions_are_published_and_config_bootstraps(sync: Sync) -> None:
    sync.publish("retina-oct", 1)
    sync.publish("retina-oct", 2, complete=False)  # still being uploaded
    sync.put("retina-oct/_tmp/abc/saved_model.pb", b"pb")  # an upload's scratch folder

    out = sync.run()

    assert "published retina-oct/1" in out
    assert (sync.models / "retina-oct" / "1" / "saved_model.pb").exists()
    assert not (sync.models / "retina-oct" / "2").exists()
    assert (sync.models / "models.config").read_text() == BOOTSTRAP
    assert not list((sync.models / "retina-oct").glob("*.partial"))
    assert not (sync.models / ".staging" / "retina-oct" / "_tmp").exists()  # --exclude "*_tmp/*"


def test_only_named_models_and_served_versions_are_mirrored(sync: Sync) -> None:
    for v in (1, 2, 3):
        sync.publish("retina-fundus", v)
    sync.publish("retina-oct", 1)
    sync.put("training-runs/run-1/checkpoints/ckpt-1.index", b"x")  # must never be copied
    sync.put("models.config", (
        'model_config_list {\n config { name: "retina-fundus" base_path: "/models/retina-fundus"\n'
        '  model_version_policy { specific { versions: 2 versions: 3 } }\n'
        '  version_labels { key: "stable" value: 2 } version_labels { key: "canary" value: 3 } }\n}\n'))

    out = sync.run()

    assert sync.versions("retina-fundus") == ["2", "3"] and "published retina-fundus/3" in out
    # an unserved version is never downloaded, not even into staging: one listing says what is complete
    assert f"{sync.bucket}/retina-fundus/1/" not in sync.calls.read_text()
    assert not (sync.models / ".staging" / "retina-fundus" / "1").exists()
    assert not list((sync.models / ".staging" / "retina-fundus").glob("*"))  # published by rename, not copied
    assert not (sync.models / "retina-oct").exists() and not (sync.models / "training-runs").exists()
    assert not (sync.models / ".config-staging" / "training-runs").exists()  # --exclude "*" --include models.config
    assert f"{sync.bucket}/training-runs/" not in sync.calls.read_text()  # the bucket's other folders are not synced
    assert "retina-fundus" in (sync.models / "models.config").read_text()


def test_deploy_config_replaces_bootstrap_and_deleted_versions_disappear(sync: Sync) -> None:
    sync.publish("retina-oct", 1)
    sync.publish("retina-oct", 2)
    sync.run()
    sync.put("models.config", 'model_config_list { config { name: "retina-oct" } }\n')
    storage.delete(f"{sync.bucket}/retina-oct/2")  # a failed canary is removed from the repository

    out = sync.run()

    assert "removed retina-oct/2" in out and "updated models.config" in out
    assert sync.versions("retina-oct") == ["1"]
    assert "retina-oct" in (sync.models / "models.config").read_text()


def test_unserved_versions_and_models_are_removed_locally(sync: Sync) -> None:
    for v in (1, 2):
        sync.publish("retina-fundus", v)
    sync.publish("retina-oct", 4)
    sync.put("models.config", 'model_config_list { config { name: "retina-fundus" model_version_policy { all {} } }\n'
                              ' config { name: "retina-oct" } }\n')
    sync.run()
    assert sync.versions("retina-fundus") == ["1", "2"] and sync.versions("retina-oct") == ["4"]

    # rollback as the deploy step writes it: only version 1 (labelled stable) is served, retina-oct is dropped
    sync.put("models.config", 'model_config_list { config { name: "retina-fundus" model_version_policy '
                              '{ specific { versions: 1 } }\n  version_labels { key: "stable" value: 1 } } }\n')
    sync.publish("retina-fundus", 3)
    out = sync.run()

    assert sync.versions("retina-fundus") == ["1"]  # the newer, complete v3 is not served: not fetched
    assert f"{sync.bucket}/retina-fundus/3/" not in sync.calls.read_text()
    assert "removed retina-fundus/2" in out and "removed retina-oct" in out
    assert not (sync.models / "retina-oct").exists() and not (sync.models / ".staging" / "retina-oct").exists()


def test_a_label_loads_nothing_the_policy_does_not_serve(sync: Sync) -> None:
    """As in TF Serving, labels only name versions: under `latest` a label on an older version fetches it not."""
    for v in (1, 2):
        sync.publish("retina-oct", v)
    sync.put("models.config", 'model_config_list { config { name: "retina-oct" model_version_policy '
                              '{ latest { num_versions: 1 } }\n  version_labels { key: "stable" value: 1 } } }\n')

    sync.run()

    assert sync.versions("retina-oct") == ["2"]
