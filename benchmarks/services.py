"""Child processes for benchmarks: start, wait ready with a deadline, measure CPU, always stop.

A service that fails to start raises `ServiceFailed` carrying the tail of its log.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class ServiceFailed(RuntimeError):
    """A component did not start or a setup command failed."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_status(url: str, *, method: str = "GET", body: bytes | None = None,
                headers: dict[str, str] | None = None, timeout: float = 2.0) -> int:
    """Status code of one request, or 0 when the server cannot be reached."""
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            resp.read()
            return resp.status
    except urllib.error.HTTPError as e:
        return e.code
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # the command name (field 2) may contain spaces; fields after it are split by ")"
    return raw[raw.rindex(")") + 2:].split()


def descendants(pid: int) -> list[int]:
    """pid and every live process below it (gateway workers, uvicorn children)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        if fields:
            children.setdefault(int(fields[1]), []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        todo.extend(children.get(current, ()))
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process tree (utime+stime from /proc, plus reaped children)."""
    ticks = 0
    for p in descendants(pid):
        fields = _stat_fields(p)
        if fields:  # fields[11..14] = utime, stime, cutime, cstime (stat fields 14-17)
            ticks += sum(int(v) for v in fields[11:15])
    return ticks / CLOCK_TICKS


class Service:
    """One child process with its own log file and process group."""

    def __init__(self, name: str, cmd: list[str], *, env: dict[str, str], log_dir: Path,
                 cwd: Path | None = None, cpus: set[int] | None = None) -> None:
        self.name = name
        self.cmd = cmd
        self.env = env
        self.cwd = cwd
        self.cpus = cpus
        self.log_path = log_dir / f"{name}.log"
        self.proc: subprocess.Popen | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.name} is not running"
        return self.proc.pid

    def start(self) -> Service:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(self.cmd, env=self.env, cwd=self.cwd, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        if self.cpus:
            os.sched_setaffinity(self.proc.pid, self.cpus)
        return self

    def log_tail(self, lines: int = 25) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def fail(self, why: str) -> ServiceFailed:
        return ServiceFailed(f"{self.name}: {why}\n--- {self.log_path} (tail) ---\n{self.log_tail()}")

    def wait_ready(self, check: Callable[[], bool], *, timeout: float, what: str) -> None:
        """Poll `check` until true; raise ServiceFailed if the process exits or the deadline passes."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                code = None if self.proc is None else self.proc.returncode
                raise self.fail(f"exited (code {code}) before {what}")
            if check():
                return
            time.sleep(0.1)
        raise self.fail(f"not {what} after {timeout:.0f}s")

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the whole process group, then SIGKILL whatever is left after `timeout`."""
        if self.proc is None:
            return
        try:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGTERM)
                try:
                    self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                    self.proc.wait(5)
            else:
                os.killpg(self.proc.pid, signal.SIGKILL)  # orphaned workers of a dead parent
        except ProcessLookupError:
            pass  # the group is already gone: nothing left to stop
        self.proc = None


def run_cli(cmd: list[str], *, env: dict[str, str], timeout: float = 30.0) -> str:
    """Run a setup command; return stdout or raise ServiceFailed with its stderr."""
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise ServiceFailed(f"`{' '.join(cmd[1:])}` exited {proc.returncode}: {proc.stderr.strip()[-800:]}")
    return proc.stdout
