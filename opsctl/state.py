"""The local state directory that `opsctl up` owns and every `opsctl` command reads.

It holds secrets (admin token, demo key, SQLite store, usage), so it is private (0700, files
0600), and it tells clients where the running stack listens (`gateway_url`) and who runs it.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from gateway.errors import FleetgateError

ADMIN_TOKEN_FILE = "admin_token"
DEMO_KEY_FILE = "demo_key"
GATEWAY_URL_FILE = "gateway_url"
LOCK_FILE = "up.lock"
RELEASES_DIR = "releases"  # the LocalDeployer's pid files and pod logs, one directory per release
# What `opsctl up` (and the gateway it starts) put in the state dir: tightened on start, so a
# state dir made by an older version (0755, 0644 files) becomes private too. Nothing else is walked.
OWNED_ENTRIES = (ADMIN_TOKEN_FILE, DEMO_KEY_FILE, GATEWAY_URL_FILE, LOCK_FILE, "logs", "spool", "lake",
                 "fleetgate.db", "fleetgate.db-wal", "fleetgate.db-shm", "fleetgate.db-journal",
                 RELEASES_DIR)
PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600


class StateDirError(FleetgateError):
    """The state dir cannot be used (not ours, not writable)."""

    status = 400
    code = "state_dir_unusable"


class StackRunning(FleetgateError):
    """Another `opsctl up` holds the state dir's lock: a failed operation (exit 1), not bad input."""

    status = 503
    code = "stack_running"


def write_private(path: Path, value: str) -> None:
    """Write a small file readable by its owner only (created 0600, never briefly wider)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, PRIVATE_FILE)
    try:
        os.fchmod(fd, PRIVATE_FILE)
        os.write(fd, (value + "\n").encode())
    finally:
        os.close(fd)


def read_value(path: Path) -> str | None:
    """The stripped content of a one-value file, or None if it is missing or empty."""
    try:
        return path.read_text().strip() or None
    except FileNotFoundError:
        return None


def make_private(state_dir: Path) -> None:
    """Create the state dir 0700 (or tighten an existing one) and its known entries to 0700/0600.

    Raises:
        StateDirError: the directory is shared (sticky bit), belongs to another user, or cannot be created.
    """
    try:
        state_dir.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
        info = state_dir.stat()
    except OSError as e:
        raise StateDirError(f"cannot create the state dir {state_dir}: {e.strerror}") from e
    if info.st_uid != os.getuid() or info.st_mode & stat.S_ISVTX:  # e.g. /tmp: never chmod a shared dir
        raise StateDirError(f"the state dir {state_dir} is shared or belongs to another user; pass "
                            "--state-dir with a directory of its own")
    state_dir.chmod(PRIVATE_DIR)
    for name in OWNED_ENTRIES:
        _tighten_tree(state_dir / name)


def _tighten_tree(path: Path) -> None:
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if stat.S_ISLNK(mode):
        return  # never follow a link out of the state dir
    wanted = PRIVATE_DIR if stat.S_ISDIR(mode) else PRIVATE_FILE
    if stat.S_IMODE(mode) & 0o077:
        path.chmod(stat.S_IMODE(mode) & wanted)
    if stat.S_ISDIR(mode):
        for child in path.iterdir():
            _tighten_tree(child)


def recorded_gateway_url(state_dir: Path) -> str | None:
    """The URL the `opsctl up` of this state dir serves on (None when none is recorded)."""
    return read_value(Path(state_dir) / GATEWAY_URL_FILE)


@dataclass(frozen=True)
class Holder:
    pid: int | None
    url: str | None


class StackLock:
    """An exclusive flock on `<state>/up.lock`, held for the whole life of one `opsctl up`.

    The kernel releases it when the process dies, so a crashed run never blocks the next one.
    The file records the holder's pid and URL, for the message the next `opsctl up` prints.
    """

    def __init__(self, state_dir: Path) -> None:
        self.path = Path(state_dir) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self, url: str) -> None:
        """Take the lock and record (pid, url) in it.

        Raises:
            StackRunning: another live `opsctl up` holds it.
        """
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, PRIVATE_FILE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise StateDirError(f"cannot lock {self.path}: {e.strerror}") from e
            holder = self.holder()
            who = f"pid {holder.pid}" if holder.pid else "another process"
            where = f", serving {holder.url}" if holder.url else ""
            raise StackRunning(f"Fleetgate is already running from {self.path.parent} ({who}{where}); "
                               "stop it first, or pass another --state-dir") from e
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "url": url}).encode())
        self._fd = fd

    @property
    def held(self) -> bool:
        return self._fd is not None

    def holder(self) -> Holder:
        try:
            data = json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return Holder(None, None)
        if not isinstance(data, dict):
            return Holder(None, None)
        pid, url = data.get("pid"), data.get("url")
        return Holder(pid if isinstance(pid, int) else None, url if isinstance(url, str) else None)

    def release(self) -> None:
        if self._fd is None:
            return
        os.ftruncate(self._fd, 0)
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None
