"""ModelService.HandleReloadConfigRequest as TF Serving answers it, checked with the official stubs.

What TF Serving's source does (model_servers/model_service_impl.cc, server_core.cc):
- only a `model_config_list` is accepted; any other config (none, custom) is INVALID_ARGUMENT
  "ServerModelConfig type not supported by HandleReloadConfigRequest. Only ModelConfigList is ...";
- `ValidateModelConfigList`: a model listed twice, or a relative base path, is INVALID_ARGUMENT and
  nothing changes; `CreateStoragePathRoutes`: an unknown platform is INVALID_ARGUMENT;
- `AddModelsViaModelConfigList` (a config after the first): removed models are unloaded without waiting;
  then the call waits (`WaitUntilModelsAvailable`, no timeout) until every model *new to the config*
  has a version AVAILABLE or ended in an error (after the load retries), and returns UNKNOWN
  "N model(s) did not become available: {{{name: m version: v} due to error: ...}, }" otherwise. A new
  model without any version folder keeps the call waiting: a client with a deadline sees
  DEADLINE_EXCEEDED, and the model is still picked up once a version appears.
Each server here serves TF Serving's half_plus_two, so loads take milliseconds.
"""

from __future__ import annotations

import shutil
import threading
import time

import grpc
import pytest

from serving import protos
from tests.serving.conftest import broken_model as _broken
from tests.serving.conftest import good_model as _good

pytestmark = pytest.mark.slow


def _config(*models: tuple[str, str], platform: str = "tensorflow"):
    protos.load()
    from tensorflow_serving.config import model_server_config_pb2

    config = model_server_config_pb2.ModelServerConfig()
    config.model_config_list.SetInParent()
    for name, base_path in models:
        entry = config.model_config_list.config.add()
        entry.name, entry.base_path, entry.model_platform = name, base_path, platform
    return config


def _reload(address: str, config, timeout: float = 60.0, metric_names: tuple[str, ...] = ()):
    from tensorflow_serving.apis import model_management_pb2, model_service_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        request = model_management_pb2.ReloadConfigRequest(metric_names=list(metric_names))
        if config is not None:
            request.config.CopyFrom(config)
        return stub.HandleReloadConfigRequest(request, timeout=timeout)


def _states(address: str, name: str) -> dict[int, tuple[str, str]]:
    from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = name
        response = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(request, timeout=30)
    state_name = get_model_status_pb2.ModelVersionStatus.State.Name
    return {s.version: (state_name(s.state), s.status.error_message) for s in response.model_version_status}


@pytest.fixture
def server(tmp_path):
    """`good` (version 1) served from a config; polls every 50 ms; two quick load retries."""
    from serving.model_repository import ModelEntry, format_models_config
    from serving.options import ServerOptions
    from serving.server import start_server

    _good(tmp_path / "good" / "1")
    config = tmp_path / "models.config"
    config.write_text(format_models_config([ModelEntry("good", str(tmp_path / "good"))]))
    options = ServerOptions(port=0, model_config_file=str(config), file_system_poll_wait_seconds=0.05,
                            max_num_load_retries=2, load_retry_interval_micros=300_000)
    with start_server(options) as running:
        yield running


def test_a_new_model_is_available_when_the_reload_returns(server, tmp_path):
    _good(tmp_path / "added" / "7")
    loads = "/tensorflow/cc/saved_model/load_attempt_count"
    response = _reload(server.address, _config(("good", str(tmp_path / "good")), ("added", str(tmp_path / "added"))),
                       metric_names=(loads, "/no/such/metric"))
    assert response.status.error_code == 0
    assert _states(server.address, "added") == {7: ("AVAILABLE", "")}
    # model_service_impl.cc RecordMetricsIncrease: each named metric's growth during the call
    assert {m.name: m.int64_value_increase for m in response.metric} == {loads: 1, "/no/such/metric": 0}


