"""The processes of the LocalDeployer: start detached, probe /health, find again by pid file, stop for sure.

A pod is one process in a session of its own (vLLM forks an engine core and workers into its group), so it
outlives the opsctl command that started it and is stopped as a whole group. A pid may have been reused by
the time we come back to it: a process counts as ours only while /proc/PID/cmdline holds `--port PORT`.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600
HEALTH_TIMEOUT_S = 1.0
POLL_S = 0.1


@dataclass(frozen=True)
class ProcessRecord:
    """One running pod: what its pid file holds and the revision's `runtime.processes` lists."""

    revision: int
    index: int
    pid: int
    port: int
    log: str
    restarts: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "url": self.url}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ProcessRecord:
        return cls(revision=int(data["revision"]), index=int(data["index"]), pid=int(data["pid"]),
                   port=int(data["port"]), log=str(data["log"]), restarts=int(data.get("restarts", 0)))


def free_port() -> int:
    """A loopback port nobody listens on right now (the kernel's pick)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_free(port: int) -> bool:
    """Whether `port` on 127.0.0.1 can be bound now (connections in TIME_WAIT do not count)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def open_private(path: Path, flags: int) -> int:
    """A file descriptor on `path`, created 0600 (the state dir holds secrets; never briefly wider)."""
    path.parent.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
    return os.open(path, flags | os.O_CREAT | os.O_CLOEXEC, PRIVATE_FILE)


def spawn(argv: Sequence[str], env: Mapping[str, str], log: Path) -> subprocess.Popen:
    """Start `argv` in a session of its own, stdout and stderr appended to `log` (created 0600).

    Raises:
        OSError: the program cannot be started.
    """
    fd = open_private(log, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, f"--- {time.strftime('%Y-%m-%dT%H:%M:%S%z')} starting: {' '.join(argv)}\n".encode())
        return subprocess.Popen(list(argv), stdout=fd, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=dict(env), start_new_session=True, close_fds=True)
    finally:
        os.close(fd)


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return []
    return raw.decode(errors="replace").split("\0")


def is_ours(pid: int, port: int) -> bool:
    """Whether `pid` is alive and is the pod we started on `port` (a zombie's cmdline is empty)."""
    args = _cmdline(pid)
    return any(a == "--port" and b == str(port) for a, b in zip(args, args[1:])) or f"--port={port}" in args


def _group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of process group `pgid`."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid pgrp ...: comm may hold spaces and parentheses, so split after the last ")"
        fields = stat[stat.rfind(")") + 2:].split()
        if len(fields) > 2 and fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


class Reaper:
    """The Popen objects of the pods this process started, so that dead ones never linger as zombies."""

    def __init__(self) -> None:
        self._children: dict[int, subprocess.Popen] = {}

    def add(self, proc: subprocess.Popen) -> None:
        self._children[proc.pid] = proc

    def running(self, pid: int) -> bool:
        """Whether `pid` is a child of ours that has not exited (it is ours even before its exec)."""
        proc = self._children.get(pid)
        return proc is not None and proc.poll() is None

    def exit_code(self, pid: int) -> int | None:
        """The exit code of a child of ours that has exited (reaped now); None while it runs or isn't ours."""
        proc = self._children.get(pid)
        return None if proc is None else proc.poll()

    def reap(self) -> None:
        for pid, proc in list(self._children.items()):
            if proc.poll() is not None:
                del self._children[pid]


def stop(records: Iterable[ProcessRecord], reaper: Reaper, grace_s: float) -> list[int]:
    """SIGTERM each pod's process group, SIGKILL what is left after `grace_s`, and wait until none remains.

    A record whose pid is no longer ours (exited, or reused by another program) is left alone; a child of
    this process is ours whatever its cmdline (right after the fork it is still this program's).

    Returns:
        The groups that still had live members 10 s after SIGKILL (stuck in the kernel): normally none.
    """
    groups = []
    for record in records:
        if reaper.running(record.pid) or is_ours(record.pid, record.port):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(record.pid, signal.SIGTERM)  # a session leader: its pid is its group's id
            groups.append(record.pid)
    deadline = time.monotonic() + grace_s
    killed = False
    while groups:
        reaper.reap()
        groups = [g for g in groups if _group_members(g)]
        if not groups:
            break
        if time.monotonic() >= deadline:
            if killed:
                return groups
            for group in groups:  # the group still has members, so its id cannot have been reused
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(group, signal.SIGKILL)
            killed = True
            deadline = time.monotonic() + 10
        time.sleep(POLL_S)
    reaper.reap()
    return []


def probe(port: int, timeout: float = HEALTH_TIMEOUT_S) -> tuple[int | None, str]:
    """GET /health on the pod: its status (None when nothing answered) and a phrase for error messages."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", "/health")
        response = conn.getresponse()
        response.read()
        return response.status, f"answered {response.status}"
    except ConnectionRefusedError:
        return None, "refused the connection (nothing listening yet)"
    except TimeoutError:
        return None, f"did not answer within {timeout:g}s"
    except (OSError, http.client.HTTPException) as e:
        return None, f"failed ({type(e).__name__})"
    finally:
        conn.close()


class PidFiles:
    """`{root}/{release}/r{revision}-{index}.pid`: the pods of this state dir, found without the gateway.

    The gateway's release records say the same (runtime.processes), but stopping must work while it is
    down (`opsctl up` stopping) and must never depend on another machine's view.
    """

    def __init__(self, root: Path) -> None:
        self.root = root

    def directory(self, release: str) -> Path:
        return self.root / release

    def log(self, release: str, revision: int, index: int) -> Path:
        return self.directory(release) / f"r{revision}-{index}.log"

    def _path(self, release: str, record: ProcessRecord) -> Path:
        return self.directory(release) / f"r{record.revision}-{record.index}.pid"

    def write(self, release: str, record: ProcessRecord) -> None:
        path = self._path(release, record)
        temporary = path.with_suffix(".tmp")
        fd = open_private(temporary, os.O_WRONLY | os.O_TRUNC)
        with os.fdopen(fd, "w") as f:
            json.dump(record.to_dict(), f)
        temporary.replace(path)

    def remove(self, release: str, record: ProcessRecord) -> None:
        path = self._path(release, record)
        with contextlib.suppress(FileNotFoundError):
            if ProcessRecord.from_dict(json.loads(path.read_text())).pid == record.pid:
                path.unlink()

    def read(self, release: str) -> list[ProcessRecord]:
        """The release's records, by revision then index; unreadable files are skipped (a crash mid-write)."""
        found = []
        for path in sorted(self.directory(release).glob("r*-*.pid")):
            try:
                found.append(ProcessRecord.from_dict(json.loads(path.read_text())))
            except (OSError, ValueError, KeyError, TypeError):
                continue
        return sorted(found, key=lambda r: (r.revision, r.index))

    def releases(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir())


def restarted(record: ProcessRecord, pid: int, port: int) -> ProcessRecord:
    return replace(record, pid=pid, port=port, restarts=record.restarts + 1)
