"""Start `opsctl rollout start|abort`, `opsctl promote` and `opsctl rollback` as detached background processes.

The TUI must not drive a rollout itself: quitting the console would interrupt it. A launched `opsctl` runs in
its own session (no terminal, no signal from the TUI's Ctrl-C), logs its JSON progress lines to a file under the
state dir, and gets the admin token through its environment (never argv, where `ps` shows it). Inputs are
checked here first (`check_*`), so a bad form value is reported before anything starts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.errors import InvalidRequest

REPO_ROOT = Path(__file__).resolve().parents[2]
LOG_DIR = Path("logs") / "launched"  # under the state dir
EXITED_EARLY_S = 20.0  # how long `start` waits for the rollout record (or an early exit) of a launched start
POLL_S = 0.1


@dataclass(frozen=True)
class LaunchTarget:
    """Where a launched `opsctl` acts: the gateway, the admin token (by environment only), the state dir (the
    LocalDeployer's processes and logs)."""

    gateway_url: str
    admin_token: str | None
    state_dir: Path

    def environment(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """The child's environment: ours without any FLEETGATE_* setting, plus the target's."""
        base = os.environ if base is None else base
        env = {k: v for k, v in base.items() if not k.startswith("FLEETGATE_")}
        env["FLEETGATE_GATEWAY_URL"] = self.gateway_url
        env["FLEETGATE_STATE_DIR"] = str(self.state_dir)
        if self.admin_token:
            env["FLEETGATE_ADMIN_TOKEN"] = self.admin_token
        return env


@dataclass
class Launched:
    """A background `opsctl` process and its log (JSON lines: step events, then a result)."""

    argv: list[str]
    pid: int
    log: Path
    proc: subprocess.Popen | None = field(default=None, repr=False)

    def exit_code(self) -> int | None:
        """The exit code once it ended; None while it runs (or when this process did not start it)."""
        return None if self.proc is None else self.proc.poll()

    def wait(self, timeout_s: float, *, stop: Callable[[], bool] | None = None) -> int | None:
        """Wait up to `timeout_s` for the end (or until `stop()`); the exit code, None if still running."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            code = self.exit_code()
            if code is not None or (stop is not None and stop()):
                return code
            time.sleep(POLL_S)
        return self.exit_code()

    def result(self) -> dict[str, Any] | None:
        """The `{"event": "result", ...}` line the command printed last, if any."""
        for line in reversed(self.lines()):
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict) and entry.get("event") == "result":
                return entry
        return None

    def last_error(self) -> str:
        """The command's last non-JSON line (its one-line error on stderr), else its result's reason."""
        for line in reversed(self.lines()):
            if not line.startswith("{"):
                return line
        result = self.result() or {}
        return str(result.get("reason") or result.get("status") or f"see {self.log}")

    def lines(self) -> list[str]:
        try:
            return [line.strip() for line in self.log.read_text(encoding="utf-8", errors="replace").splitlines()
                    if line.strip()]
        except OSError:
            return []


# --- input checks (before anything starts) ------------------------------------------------------------------

def check_name(value: str, field_name: str) -> str:
    value = (value or "").strip()
    if not value:
        raise InvalidRequest(f"{field_name} is required", param=field_name)
    if any(c.isspace() for c in value):
        raise InvalidRequest(f"{field_name} must not contain spaces: {value!r}", param=field_name)
    return value


def check_env(value: str, field_name: str = "env") -> str:
    from opsctl.deploy import ENVIRONMENTS

    value = check_name(value, field_name)
    if value not in ENVIRONMENTS:
        raise InvalidRequest(f"{field_name} must be one of {', '.join(ENVIRONMENTS)}, not {value!r}", param=field_name)
    return value


def check_sets(text: str) -> list[str]:
    """`--set` items from a form field, separated by whitespace (a value may hold commas: YAML lists)."""
    items = text.split()
    for item in items:
        name, sep, _ = item.partition("=")
        if not sep or not name:
            raise InvalidRequest(f"--set items are NAME=VALUE, got {item!r}", param="set")
    return items


def check_playbook(playbook: str, kind: str, sets: Sequence[str], params: Mapping[str, Any]) -> Path:
    """Load the playbook (given, else the shipped one of `kind`) with the form's params and sets, as the command
    will: a bad file, param or --set is reported now. Returns its absolute path.

    Raises:
        InvalidRequest: the playbook's problem (file:line: field: message), param "playbook".
    """
    from opsctl.rollout.playbook import PlaybookError, default_playbook, load_playbook

    try:
        path = Path(playbook).expanduser().resolve() if playbook.strip() else default_playbook(kind)
        book = load_playbook(path, sets, params=params)
    except PlaybookError as e:
        raise InvalidRequest(str(e), param="playbook") from e
    allowed = ("canary", "blue-green") if kind == "canary" else (kind,)
    if book.kind not in allowed:
        raise InvalidRequest(f"{path.name} is a {book.kind} playbook; this needs a {' or '.join(allowed)} one",
                             param="playbook")
    return path


def start_argv(model: str, env: str, version: str, playbook: str = "", sets: str = "") -> list[str]:
    """`rollout start` arguments from a form, checked (raises InvalidRequest naming the bad field)."""
    model, env, version = check_name(model, "model"), check_env(env), check_name(version, "version")
    items = check_sets(sets)
    path = check_playbook(playbook, "canary", items, {"model": model, "env": env, "version": version})
    argv = ["rollout", "start", model, "--env", env, "--version", version]
    if playbook.strip():
        argv += ["--playbook", str(path)]
    for item in items:
        argv += ["--set", item]
    return argv


def promote_argv(model: str, source: str, target: str, approve: bool, playbook: str = "",
                 sets: str = "") -> list[str]:
    """`promote` arguments from a form, checked: production needs approve (the manual gate)."""
    from opsctl.rollout.promotion import require_approval

    model, source, target = check_name(model, "model"), check_env(source, "from"), check_env(target, "to")
    if source == target:
        raise InvalidRequest("from and to must be different environments", param="to")
    require_approval(target, approve)
    items = check_sets(sets)
    path = check_playbook(playbook, "promote", items,
                          {"model": model, "from": source, "to": target, "approve": approve})
    argv = ["promote", model, "--from", source, "--to", target]
    if approve:
        argv.append("--approve")
    if playbook.strip():
        argv += ["--playbook", str(path)]
    for item in items:
        argv += ["--set", item]
    return argv


def rollback_argv(model: str, env: str, revision: str = "") -> list[str]:
    """`rollback` arguments from a form, checked (revision: empty, or a number ≥ 1)."""
    model, env = check_name(model, "model"), check_env(env)
    argv = ["rollback", model, "--env", env]
    revision = (revision or "").strip()
    if revision:
        if not revision.isdigit() or int(revision) < 1:
            raise InvalidRequest(f"revision must be a number ≥ 1, got {revision!r}", param="revision")
        argv += ["--to-revision", str(int(revision))]
    return argv


def abort_argv(rollout_id: str) -> list[str]:
    return ["rollout", "abort", "--id", check_name(rollout_id, "rollout")]


# --- launching ------------------------------------------------------------------------------------------------

def launch(argv: Sequence[str], target: LaunchTarget, *, label: str | None = None) -> Launched:
    """Start `opsctl ARGV --output json` detached: own session, stdin closed, output to a log file under
    `<state dir>/logs/launched/`. It outlives the caller.

    Raises:
        OSError: the log file or the process could not be created.
    """
    log_dir = target.state_dir / LOG_DIR
    log_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
    name = "-".join(part for part in (label or "-".join(argv[:2])).split() if part).replace("/", "_")
    log = log_dir / f"{stamp}-{name}.log"
    command = [sys.executable, "-m", "opsctl", *argv, "--output", "json"]
    with open(log, "ab") as out:  # the child keeps its own descriptor
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                env=target.environment(), cwd=REPO_ROOT, start_new_session=True,
                                close_fds=True)
    return Launched(argv=list(argv), pid=proc.pid, log=log, proc=proc)


def await_rollout(launched: Launched, find: Callable[[], dict[str, Any] | None],
                  timeout_s: float = EXITED_EARLY_S) -> dict[str, Any]:
    """Wait until the launched command created its rollout record (`find()` returns it) or exited.

    Raises:
        InvalidRequest: it exited before a record appeared (bad input it found, a refused promotion): its error.
        TimeoutError: neither happened in time (it may still start; its log says).
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = find()
        if found is not None:
            return found
        code = launched.exit_code()
        if code is not None:
            found = find()
            if found is not None:
                return found
            raise InvalidRequest(f"exited {code}: {launched.last_error()}")
        time.sleep(0.25)
    raise TimeoutError(f"no rollout record after {timeout_s:.0f} s; pid {launched.pid} may still start it "
                       f"(log {launched.log})")