def test_a_new_model_loading_on_a_retry_is_waited_for(server, tmp_path):
    """The first load fails, the folder is repaired before the retry: the call returns OK after it."""
    _broken(tmp_path / "added" / "3")

    def repair() -> None:  # after the first attempt failed, before the retry is due
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            served = server.manager.model("added")
            if served is not None and served.states.get(3) is not None and served.states[3].error_message:
                break
            time.sleep(0.01)
        shutil.rmtree(tmp_path / "added" / "3")
        _good(tmp_path / "added" / ".3.tmp").rename(tmp_path / "added" / "3")

    fixer = threading.Thread(target=repair)
    fixer.start()
    started = time.monotonic()
    _reload(server.address, _config(("good", str(tmp_path / "good")), ("added", str(tmp_path / "added"))))
    fixer.join()
    assert time.monotonic() - started >= 0.25  # the call waited for the retry, 300 ms after the failure
    assert _states(server.address, "added") == {3: ("AVAILABLE", "")}


def test_a_new_model_failing_after_its_retries_is_the_calls_error(server, tmp_path):
    _broken(tmp_path / "bad" / "5")
    with pytest.raises(grpc.RpcError) as failed:
        _reload(server.address, _config(("good", str(tmp_path / "good")), ("bad", str(tmp_path / "bad"))))
    assert failed.value.code() == grpc.StatusCode.UNKNOWN
    cannot_parse = f"Can't parse {tmp_path / 'bad' / '5' / 'saved_model.pb'} as binary proto"  # TF's reader
    assert failed.value.details() == ("1 model(s) did not become available: {{{name: bad version: 5} due to "
                                      f"error: DATA_LOSS: {cannot_parse}}}, }}")
    assert _states(server.address, "bad")[5] == ("END", cannot_parse)  # the config was applied: its error shows
    assert _states(server.address, "good") == {1: ("AVAILABLE", "")}
    # the same config again: `bad` is no longer new, so nothing is waited for
    assert _reload(server.address, _config(("good", str(tmp_path / "good")),
                                           ("bad", str(tmp_path / "bad")))).status.error_code == 0


def test_a_new_model_without_versions_keeps_the_call_waiting(server, tmp_path):
    (tmp_path / "later").mkdir()
    config = _config(("good", str(tmp_path / "good")), ("later", str(tmp_path / "later")))
    with pytest.raises(grpc.RpcError) as waited:
        _reload(server.address, config, timeout=1.0)
    assert waited.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # the caller gone, the server stops waiting for it (TF Serving would hold its config lock until a
    # version loads): the same config again is not new and returns at once, and no thread is left waiting
    assert _reload(server.address, config, timeout=10).status.error_code == 0
    _good(tmp_path / "good" / ".2.tmp").rename(tmp_path / "good" / "2")  # polling goes on meanwhile
    _good(tmp_path / "later" / ".4.tmp").rename(tmp_path / "later" / "4")
    deadline = time.monotonic() + 60
    while _states(server.address, "good").get(2, ("",))[0] != "AVAILABLE" \
            or server.manager.model("later") is None or 4 not in server.manager.model("later").versions:
        assert time.monotonic() < deadline, "the versions were never picked up"
        time.sleep(0.05)
    assert _reload(server.address, config, timeout=10).status.error_code == 0


def test_identical_config_and_removed_model_return_at_once(server, tmp_path):
    config = _config(("good", str(tmp_path / "good")))
    assert _reload(server.address, config).status.error_code == 0
    assert _reload(server.address, _config()).status.error_code == 0  # an empty list: unload everything
    deadline = time.monotonic() + 30
    while server.manager.model("good") is not None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    with pytest.raises(grpc.RpcError) as gone:
        _states(server.address, "good")
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(("case", "message"), [
    ("none", "ServerModelConfig type not supported by HandleReloadConfigRequest. Only ModelConfigList is "
             "currently supported"),
    ("custom", "ServerModelConfig type not supported by HandleReloadConfigRequest. Only ModelConfigList is "
               "currently supported"),
    ("twice", "Illegal to list model good multiple times in config list"),
    ("relative", "Expected model rel to have an absolute path or URI; got base_path()=models/rel"),
    ("platform", "Model good requests unsupported platform pytorch"),
])
def test_an_invalid_config_is_invalid_argument_and_changes_nothing(server, tmp_path, case, message):
    good = str(tmp_path / "good")
    config = {"none": None, "twice": _config(("good", good), ("good", good)),
              "relative": _config(("good", good), ("rel", "models/rel")),
              "platform": _config(("good", good), platform="pytorch"), "custom": _config()}[case]
    if case == "custom":
        config.custom_model_config.SetInParent()
    with pytest.raises(grpc.RpcError) as refused:
        _reload(server.address, config)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details() == message
    assert _states(server.address, "good") == {1: ("AVAILABLE", "")}


