"""Which worker is the chief, how many workers TF_CONFIG names, and who writes the checkpoint (no TensorFlow)."""

from __future__ import annotations

import json

import pytest

from components.common.errors import RetinaError
from components.train.training import _stage_checkpoint, is_chief, tf_config_workers

CLUSTER = {"worker": ["w0:2222", "w1:2222", "w2:2222"]}


def _set(monkeypatch, cluster: dict | None, task: dict | None) -> None:
    config = {}
    if cluster is not None:
        config["cluster"] = cluster
    if task is not None:
        config["task"] = task
    monkeypatch.setenv("TF_CONFIG", json.dumps(config))


def test_without_tf_config_this_process_is_the_only_worker(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert tf_config_workers() == 0 and is_chief()


@pytest.mark.parametrize(("cluster", "task", "workers", "chief"), [
    (CLUSTER, {"type": "worker", "index": 0}, 3, True),   # no chief task: worker 0 is the chief (TF's rule)
    (CLUSTER, {"type": "worker", "index": 2}, 3, False),
    ({"chief": ["c:2222"], **CLUSTER}, {"type": "chief", "index": 0}, 4, True),
    ({"chief": ["c:2222"], **CLUSTER}, {"type": "worker", "index": 0}, 4, False),  # a chief exists elsewhere
    ({"worker": ["only:2222"]}, {"type": "worker", "index": 0}, 1, True),
])
def test_chief_and_worker_count_follow_tf_config(monkeypatch, cluster, task, workers, chief):
    _set(monkeypatch, cluster, task)
    assert tf_config_workers() == workers
    assert is_chief() is chief


@pytest.mark.parametrize("text", ["{not json", "[1, 2]"])
def test_malformed_tf_config_is_one_clear_error(monkeypatch, text):
    monkeypatch.setenv("TF_CONFIG", text)
    with pytest.raises(RetinaError, match="TF_CONFIG"):
        tf_config_workers()
    with pytest.raises(RetinaError, match="TF_CONFIG"):
        is_chief()


def test_chief_checkpoints_in_place_other_workers_resume_from_a_private_copy(tmp_path):
    shared = tmp_path / "ckpt"
    (shared / "backup").mkdir(parents=True)
    (shared / "backup" / "training_metadata.json").write_text('{"epoch": 2}')

    chief = _stage_checkpoint(str(shared), chief=True)
    assert chief.local == shared and chief.sync_to is None and not chief.private

    other = _stage_checkpoint(str(shared), chief=False)
    assert other.local != shared and other.private and other.sync_to is None
    assert (other.local / "backup" / "training_metadata.json").read_text() == '{"epoch": 2}'
    (other.local / "backup" / "training_metadata.json").write_text('{"epoch": 3}')  # a worker's own write...
    assert (shared / "backup" / "training_metadata.json").read_text() == '{"epoch": 2}'  # ...stays its own
    assert _stage_checkpoint(None) is None


@pytest.mark.stack
def test_s3_checkpoint_is_synced_by_the_chief_only(stack):
    from components.common import storage

    uri = "s3://models/_checkpoints/test-distribution"
    storage.write_text(f"{uri}/backup/training_metadata.json", '{"epoch": 1}')
    chief = _stage_checkpoint(uri, chief=True)
    other = _stage_checkpoint(uri, chief=False)
    assert chief.sync_to == uri and chief.private
    assert other.sync_to is None and other.private
    for staged in (chief, other):
        assert (staged.local / "backup" / "training_metadata.json").read_text() == '{"epoch": 1}'
