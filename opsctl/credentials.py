"""What `opsctl login` stores: one admin token per gateway URL, in a file only its owner can read.

The file is `$FLEETGATE_CREDENTIALS`, else `$XDG_CONFIG_HOME/fleetgate/credentials.json` (default
`~/.config/fleetgate/credentials.json`): JSON `{gateway_url: {token, expires_at, kind, client_id}}`,
mode 0600 in a 0700 directory, replaced atomically under a lock so two logins never lose each other's
entry. Every `opsctl` command and the TUI read it (opsctl.client.find_admin_token). Stdlib only.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from gateway.errors import FleetgateError
from opsctl.state import PRIVATE_FILE

CREDENTIALS_ENV = "FLEETGATE_CREDENTIALS"
PRIVATE_DIR = 0o700


class CredentialsError(FleetgateError):
    """The credentials file cannot be read or written (bad input to fix: exit 2)."""

    status = 400
    code = "credentials_unusable"


@dataclass(frozen=True)
class Login:
    token: str
    expires_at: str | None  # ISO-8601 UTC; None when unknown
    kind: str  # the principal kind: service_account, user, bootstrap
    client_id: str | None = None

    def expired(self, now: datetime | None = None) -> bool:
        if self.expires_at is None:
            return False
        return (now or datetime.now(UTC)) >= datetime.fromisoformat(self.expires_at)


def credentials_path(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    if env.get(CREDENTIALS_ENV):
        return Path(env[CREDENTIALS_ENV]).expanduser()
    config_home = Path(env.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return config_home / "fleetgate" / "credentials.json"


def gateway_key(url: str) -> str:
    """Logins are per gateway: http://h:8080 and http://h:8080/ are one."""
    return url.rstrip("/")


def _read(path: Path) -> dict[str, dict]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise CredentialsError(f"cannot read the credentials file {path} ({e}); fix or delete it") from e
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise CredentialsError(f"the credentials file {path} is not a JSON object of logins; fix or delete it")
    return data


def stored_login(gateway_url: str, path: Path | None = None) -> Login | None:
    """The login stored for this gateway, or None."""
    entry = _read(path or credentials_path()).get(gateway_key(gateway_url))
    if entry is None:
        return None
    token = entry.get("token")
    if not isinstance(token, str) or not token:
        raise CredentialsError(f"the login for {gateway_key(gateway_url)} in {path or credentials_path()} has no "
                               "token; run opsctl login again")
    expires_at = entry.get("expires_at")
    if expires_at is not None:
        try:
            datetime.fromisoformat(expires_at)
        except (TypeError, ValueError) as e:
            raise CredentialsError(f"the login for {gateway_key(gateway_url)} has a bad expires_at; "
                                   "run opsctl login again") from e
    client_id = entry.get("client_id")
    return Login(token=token, expires_at=expires_at, kind=str(entry.get("kind", "")),
                 client_id=client_id if isinstance(client_id, str) else None)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock beside the file while reading, changing and replacing it."""
    fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, PRIVATE_FILE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _write_atomically(path: Path, data: dict[str, dict]) -> None:
    """Write a sibling temporary file (0600 from its creation), fsync it, rename it over the file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, PRIVATE_FILE)
    try:
        os.fchmod(fd, PRIVATE_FILE)
        os.write(fd, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename itself survives a crash
    finally:
        os.close(dir_fd)


def _update(path: Path, change) -> bool:  # noqa: ANN001 - a function of the logins dict
    try:
        if not path.parent.exists():
            path.parent.mkdir(mode=PRIVATE_DIR, parents=True)
        if path.parent.name == "fleetgate":  # the default directory is ours alone
            path.parent.chmod(PRIVATE_DIR)
        with _locked(path):
            data = _read(path)
            changed = change(data)
            if changed:
                _write_atomically(path, data)
            return changed
    except OSError as e:
        raise CredentialsError(f"cannot write the credentials file {path}: {e.strerror or e}") from e


def save_login(gateway_url: str, login: Login, path: Path | None = None) -> Path:
    """Store (or replace) the login for this gateway; return the file's path."""
    path = path or credentials_path()

    def put(data: dict[str, dict]) -> bool:
        data[gateway_key(gateway_url)] = asdict(login)
        return True

    _update(path, put)
    return path


def forget_login(gateway_url: str, path: Path | None = None) -> bool:
    """Remove the login for this gateway; False when there was none."""
    path = path or credentials_path()
    if not path.exists():
        return False
    return _update(path, lambda data: data.pop(gateway_key(gateway_url), None) is not None)
