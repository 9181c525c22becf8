"""Guards of the push path against a real local model server, SeaweedFS and MLflow: a staged candidate gets
no default traffic, a version folder is reused only when its content matches, a killed upload is invisible,
and rollback moves both pointers back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from components.common import storage
from components.deploy.deployment import DeployError, publish_version, push_version

pytestmark = [pytest.mark.stack, pytest.mark.slow]


def _start(config_uri: str):
    from serving.server import start_server

    # started as the cluster starts TF Serving: a config naming `stable` loads only with the flag
    return start_server(model_config_file=config_uri, poll_interval_s=0.2,
                        allow_version_labels_for_unavailable_models=True)


def test_zero_default_requests_reach_a_staged_candidate(stack, tiny_model_dir, make_model_dir, exported,
                                                         model_name, tmp_path):
    """TF Serving sends a request that names no version to the highest loaded version; the candidate v2 is
    staged and loaded only in a private server, so 1,000 such requests to production all get `stable` v1."""
    from concurrent.futures import ThreadPoolExecutor

    from serving.client import ServingClient
    from serving.server import start_server

    base = f"s3://models/guards-{model_name}"
    push_version(model_name, 1, exported(tiny_model_dir), base)
    production = _start(storage.join(base, "models.config"))
    staged = storage.join(base, "_staging", "run-1", model_name, "2")
    storage.publish_folder(exported(make_model_dir(tmp_path / "v2", seed=1)), staged, last=["saved_model.pb"])
    private = start_server(model_base_path=storage.parent(staged), model_name=model_name, port=0, poll_interval_s=0)
    try:
        batch = np.zeros((1, 32, 32, 3), np.float32)
        with ServingClient(private.address) as client:  # the candidate is up and answering privately
            assert int(client.predict(model_name, {"images": batch})["_version"]) == 2
        with ServingClient(production.address) as client:
            def default_request(_: int) -> int:
                return int(client.predict(model_name, {"images": batch}, signature="serving_default")["_version"])

            with ThreadPoolExecutor(8) as pool:
                served = list(pool.map(default_request, range(1000)))
            assert served.count(1) == 1000
            assert [s["version"] for s in client.model_status(model_name)] == [1]
    finally:
        private.stop()
        production.stop()


def test_stable_moves_only_once_every_replica_has_loaded_the_new_version(tiny_model_dir, make_model_dir, exported,
                                                                         tmp_path):
    """Two TF Serving replicas poll one models.config on their own. A replica that has not loaded v2 when
    `stable` moves refuses that config at every poll (label moved to a version not AVAILABLE), so phase two
    waits for every replica named: here a second one that reads another repository never loads v2, and the
    push fails with the previous entry restored; with two replicas of the repository both take `stable`."""
    from components.deploy.deployment import CanaryFailed
    from serving.model_repository import read_models_config, write_models_config

    base = str(tmp_path / "repo")
    config = storage.join(base, "models.config")
    push_version("m", 1, exported(tiny_model_dir), base)  # first deploy: a new label, no server needed
    write_models_config(str(tmp_path / "elsewhere.config"), [])
    replicas = [_start(config), _start(config), _start(str(tmp_path / "elsewhere.config"))]
    try:
        v2 = exported(make_model_dir(tmp_path / "v2", seed=1))
        # the replica that never loads v2 is asked first, so its refusal is what the push reports whatever
        # the load on the machine (one that is merely slow would be named after a short deadline too)
        stale = f"{replicas[2].address},{replicas[0].address}"
        with pytest.raises(CanaryFailed, match=rf"m version 2 not AVAILABLE .*\[replica {replicas[2].address}\]"):
            push_version("m", 2, v2, base, server_address=stale, timeout_s=5)
        assert [(e.labels, e.versions) for e in read_models_config(config)] == [({"stable": 1}, [1])]
        assert not storage.exists(storage.join(base, "m", "2"))
        push_version("m", 2, v2, base, server_address=f"{replicas[0].address},{replicas[1].address}", timeout_s=60)
        for replica in replicas[:2]:  # phase two is confirmed on each replica before the push returns
            assert replica.manager.model("m").labels == {"stable": 2}
    finally:
        for replica in replicas:
            replica.stop()


def test_a_replica_that_never_takes_the_moved_label_fails_the_push_and_restores_stable(
        tiny_model_dir, make_model_dir, exported, tmp_path):
    """Phase two is confirmed too: each replica must resolve `stable` to the new version (GetModelMetadata by
    label). One that loads v2 from the repository but never applies models.config (here: started on the model
    folder alone) fails the push; the previous entry is restored and the version folder removed."""
    from components.deploy.deployment import CanaryFailed
    from serving.model_repository import read_models_config
    from serving.server import start_server

    base = str(tmp_path / "repo")
    config = storage.join(base, "models.config")
    push_version("m", 1, exported(tiny_model_dir), base)
    good = _start(config)
    deaf = start_server(model_base_path=storage.join(base, "m"), model_name="m", port=0, poll_interval_s=0.2)
    try:
        v2 = exported(make_model_dir(tmp_path / "v2", seed=1))
        # phase one needs v2 loaded on both (a deadline that a loaded machine meets); phase two asks `deaf` first
        with pytest.raises(CanaryFailed, match=rf"m label 'stable' not on version 2 .*\[replica {deaf.address}\]"):
            push_version("m", 2, v2, base, server_address=f"{deaf.address},{good.address}", timeout_s=20)
        assert [(e.labels, e.versions) for e in read_models_config(config)] == [({"stable": 1}, [1])]
        assert not storage.exists(storage.join(base, "m", "2"))
        _wait(lambda: good.manager.model("m").labels == {"stable": 1})
    finally:
        good.stop()
        deaf.stop()


def test_existing_version_folder_is_reused_only_when_its_content_matches(tiny_model_dir, make_model_dir, exported,
                                                                          tmp_path, stack):
    base = f"s3://models/reuse-{tmp_path.name}"
    first = exported(tiny_model_dir)
    version_uri = storage.join(base, "m", "1")
    assert publish_version(first, version_uri) is True
    assert publish_version(first, version_uri) is False  # a retried push: same bytes, reused
    assert publish_version(exported(tiny_model_dir), version_uri) is False  # same weights exported again
    other = exported(make_model_dir(tmp_path / "other", seed=5))
    with pytest.raises(DeployError, match="already holds a different SavedModel"):
        publish_version(other, version_uri)


def test_a_killed_upload_is_invisible_and_the_retry_replaces_it(tiny_model_dir, exported, tmp_path, stack):
    """A push killed mid-copy leaves files but no saved_model.pb (copied last): servers never list it, and
    the retried push replaces the leftovers."""
    from serving.model_repository import list_versions

    base = f"s3://models/killed-{tmp_path.name}"
    source = exported(tiny_model_dir)
    version_uri = storage.join(base, "m", "3")
    for path in sorted(p for p in Path(source).rglob("*") if p.is_file() and p.name != "saved_model.pb")[:2]:
        storage.copy(str(path), storage.join(version_uri, path.relative_to(source).as_posix()))
    assert list_versions(base, "m") == []
    assert publish_version(source, version_uri) is True
    assert list_versions(base, "m") == [3] and storage.is_published(version_uri)


def test_rollback_restores_champion_and_stable(stack, register_challenger_version, make_model_dir, exported,
                                               model_name, tmp_path, capsys):
    """Two pushes to a running production server (started as the cluster's TF Serving, with
    --allow_version_labels_for_unavailable_models), a third push without the server's address, then two
    rollbacks. The second push names the server: moving `stable` from v1 to a v2 the server has not loaded
    is refused by TF Serving even with the flag, so it loads v2 first. The third is refused before it
    publishes anything, champion unchanged; the rollback needs no address, v1 being still loaded."""
    from components.cli import main
    from components.common.checks import Check
    from components.deploy.push import PushConfig, bless_and_push
    from serving.model_repository import read_models_config, write_models_config

    base = str(tmp_path / "repo")
    config = storage.join(base, "models.config")
    passing = [Check.compare("evaluate", "qwk_floor", 0.5, ">=", 0.1)]
    champion = ""
    versions = [register_challenger_version(make_model_dir(tmp_path / f"m{seed}", seed=seed)) for seed in (0, 1, 2)]
    write_models_config(config, [])  # the production server runs before the first push
    production = _start(config)
    try:
        for seed, version in enumerate(versions[:2]):
            cfg = PushConfig(model_name, version, str(exported(tmp_path / f"m{seed}")), base, champion_uri=champion,
                             server_address=production.address, timeout_s=60)
            assert bless_and_push(cfg, passing).promoted
            champion = version
        [entry] = [e for e in read_models_config(config) if e.name == model_name]
        assert entry.labels == {"stable": 2} and entry.versions == [1, 2]
        _wait(lambda: production.manager.model(model_name).labels == {"stable": 2})  # the server took it

        blind = PushConfig(model_name, versions[2], str(exported(tmp_path / "m2")), base, champion_uri=champion)
        with pytest.raises(DeployError, match="moving `stable` from v2 to v3 needs the production model server"):
            bless_and_push(blind, passing)
        from mlflow import MlflowClient

        assert MlflowClient().get_model_version_by_alias(model_name, "champion").version == "2"
        tags = MlflowClient().get_model_version(model_name, versions[2]).tags  # not called blessed: never served
        assert (tags["retina.blessed"], tags["retina.promotion"]) == ("false", "challenger")
        reason = tags["retina.promotion_reason"]
        assert reason.startswith("passed every check, but the push failed: ") and "moving `stable`" in reason
        assert "retina.blessed_at" not in tags
        assert not storage.exists(storage.join(base, model_name, "3"))
        assert {e.name: e.labels for e in read_models_config(config)}[model_name] == {"stable": 2}

        capsys.readouterr()
        assert main(["rollback", "--model", model_name, "--serving-base", base]) == 0
        assert "v2 -> v1" in capsys.readouterr().out
        assert MlflowClient().get_model_version_by_alias(model_name, "champion").version == "1"
        [entry] = [e for e in read_models_config(config) if e.name == model_name]
        assert entry.labels == {"stable": 1} and entry.versions == [1]  # v2 unloaded: no default traffic to it
        _wait(lambda: production.manager.model(model_name).labels == {"stable": 1})
        assert main(["rollback", "--model", model_name, "--serving-base", base]) == 2  # nothing before v1
        assert "nothing to roll back to" in capsys.readouterr().err
    finally:
        production.stop()


def _wait(predicate, timeout_s: float = 30.0) -> None:
    import time

    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "the production server never applied models.config"
        time.sleep(0.1)
