"""The pieces of deploy that need no registry or server: config entries, canary image, result parsing."""

from __future__ import annotations

import numpy as np
import pytest

from components.deploy.deployment import (
    DeployError,
    _probabilities,
    _status_states,
    canary_image,
    loading_entry,
    move_stable,
    promoted_entry,
    refuse_unloaded_move,
    server_replicas,
)


def test_promoted_entry_moves_stable_and_keeps_the_previous_version_loaded():
    entry = promoted_entry("retina-oct", "/models", 3, previous=2)
    assert entry.labels == {"stable": 3}
    assert entry.versions == [2, 3]
    assert promoted_entry("retina-oct", "/models", 1, previous=None).versions == [1]
    # TF Serving answers requests that name no version with the highest loaded one: a newer previous
    # version (pushing an older one back) must not stay loaded, or it would keep the default traffic
    older = promoted_entry("retina-oct", "/models", 2, previous=5)
    assert older.versions == [2] and older.labels == {"stable": 2}


def test_without_a_server_stable_never_moves_to_a_version_the_config_does_not_load():
    """TF Serving (server_core.cc `UpdateModelVersionLabelMap`, run before the new config loads anything)
    refuses a config that moves `stable` to a version not AVAILABLE yet, even with
    --allow_version_labels_for_unavailable_models: without a server address such a move is never written."""
    stable_on_1 = promoted_entry("m", "/models", 1, previous=None)
    refuse_unloaded_move(None, "m", 1)  # first deploy: a new label is accepted with the cluster's flag
    refuse_unloaded_move(stable_on_1, "m", 1)  # the label keeps its version
    with pytest.raises(DeployError, match=r"moving `stable` from v1 to v2 needs the production model server"):
        refuse_unloaded_move(stable_on_1, "m", 2)
    # a rollback target the entry still loads (kept for quick rollback) is AVAILABLE on the server
    stable_on_2 = promoted_entry("m", "/models", 2, previous=1)
    refuse_unloaded_move(stable_on_2, "m", 1, loaded_ok=True)
    with pytest.raises(DeployError):
        refuse_unloaded_move(stable_on_2, "m", 1)
    with pytest.raises(DeployError):
        refuse_unloaded_move(promoted_entry("m", "/models", 3, previous=2), "m", 1, loaded_ok=True)


def test_move_stable_without_a_server_leaves_a_refused_config_untouched(tmp_path):
    from serving.model_repository import read_models_config, write_models_config

    config = str(tmp_path / "models.config")
    other = promoted_entry("other", "/models", 4, previous=None)
    write_models_config(config, [promoted_entry("m", "/models", 1, previous=None), other])
    before = (tmp_path / "models.config").read_text()
    with pytest.raises(DeployError):
        move_stable(config, "m", "/models", 2)
    assert (tmp_path / "models.config").read_text() == before
    move_stable(config, "new", "/models", 1)  # a first deploy of another model is written
    assert {e.name: e.labels for e in read_models_config(config)} == {
        "m": {"stable": 1}, "other": {"stable": 4}, "new": {"stable": 1}}


def test_a_push_without_an_address_uses_the_clusters_server_address(tmp_path, monkeypatch):
    """On the cluster the push step gets RETINA_SERVING_ADDRESS from the retina-endpoints ConfigMap: the
    push loads the version there first. Here nothing listens: the push times out, the entry is restored and
    the folder it published is removed (not refused for want of an address)."""
    from components.common.processes import free_port
    from components.deploy.deployment import CanaryFailed, push_version
    from serving.model_repository import read_models_config, write_models_config

    source = tmp_path / "export"
    source.mkdir()
    (source / "saved_model.pb").write_bytes(b"only published, never loaded here")
    base = tmp_path / "repo"
    write_models_config(str(base / "models.config"), [promoted_entry("m", str(base), 1, previous=None)])
    monkeypatch.setenv("RETINA_SERVING_ADDRESS", f"127.0.0.1:{free_port()}")
    with pytest.raises(CanaryFailed, match="m version 2 not AVAILABLE on the server after 1s"):
        push_version("m", 2, source, str(base), timeout_s=1.0)
    assert [e.labels for e in read_models_config(str(base / "models.config"))] == [{"stable": 1}]
    assert not (base / "m" / "2").exists()
    monkeypatch.delenv("RETINA_SERVING_ADDRESS")
    with pytest.raises(DeployError, match="needs the production model server's address"):
        push_version("m", 2, source, str(base))
    assert not (base / "m" / "2").exists()


def test_server_replicas_lists_each_server_a_push_must_wait_for():
    """A comma-separated list is every replica; a name with one address (a ClusterIP Service, loopback) is
    kept as given; a unix socket or an unresolvable name is passed on for the client to report."""
    assert server_replicas("10.0.0.1:8500, 10.0.0.2:8500") == ["10.0.0.1:8500", "10.0.0.2:8500"]
    assert server_replicas("127.0.0.1:8500") == ["127.0.0.1:8500"]
    assert server_replicas("unix:/tmp/tf.sock") == ["unix:/tmp/tf.sock"]
    assert server_replicas("no-such-host.invalid:8500") == ["no-such-host.invalid:8500"]


def test_phase_one_of_a_served_push_never_moves_a_label():
    """The two-phase push's first config keeps `stable` where it is and only adds the new version."""
    entry = loading_entry("m", "/models", 2, stable=1)
    assert entry.labels == {"stable": 1} and entry.versions == [1, 2]
    assert loading_entry("m", "/models", 1, stable=None).labels == {}


def test_canary_image_is_a_decodable_colour_png():
    import cv2

    decoded = cv2.imdecode(np.frombuffer(canary_image(48), np.uint8), cv2.IMREAD_UNCHANGED)
    assert decoded.shape == (48, 48, 3)
    assert decoded.std() > 10  # not a flat image: preprocessing has something to normalise


@pytest.mark.parametrize(
    "result",
    [
        [[0.1, 0.2, 0.3, 0.4]],
        np.array([[0.1, 0.2, 0.3, 0.4]]),
        {"probabilities": [[0.1, 0.2, 0.3, 0.4]]},
        [{"probabilities": [0.1, 0.2, 0.3, 0.4], "class_id": 3}],
    ],
)
def test_probabilities_are_read_from_any_client_result_shape(result):
    assert _probabilities(result) == pytest.approx([0.1, 0.2, 0.3, 0.4])


def test_status_states_reads_the_official_proto():
    from tensorflow_serving.apis import get_model_status_pb2

    response = get_model_status_pb2.GetModelStatusResponse()
    available = response.model_version_status.add()
    available.version, available.state = 2, get_model_status_pb2.ModelVersionStatus.AVAILABLE
    failed = response.model_version_status.add()
    failed.version, failed.state = 3, get_model_status_pb2.ModelVersionStatus.END
    failed.status.error_message = "cannot parse saved_model.pb"
    assert _status_states(response, 2) == [("AVAILABLE", "")]
    assert _status_states(response, 3) == [("END", "cannot parse saved_model.pb")]
    assert _status_states(response, 4) == []
