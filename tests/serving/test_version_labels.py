"""Version labels checked as TF Serving checks them, with the official stubs against the running server.

What TF Serving's source does (model_servers/server_core.cc): `ReloadConfig` sets the new config, then runs
`UpdateModelVersionLabelMap` *before* `AddModelsViaModelConfigList` loads anything. Each label must name a
version that `servable_state_monitor_` reports AVAILABLE at that moment, unless
`force_allow_any_version_labels_for_unavailable_models`, or `allow_version_labels_for_unavailable_models`
and the label map in force does not hold the label on another version (`GetModelVersionForLabel`). Else
FAILED_PRECONDITION "Request to assign label to version V of model M, which is not currently available for
inference": the sources are never updated, so nothing of that config loads and the labels in force stay.
The first config meets nothing available (start-up: main.cc "Failed to start server. Error: <status>"),
and server.cc's `PollFilesystemAndReloadConfig` reloads the file at every poll and logs the error each
time. So a config that loads v2 and moves `stable` from v1 to v2 in one step is refused even with the
flag (server_core_test.cc's AssignLabelToUnavailableVersion and its neighbours test these rules).
Each server here serves TF Serving's half_plus_two (x / 2 + 2), so loads take milliseconds.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import grpc
import pytest

from components.common.processes import free_port, port_free
from serving import protos
from tests.serving.conftest import HALF_PLUS_TWO

pytestmark = pytest.mark.slow
REFUSED = "Request to assign label to version {v} of model m, which is not currently available for inference"


def _versions(root: Path, *versions: int) -> str:
    for version in versions:
        shutil.copytree(HALF_PLUS_TWO, root / "m" / str(version))
    return str(root / "m")


def _entry(base: str, versions: list[int], labels: dict[str, int], name: str = "m"):
    from serving.model_repository import model_entry

    return model_entry(str(Path(base).parent), name, labels=labels, version_policy="specific", versions=versions)


def _proto(*entries):
    protos.load()
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    from serving.model_repository import format_models_config

    return text_format.Parse(format_models_config(list(entries)), model_server_config_pb2.ModelServerConfig())


def _reload(address: str, *entries) -> tuple[str, str]:
    """HandleReloadConfigRequest -> (status code name, message), as TF Serving returns the status."""
    from tensorflow_serving.apis import model_management_pb2, model_service_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        request = model_management_pb2.ReloadConfigRequest(config=_proto(*entries))
        try:
            model_service_pb2_grpc.ModelServiceStub(channel).HandleReloadConfigRequest(request, timeout=60)
        except grpc.RpcError as exc:
            return exc.code().name, exc.details()
    return "OK", ""


def _states(address: str) -> dict[int, str]:
    from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = "m"
        response = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(request, timeout=30)
    name = get_model_status_pb2.ModelVersionStatus.State.Name
    return {s.version: name(s.state) for s in response.model_version_status}


def _by_label(address: str, label: str) -> int:
    """The version a Predict addressed by label ran on (half_plus_two: y = x / 2 + 2 checked too)."""
    protos.load()
    from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    request = predict_pb2.PredictRequest()
    request.model_spec.name, request.model_spec.version_label = "m", label
    request.inputs["x"].CopyFrom(tensor_pb2.TensorProto(
        dtype=types_pb2.DT_FLOAT, float_val=[4.0],
        tensor_shape=tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=1)])))
    with grpc.insecure_channel(address) as channel:
        response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=30)
    assert list(response.outputs["y"].float_val) == [4.0]
    return response.model_spec.version.value


def _start(tmp_path: Path, entries: list, **flags):
    from serving.model_repository import format_models_config
    from serving.options import ServerOptions
    from serving.server import start_server

    config = tmp_path / "models.config"
    config.write_text(format_models_config(entries))
    return start_server(ServerOptions(port=0, model_config_file=str(config), file_system_poll_wait_seconds=0.05,
                                      **flags))


def _write(path: Path, text: str) -> None:
    """Replace the polled file in one rename, as deploy writes it: a poll never reads half a file."""
    part = path.with_suffix(".part")
    part.write_text(text)
    part.replace(path)


def _wait(predicate, what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_a_label_on_a_version_the_same_config_would_load_is_refused_and_nothing_loads(tmp_path):
    """No flag: v2 is not AVAILABLE when the labels are checked, so the config is refused whole: v2 and the
    model `n` it adds are never loaded, and `stable` stays on v1."""
    base = _versions(tmp_path, 1, 2)
    with _start(tmp_path, [_entry(base, [1], {})]) as running:
        assert _reload(running.address, _entry(base, [1], {"stable": 1}))[0] == "OK"
        code, message = _reload(running.address, _entry(base, [1, 2], {"stable": 2}), _entry(base, [2], {}, "n"))
        assert (code, message) == ("FAILED_PRECONDITION", REFUSED.format(v=2))
        time.sleep(0.3)  # several version polls: a refused config's versions must stay unloaded
        assert _states(running.address) == {1: "AVAILABLE"}
        assert running.manager.model("n") is None
        assert _by_label(running.address, "stable") == 1


def test_with_the_flag_a_label_may_not_move_to_a_version_that_is_not_available(tmp_path):
    """`--allow_version_labels_for_unavailable_models` (the cluster's flag) covers a new label or one keeping
    its version; moving `stable` from v1 to a v2 the same config loads is still refused. Loading v2 first and
    moving `stable` once it is AVAILABLE is the accepted way."""
    base = _versions(tmp_path, 1, 2)
    with _start(tmp_path, [_entry(base, [1], {"stable": 1})],
                allow_version_labels_for_unavailable_models=True) as running:
        code, message = _reload(running.address, _entry(base, [1, 2], {"stable": 2}))
        assert (code, message) == ("FAILED_PRECONDITION", REFUSED.format(v=2))
        time.sleep(0.3)
        assert _states(running.address) == {1: "AVAILABLE"}
        assert _by_label(running.address, "stable") == 1
        # a new label on a version not loaded yet, and `stable` kept on v1: accepted, v2 loads
        assert _reload(running.address, _entry(base, [1, 2], {"stable": 1, "canary": 2}))[0] == "OK"
        _wait(lambda: _states(running.address).get(2) == "AVAILABLE", "v2 never loaded")
        assert _by_label(running.address, "canary") == 2
        assert _reload(running.address, _entry(base, [1, 2], {"stable": 2}))[0] == "OK"
        assert _by_label(running.address, "stable") == 2


def test_a_label_kept_on_a_version_no_longer_available_needs_the_flag(tmp_path):
    """`canary` stays on v2 after v2's folder is gone (v2 END): refused without the flag, accepted with it
    (TF Serving asks only whether the label is in force on *another* version)."""
    for allow in (False, True):
        root = tmp_path / str(allow)
        base = _versions(root, 1, 2)
        with _start(root, [_entry(base, [1, 2], {})], allow_version_labels_for_unavailable_models=allow) as running:
            assert _reload(running.address, _entry(base, [1, 2], {"canary": 2}))[0] == "OK"
            shutil.rmtree(root / "m" / "2")
            _wait(lambda r=running: _states(r.address).get(2) == "END", "v2 was never unloaded")
            got = _reload(running.address, _entry(base, [1, 2], {"canary": 2, "stable": 1}))
            assert got == (("OK", "") if allow else ("FAILED_PRECONDITION", REFUSED.format(v=2))), got


def test_force_allows_a_label_on_any_version(tmp_path):
    """`--force_allow_any_version_labels_for_unavailable_models`: even a moved label on a missing version."""
    base = _versions(tmp_path, 1)
    with _start(tmp_path, [_entry(base, [1], {"stable": 1})],
                force_allow_any_version_labels_for_unavailable_models=True) as running:
        assert _reload(running.address, _entry(base, [1], {"stable": 7}))[0] == "OK"
        with pytest.raises(grpc.RpcError) as missing:
            _by_label(running.address, "stable")
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND  # the label names a version not loaded


def test_a_label_in_the_first_config_stops_the_start_up_without_the_flag(tmp_path):
    """Nothing is AVAILABLE when the first config's labels are checked: TF Serving does not start (the very
    reason its flag exists); with the flag the same config starts and the label serves once v1 loads."""
    from serving.model_repository import format_models_config
    from serving.options import ServerOptions
    from serving.server import ServerNotStarted, start_server

    base = _versions(tmp_path, 1)
    config = tmp_path / "models.config"
    config.write_text(format_models_config([_entry(base, [1], {"stable": 1})]))
    port = free_port()
    with pytest.raises(ServerNotStarted) as failure:
        start_server(ServerOptions(port=port, model_config_file=str(config), file_system_poll_wait_seconds=0))
    assert str(failure.value) == "Failed to start server. Error: FAILED_PRECONDITION: " + REFUSED.format(v=1)
    assert port_free(port)
    with _start(tmp_path, [_entry(base, [1], {"stable": 1})],
                allow_version_labels_for_unavailable_models=True) as running:
        assert _by_label(running.address, "stable") == 1


def test_a_polled_file_that_moves_a_label_is_refused_at_every_poll_and_the_old_config_serves(tmp_path, caplog):
    """The cluster's setup (flag on, models.config polled): a one-step push that moves `stable` to a new
    version is logged at each poll and never loads; the two-step push (load, then move) is applied."""
    from serving.model_repository import format_models_config

    base = _versions(tmp_path, 1, 2)
    config = tmp_path / "models.config"
    with _start(tmp_path, [_entry(base, [1], {"stable": 1})], model_config_file_poll_wait_seconds=0.1,
                allow_version_labels_for_unavailable_models=True) as running:
        caplog.set_level(logging.ERROR, logger="serving.server")
        _write(config, format_models_config([_entry(base, [1, 2], {"stable": 2})]))
        _wait(lambda: sum(REFUSED.format(v=2) in r.getMessage() for r in caplog.records) >= 3,
              "the refused file was not logged at each poll")
        assert _states(running.address) == {1: "AVAILABLE"}
        assert _by_label(running.address, "stable") == 1
        _write(config, format_models_config([_entry(base, [1, 2], {"stable": 1})]))  # phase one: load v2
        _wait(lambda: _states(running.address).get(2) == "AVAILABLE", "v2 never loaded")
        _write(config, format_models_config([_entry(base, [1, 2], {"stable": 2})]))  # phase two: move
        _wait(lambda: _by_label(running.address, "stable") == 2, "stable never moved to v2")


def test_the_version_policy_alone_decides_what_loads_a_label_keeps_nothing_loaded(tmp_path):
    """TF Serving's storage path source aspires the policy's versions; a label only names one. Under
    `latest` (one version) a label on v1 with v2 on disk loads nothing for it: the label answers NOT_FOUND
    for Specific(m, 1), as TF Serving's `GetServableHandle` does, and v2 is the only version served."""
    from serving.model_repository import model_entry

    base = _versions(tmp_path, 1, 2)
    entry = model_entry(str(Path(base).parent), "m", labels={"stable": 1})  # default policy: latest, 1 version
    with _start(tmp_path, [entry], allow_version_labels_for_unavailable_models=True) as running:
        _wait(lambda: _states(running.address).get(2) == "AVAILABLE", "v2 never loaded")
        assert _states(running.address) == {2: "AVAILABLE"}
        with pytest.raises(grpc.RpcError) as failure:
            _by_label(running.address, "stable")
        assert failure.value.code() == grpc.StatusCode.NOT_FOUND
        assert failure.value.details() == "Servable not found for request: Specific(m, 1)"
