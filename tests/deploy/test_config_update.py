"""Two deploys that overlap lose no update to models.config: two real processes hammer one file on SeaweedFS
(conditional PUT) and on local disk (flock), each updating only its own model's entry."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from components.deploy.config_update import merge

WORKER = """
import sys, time
from components.deploy.config_update import CONFLICTS, update_entry
from serving.model_repository import model_entry
config_uri, name, rounds, start_at = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
while time.time() < start_at:
    time.sleep(0.001)
for i in range(1, rounds + 1):
    update_entry(config_uri, name, lambda old, i=i: model_entry("/models", name, labels={"stable": i},
                                                                  version_policy="specific", versions=[i]))
print("conflicts", CONFLICTS["count"])
"""


def _entries(text: str) -> list:
    from serving.model_repository import parse_models_config

    return parse_models_config(text)


def test_merge_replaces_only_this_models_entry() -> None:
    from serving.model_repository import model_entry

    a, b = model_entry("/m", "a", labels={"stable": 1}), model_entry("/m", "b", labels={"stable": 4})
    merged = merge([a, b], "a", model_entry("/m", "a", labels={"stable": 2}))
    assert [(e.name, e.labels) for e in merged] == [("a", {"stable": 2}), ("b", {"stable": 4})]
    assert [e.name for e in merge([a, b], "a", None)] == ["b"]
    assert [e.name for e in merge([b], "c", a)] == ["b", "a"]


def _race(config_uri: str, rounds: int, env: dict[str, str]) -> list[str]:
    start_at = time.time() + 3.0  # both interpreters are up and spinning before the first write
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, config_uri, name, str(rounds), str(start_at)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name in ("retina-fundus", "retina-oct")]
    outs = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-2000:]
        outs.append(out)
    return outs


@pytest.mark.stack
@pytest.mark.slow
def test_concurrent_deploys_on_seaweedfs_keep_both_entries(stack, tmp_path: Path) -> None:
    from components.common import storage

    config_uri = f"s3://models/concurrent-{tmp_path.name}/models.config"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    outs = _race(config_uri, 25, env)
    final = {e.name: e.labels for e in _entries(storage.read_text(config_uri))}
    assert final == {"retina-fundus": {"stable": 25}, "retina-oct": {"stable": 25}}, (final, outs)
    print("conditional PUTs refused and retried:", outs)


def test_concurrent_deploys_on_local_disk_keep_both_entries(tmp_path: Path) -> None:
    config_uri = str(tmp_path / "repo" / "models.config")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    _race(config_uri, 25, env)
    final = {e.name: e.labels for e in _entries(Path(config_uri).read_text())}
    assert final == {"retina-fundus": {"stable": 25}, "retina-oct": {"stable": 25}}
