"""The serving pod's model sync mirrors only what models.config serves (infra/k8s/serving/base/model-sync.sh).

The script runs in a real shell; `aws s3 sync` is played by a stand-in that honours the bucket prefix and
the `--exclude "*" --include models.config` filter the script uses to fetch only the config.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "infra" / "k8s" / "serving" / "base" / "model-sync.sh"

STAND_IN_AWS = """#!/bin/sh
# aws s3 sync s3://BUCKET[/PREFIX]/ DST/ [--exclude "*" --include NAME] ... ; logs each call
[ "$1 $2" = "s3 sync" ] || exit 2
echo "$3" >> "$FAKE_S3_ROOT/calls.log"
src=${3#s3://}; src=${src%/}
mkdir -p "$4"
if [ "$5" = "--exclude" ] && [ "$7" = "--include" ]; then
  [ -e "$FAKE_S3_ROOT/$src/$8" ] && cp "$FAKE_S3_ROOT/$src/$8" "$4/$8"
  exit 0
fi
rm -rf "$4"/* 2>/dev/null
[ -d "$FAKE_S3_ROOT/$src" ] && cp -r "$FAKE_S3_ROOT/$src/." "$4"/
exit 0
"""


@pytest.fixture
def sync(tmp_path: Path):
    if shutil.which("sh") is None or shutil.which("awk") is None:
        pytest.skip("no POSIX shell / awk")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "aws").write_text(STAND_IN_AWS)
    (bin_dir / "aws").chmod(0o755)
    bucket = tmp_path / "s3" / "models"
    bucket.mkdir(parents=True)
    models = tmp_path / "models"
    models.mkdir()
    (tmp_path / "bootstrap.config").write_text("model_config_list {}\n")
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_S3_ROOT": str(tmp_path / "s3"),
           "MODEL_REPOSITORY": str(models), "BOOTSTRAP_CONFIG": str(tmp_path / "bootstrap.config")}

    def run() -> str:
        done = subprocess.run(["sh", str(SCRIPT), "--once"], env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout

    return bucket, models, run, tmp_path / "s3" / "calls.log"


def _publish(bucket: Path, model: str, version: int) -> None:
    folder = bucket / model / str(version)
    folder.mkdir(parents=True)
    (folder / "saved_model.pb").write_bytes(b"pb")
    (folder / "_SUCCESS").write_bytes(b"")


def _versions(models: Path, model: str) -> list[str]:
    return sorted(p.name for p in (models / model).iterdir()) if (models / model).exists() else []


def test_only_named_models_and_served_versions_are_mirrored(sync):
    bucket, models, run, calls = sync
    for v in (1, 2, 3):
        _publish(bucket, "retina-fundus", v)
    _publish(bucket, "retina-oct", 1)
    (bucket / "training-runs" / "run-1" / "checkpoints").mkdir(parents=True)  # must never be copied
    (bucket / "models.config").write_text(
        'model_config_list {\n config { name: "retina-fundus" base_path: "/models/retina-fundus"\n'
        '  model_version_policy { specific { versions: 2 versions: 3 } }\n'
        '  version_labels { key: "stable" value: 2 } version_labels { key: "canary" value: 3 } }\n}\n')

    out = run()

    assert _versions(models, "retina-fundus") == ["2", "3"] and "published retina-fundus/3" in out
    assert not (models / "retina-oct").exists() and not (models / "training-runs").exists()
    assert "s3://models/training-runs/" not in calls.read_text()  # the bucket's other folders are not even listed
    assert "retina-fundus" in (models / "models.config").read_text()


def test_unserved_versions_and_models_are_removed_locally(sync):
    bucket, models, run, _ = sync
    for v in (1, 2):
        _publish(bucket, "retina-fundus", v)
    _publish(bucket, "retina-oct", 4)
    both = ('model_config_list { config { name: "retina-fundus" model_version_policy { all {} } }\n'
            ' config { name: "retina-oct" } }\n')
    (bucket / "models.config").write_text(both)
    run()
    assert _versions(models, "retina-fundus") == ["1", "2"] and _versions(models, "retina-oct") == ["4"]

    # rollback: only version 1 (labelled stable) is served, retina-oct is dropped from the config
    (bucket / "models.config").write_text(
        'model_config_list { config { name: "retina-fundus" model_version_policy { latest { num_versions: 1 } }\n'
        '  version_labels { key: "stable" value: 1 } } }\n')
    _publish(bucket, "retina-fundus", 3)
    out = run()

    assert _versions(models, "retina-fundus") == ["1", "3"]  # newest + labelled
    assert "removed retina-fundus/2" in out and "removed retina-oct" in out
    assert not (models / "retina-oct").exists() and not (models / ".staging" / "retina-oct").exists()
