"""The one process supervisor: process groups, readiness, log tails, pid checks before a kill."""

from __future__ import annotations

import socket
import sys
import time

import pytest

from components.common import processes
from components.common.processes import ManagedProcess, ProcessFailed


def test_stop_takes_the_whole_process_group_down(tmp_path):
    # A shell with two background children: all three share the group the supervisor created.
    proc = ManagedProcess("sleepers", ["sh", "-c", "sleep 300 & sleep 300 & wait"], log_file=tmp_path / "s.log")
    proc.start()
    deadline = time.monotonic() + 5
    while len(processes.process_group_pids(proc.pid)) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    members = processes.process_group_pids(proc.pid)
    assert len(members) == 3
    assert proc.stop(timeout_s=5) is True
    assert [p for p in members if processes.cmdline(p) is not None] == []
    assert proc.stop() is False  # already gone: nothing to stop


def test_a_child_that_dies_during_start_up_fails_with_its_log_tail(tmp_path):
    argv = [sys.executable, "-c", "import sys; print('bad config: no models'); sys.exit(3)"]
    proc = ManagedProcess("server", argv, log_file=tmp_path / "server.log").start()
    with pytest.raises(ProcessFailed, match=r"(?s)exited with code 3.*bad config: no models"):
        proc.wait_until(lambda: False, timeout_s=30)


def test_wait_until_returns_when_the_port_opens(tmp_path):
    port = processes.free_port()
    code = f"import socket,time; s=socket.socket(); s.bind(('127.0.0.1',{port})); s.listen(); time.sleep(60)"
    with ManagedProcess("listener", [sys.executable, "-c", code], log_file=tmp_path / "l.log") as proc:
        proc.wait_until(lambda: not processes.port_free(port), timeout_s=30)
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            pass
    assert not proc.alive


def test_a_recorded_pid_that_runs_something_else_is_left_alone(tmp_path):
    with ManagedProcess("other", ["sleep", "300"]) as proc:
        assert processes.stop_recorded(proc.pid, ["mlflow", "server"]) is False
        assert proc.alive
