"""Start-up as TF Serving's: the server refuses to start when a model's initial version still fails after
its load retries (`ConnectSourcesWithFastInitialLoad` in core/load_servables_fast.cc: "N servable(s) did
not become available: {{{name: m version: 1} due to error: ...}, }"; main.cc prints "Failed to start
server. Error: <status>" and exits non-zero), leaving no port open and no download cache behind. A model
without versions yet is waited for, not an error; a model added later by a config change only reports
its error. TF Serving's half_plus_two keeps each load fast."""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from components.common.processes import free_port, port_free
from tests.serving.conftest import broken_model as _broken
from tests.serving.conftest import good_model as _good

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def private_tmp(tmp_path, monkeypatch):
    """tempfile's folder for this test only: whatever the server leaves there is visible."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def _options(root: Path, **kw):
    from serving.options import ServerOptions

    return ServerOptions(port=free_port(), model_base_path=str(root / "m"), model_name="m",
                         file_system_poll_wait_seconds=0, **kw)


def test_initial_version_failing_after_its_retries_stops_the_start_up_and_leaves_nothing(
        tmp_path, private_tmp, caplog):
    from serving.server import ModelsNotAvailable, start_server

    _broken(tmp_path / "m" / "1")
    options = _options(tmp_path, max_num_load_retries=2, load_retry_interval_micros=200_000,
                       rest_api_port=free_port())
    caplog.set_level(logging.ERROR, logger="serving.manager")
    started = time.monotonic()
    with pytest.raises(ModelsNotAvailable) as failure:
        start_server(options)
    message = str(failure.value)
    assert message.startswith("Failed to start server. Error: UNKNOWN: 1 servable(s) did not become available: "
                              "{{{name: m version: 1} due to error: ")
    assert message.endswith("}, }") and "saved_model" in message.lower()
    assert time.monotonic() - started >= 0.4  # two retries, 0.2 s apart, as TF Serving's harness
    assert [r.message for r in caplog.records if "failed to load m version 1" in r.message][-1].count(
        "attempt 3") == 1
    assert port_free(options.port) and port_free(options.rest_api_port)
    assert list(private_tmp.iterdir()) == []  # the download cache is gone


def test_only_the_model_without_an_available_version_is_named(tmp_path, private_tmp):
    from serving.model_repository import ModelEntry, format_models_config
    from serving.options import ServerOptions
    from serving.server import ModelsNotAvailable, start_server

    _good(tmp_path / "good" / "1")
    _broken(tmp_path / "bad" / "7")
    config = tmp_path / "models.config"
    config.write_text(format_models_config([ModelEntry("good", str(tmp_path / "good")),
                                            ModelEntry("bad", str(tmp_path / "bad"))]))
    with pytest.raises(ModelsNotAvailable, match=r"1 servable\(s\) did not become available: "
                                                 r"\{\{\{name: bad version: 7\} due to error: DATA_LOSS: Can't parse "
                                                 r".*/bad/7/saved_model.pb as binary proto\}, \}") as failure:
        start_server(ServerOptions(port=0, model_config_file=str(config), max_num_load_retries=0))
    assert "name: good" not in str(failure.value)
    assert list(private_tmp.iterdir()) == []


def test_a_version_that_loads_on_a_retry_starts_the_server(tmp_path):
    """The first attempt fails; the version is repaired before the retry, which loads it."""
    from serving.server import start_server

    version = _broken(tmp_path / "m" / "1")

    failures: list[str] = []

    class Repair(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "failed to load m version 1" in record.getMessage():
                failures.append(record.getMessage())
                shutil.rmtree(version)
                _good(version)

    repair = Repair()
    logging.getLogger("serving.manager").addHandler(repair)
    try:
        with start_server(_options(tmp_path, max_num_load_retries=1, load_retry_interval_micros=100_000)) as running:
            assert running.manager.model("m").states[1].state == "AVAILABLE"
            assert len(failures) == 1 and "(attempt 1)" in failures[0]
    finally:
        logging.getLogger("serving.manager").removeHandler(repair)


def test_a_model_without_versions_yet_is_waited_for_not_an_error(tmp_path):
    from serving.server import start_server

    (tmp_path / "m").mkdir()
    options = _options(tmp_path)
    options.file_system_poll_wait_seconds = 0.05
    with start_server(options) as running:
        assert running.manager.model("m").versions == {}
        _good(tmp_path / "m" / ".1.tmp").rename(tmp_path / "m" / "1")
        deadline = time.monotonic() + 60
        while not running.manager.model("m").versions:
            assert time.monotonic() < deadline, "version 1 never loaded"
            time.sleep(0.05)


def test_a_broken_model_added_by_a_config_change_only_reports_its_error(tmp_path):
    from serving.model_repository import ModelEntry, format_models_config
    from serving.options import ServerOptions
    from serving.server import start_server

    _good(tmp_path / "good" / "1")
    _broken(tmp_path / "bad" / "1")
    config = tmp_path / "models.config"
    config.write_text(format_models_config([ModelEntry("good", str(tmp_path / "good"))]))
    with start_server(ServerOptions(port=0, model_config_file=str(config), max_num_load_retries=0,
                                    file_system_poll_wait_seconds=0.05,
                                    model_config_file_poll_wait_seconds=0.05)) as running:
        config.write_text(format_models_config([ModelEntry("good", str(tmp_path / "good")),
                                                ModelEntry("bad", str(tmp_path / "bad"))]))
        deadline = time.monotonic() + 60
        while running.manager.model("bad") is None or running.manager.model("bad").states.get(1) is None \
                or running.manager.model("bad").states[1].state != "END":
            assert time.monotonic() < deadline, "the broken model was never tried"
            time.sleep(0.05)
        assert running.manager.model("bad").states[1].error_message
        assert running.manager.resolve(_spec("good")).version == 1  # the server keeps serving


def test_retina_serve_exits_non_zero_with_tf_servings_message(tmp_path):
    _broken(tmp_path / "m" / "3")
    port = free_port()
    code = "import sys; from components.cli import main; sys.exit(main(sys.argv[1:]))"
    result = subprocess.run(
        [sys.executable, "-c", code, "serve", f"--port={port}", f"--model_base_path={tmp_path / 'm'}",
         "--model_name=m", "--max_num_load_retries=0"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("retina serve: error: Failed to start server. Error: UNKNOWN: 1 servable(s) did not "
                           "become available: {{{name: m version: 3} due to error: "), result.stderr[-2000:]
    assert port_free(port)


def _spec(name: str):
    from serving import protos

    protos.load()
    from tensorflow_serving.apis import model_pb2

    return model_pb2.ModelSpec(name=name)