def test_a_moved_model_unloads_the_versions_of_its_old_base_path(server, tmp_path):
    """Not waited for (the model is not new), but the versions read from the old folder are closed."""
    old = server.manager.model("good").versions[1]
    _good(tmp_path / "moved" / "2")
    assert _reload(server.address, _config(("good", str(tmp_path / "moved")))).status.error_code == 0
    deadline = time.monotonic() + 30
    while not old.closed:
        assert time.monotonic() < deadline, "the version from the old base path was never unloaded"
        time.sleep(0.05)
    assert sorted(server.manager.model("good").versions) == [2]


def test_a_polled_config_file_reverts_a_reload_at_its_next_poll(tmp_path):
    """TF Serving's server.cc reloads `--model_config_file` at every poll, changed or not: a config sent
    with HandleReloadConfigRequest lasts until the next poll."""
    from serving.model_repository import ModelEntry, format_models_config
    from serving.options import ServerOptions
    from serving.server import start_server

    _good(tmp_path / "good" / "1")
    _good(tmp_path / "other" / "1")
    config = tmp_path / "models.config"
    config.write_text(format_models_config([ModelEntry("good", str(tmp_path / "good"))]))
    options = ServerOptions(port=0, model_config_file=str(config), file_system_poll_wait_seconds=0.05,
                            model_config_file_poll_wait_seconds=0.3)
    with start_server(options) as running:
        _reload(running.address, _config(("other", str(tmp_path / "other"))))
        assert [e.name for e in running.manager.entries()] == ["other"]
        deadline = time.monotonic() + 30
        while [e.name for e in running.manager.entries()] != ["good"]:
            assert time.monotonic() < deadline, "the polled config file never took over again"
            time.sleep(0.05)
        assert _states(running.address, "good") == {1: ("AVAILABLE", "")}


def test_a_polled_file_that_sets_no_config_is_refused_and_an_empty_list_is_not(tmp_path, caplog):
    """server_core.cc `ReloadConfig` accepts only a ModelConfigList after a ModelConfigList: an empty file
    (say, one caught half-written) is FAILED_PRECONDITION and every model keeps serving; an explicit
    `model_config_list {}` is a list, and removes them."""
    import logging

    from serving.model_repository import ModelEntry, format_models_config
    from serving.options import ServerOptions
    from serving.server import start_server

    _good(tmp_path / "good" / "1")
    config = tmp_path / "models.config"
    config.write_text(format_models_config([ModelEntry("good", str(tmp_path / "good"))]))
    options = ServerOptions(port=0, model_config_file=str(config), file_system_poll_wait_seconds=0.05,
                            model_config_file_poll_wait_seconds=0.1)
    with start_server(options) as running:
        caplog.set_level(logging.ERROR, logger="serving.server")
        config.write_text("")
        refused = ("Cannot transition to requested config. It is only legal to transition from one "
                   "ModelConfigList to another.")
        deadline = time.monotonic() + 30
        while sum(refused in r.getMessage() for r in caplog.records) < 2:
            assert time.monotonic() < deadline, "the empty file was not refused at each poll"
            time.sleep(0.05)
        assert _states(running.address, "good") == {1: ("AVAILABLE", "")}
        config.write_text("model_config_list {}\n")
        while running.manager.entries():
            assert time.monotonic() < deadline + 30, "an empty ModelConfigList never applied"
            time.sleep(0.05)
