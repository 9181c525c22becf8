"""The TF Serving pod's model-sync script (infra/k8s/serving/base/model-sync.sh), run by a real shell.

The AWS CLI is not installed here, so `aws s3 sync SRC DST --delete ...` is played by a stand-in
that mirrors a local folder with rsync semantics (what `aws s3 sync --delete` does to the staging
folder). Everything the script itself decides — which versions are complete, the one-rename
publish, removing versions deleted upstream, replacing models.config — runs for real.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "infra" / "k8s" / "serving" / "base" / "model-sync.sh"

STAND_IN_AWS = """#!/bin/sh
# aws s3 sync s3://BUCKET/ DST/ --delete ... -> mirror $FAKE_S3_ROOT/BUCKET into DST
[ "$1 $2" = "s3 sync" ] || exit 2
bucket=${3#s3://}; bucket=${bucket%/}
mkdir -p "$4"
rm -rf "$4"/* "$4"/.[!.]* 2>/dev/null
cp -r "$FAKE_S3_ROOT/$bucket/." "$4"/
find "$4" -path '*_tmp*' -prune -exec rm -rf {} +
"""

BOOTSTRAP = 'model_config_list { config { name: "retina-oct" model_version_policy { all {} } } }\n'


@pytest.fixture
def sync_env(tmp_path: Path):
    if shutil.which("sh") is None:
        pytest.skip("no POSIX shell")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "aws").write_text(STAND_IN_AWS)
    (bin_dir / "aws").chmod(0o755)
    bucket = tmp_path / "s3" / "models"
    bucket.mkdir(parents=True)
    models = tmp_path / "models"
    models.mkdir()
    bootstrap = tmp_path / "bootstrap"
    bootstrap.mkdir()
    # The sync mirrors only the models the config names (h19): the bootstrap serves every retina-oct version.
    (bootstrap / "models.config").write_text(BOOTSTRAP)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "FAKE_S3_ROOT": str(tmp_path / "s3"),
        "MODEL_REPOSITORY": str(models),
        "BOOTSTRAP_CONFIG": str(bootstrap / "models.config"),
    }

    def run() -> str:
        done = subprocess.run(
            ["sh", str(SCRIPT), "--once"], env=env, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    return bucket, models, run


def _publish(bucket: Path, model: str, version: int, complete: bool = True) -> None:
    folder = bucket / model / str(version)
    (folder / "variables").mkdir(parents=True)
    (folder / "variables" / "variables.index").write_bytes(b"x")
    (folder / "saved_model.pb").write_bytes(b"pb")
    if complete:
        (folder / "_SUCCESS").write_bytes(b"")


def test_only_complete_versions_are_published_and_config_bootstraps(sync_env):
    bucket, models, run = sync_env
    _publish(bucket, "retina-oct", 1)
    _publish(bucket, "retina-oct", 2, complete=False)  # still being uploaded
    (bucket / "retina-oct" / "_tmp" / "abc").mkdir(parents=True)

    out = run()

    assert "published retina-oct/1" in out
    assert (models / "retina-oct" / "1" / "saved_model.pb").exists()
    assert not (models / "retina-oct" / "2").exists()
    assert (models / "models.config").read_text() == BOOTSTRAP
    assert not list((models / "retina-oct").glob("*.partial"))


def test_deploy_config_replaces_bootstrap_and_deleted_versions_disappear(sync_env):
    bucket, models, run = sync_env
    _publish(bucket, "retina-oct", 1)
    _publish(bucket, "retina-oct", 2)
    run()
    (bucket / "models.config").write_text('model_config_list { config { name: "retina-oct" } }\n')
    shutil.rmtree(bucket / "retina-oct" / "2")  # a failed canary is removed from the repository

    out = run()

    assert "removed retina-oct/2" in out and "updated models.config" in out
    assert sorted(p.name for p in (models / "retina-oct").iterdir()) == ["1"]
    assert "retina-oct" in (models / "models.config").read_text()
