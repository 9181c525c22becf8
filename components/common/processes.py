"""One supervisor for every process the project starts: SeaweedFS, `mlflow server`, the model server.

Each child runs in a session (process group) of its own, so stopping it stops its workers too (MLflow's
gunicorn/uvicorn workers, SeaweedFS's sub-servers). A pid read back from a state file is killed only
after its command line is checked against markers recorded at start: a recycled pid is never hit.
Children this Python started are also reaped, so none lingers as a zombie.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from components.common.errors import RetinaError

LOOPBACK = "127.0.0.1"
STOP_TIMEOUT_S = 15.0

# Popen objects of processes started by this Python, so stopping them also reaps them.
_CHILDREN: dict[int, subprocess.Popen] = {}


class ProcessFailed(RetinaError):
    """A managed process exited during start-up or never became ready; the message carries its log tail."""


# --------------------------------------------------------------------------- ports
def port_free(port: int, host: str = LOOPBACK) -> bool:
    """True when `port` can be bound. SO_REUSEADDR as servers set it: TIME_WAIT leftovers count as free."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = LOOPBACK, taken: Iterable[int] = ()) -> int:
    """A port the OS reports free right now, not in `taken`."""
    taken = set(taken)
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        if port not in taken:
            return port
    raise RetinaError(f"no free TCP port on {host}")


# --------------------------------------------------------------------------- inspection
def cmdline(pid: int) -> list[str] | None:
    """The argv of a live (non-zombie) process, or None when it is gone."""
    proc = Path(f"/proc/{pid}")
    if Path("/proc/self").exists():
        try:
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
            raw = (proc / "cmdline").read_bytes()
        except (OSError, IndexError):
            return None
        return None if state in ("Z", "X") else [a.decode(errors="replace") for a in raw.split(b"\0") if a]
    try:  # no /proc (macOS): ask ps
        out = subprocess.run(["ps", "-o", "stat=,command=", "-p", str(pid)], capture_output=True, text=True)
    except OSError:
        return None
    text = out.stdout.strip()
    if out.returncode != 0 or not text or text.split()[0].startswith("Z"):
        return None
    return shlex.split(text.split(None, 1)[1]) if " " in text else []


def runs(pid: int, markers: Sequence[str]) -> bool:
    """True when `pid` is alive and its command line still contains every marker."""
    argv = cmdline(pid)
    return argv is not None and all(m in " ".join(argv) for m in markers)


def process_group_pids(pgid: int) -> list[int]:
    """Live members of a process group (Linux /proc; empty elsewhere)."""
    out = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] not in ("Z", "X") and int(fields[2]) == pgid:
            out.append(int(proc.name))
    return out


def _reap(pid: int) -> None:
    proc = _CHILDREN.get(pid)
    if proc is not None and proc.poll() is not None:
        _CHILDREN.pop(pid, None)


def stop_recorded(pid: int, markers: Sequence[str], timeout_s: float = STOP_TIMEOUT_S) -> bool:
    """TERM, then KILL, the process group led by `pid` if it still runs our command.

    True when something was stopped; False when the pid is gone or now runs something else.
    """
    if not runs(pid, markers):
        _reap(pid)
        return False
    for sig, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            _reap(pid)
            if cmdline(pid) is None and not process_group_pids(pid):
                return True
            time.sleep(0.1)
    _reap(pid)
    return True


# --------------------------------------------------------------------------- the supervisor
class ManagedProcess:
    """A child process in its own group, its output appended to `log_file` (or discarded).

    `markers` (default: the argv) are what `stop_recorded` checks when only the pid survives, e.g. in
    a state file read by another command.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        log_file: str | Path | None = None,
        cwd: str | Path | None = None,
        markers: Sequence[str] | None = None,
    ) -> None:
        self.name = name
        self.argv = [str(a) for a in argv]
        self.env = env
        self.log_file = Path(log_file) if log_file else None
        self.cwd = str(cwd) if cwd else None
        self.markers = list(markers) if markers is not None else self.argv
        self._proc: subprocess.Popen | None = None

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RetinaError(f"{self.name} was not started")
        return self._proc.pid

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> ManagedProcess:
        out: int | object = subprocess.DEVNULL
        fh = None
        if self.log_file is not None:
            self.log_file.parent.mkdir(parents=True, exist_ok=True)
            fh = open(self.log_file, "ab")  # noqa: SIM115 - the child keeps its own copy of the descriptor
            fh.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} starting {self.name}\n".encode())
            fh.flush()
            out = fh
        try:
            self._proc = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                env=self.env, cwd=self.cwd, start_new_session=True,
            )
        finally:
            if fh is not None:
                fh.close()
        _CHILDREN[self._proc.pid] = self._proc
        return self

    def log_tail(self, lines: int = 30) -> str:
        if self.log_file is None or not self.log_file.exists():
            return "(no log)"
        return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])

    def wait_until(self, check: Callable[[], bool], timeout_s: float, interval_s: float = 0.25) -> None:
        """Poll `check` until it holds; ProcessFailed (with the log tail) if the child exits or time runs out."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if check():
                return
            if self._proc is not None and self._proc.poll() is not None:
                raise ProcessFailed(
                    f"{self.name} exited with code {self._proc.returncode} during start-up; "
                    f"log {self.log_file}:\n{self.log_tail()}"
                )
            time.sleep(interval_s)
        raise ProcessFailed(f"{self.name} not ready after {timeout_s:.0f}s; log {self.log_file}:\n{self.log_tail()}")

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> bool:
        """Stop the whole group; True when it was running."""
        if self._proc is None:
            return False
        return stop_recorded(self._proc.pid, self.markers, timeout_s)

    def __enter__(self) -> ManagedProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
