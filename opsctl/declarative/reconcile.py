"""The git-backed reconciler: keep a clone of a config repository and apply each new commit of a branch.

The clone lives under the state dir (`reconcile/<repo>-<hash>/`), next to a state file naming the
last applied commit, so a restarted reconciler does not apply the same commit twice. A commit whose
config is invalid is reported once and skipped until the next commit; a gateway that cannot be
reached is retried at the next interval. Every write of an apply carries the commit (the audit log
records it), and the apply record names repo, branch and commit.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from gateway.errors import FleetgateError
from opsctl.client import AdminClient
from opsctl.declarative.apply import SecretSink, SecretsError, Source, tag_writes
from opsctl.declarative.run import Result, apply_config
from opsctl.declarative.schema import load
from opsctl.declarative.source import ConfigInvalid

GIT_TIMEOUT_S = 300.0
PRIVATE_DIR = 0o700
# Git must never wait for a password or a host-key answer: a reconciler has nobody to type it.
GIT_ENV = {"GIT_TERMINAL_PROMPT": "0", "GIT_SSH_COMMAND": "ssh -o BatchMode=yes", "LC_ALL": "C"}
BRANCH_RE = re.compile(r"[A-Za-z0-9._/-]{1,200}", re.ASCII)


class ReconcileError(FleetgateError):
    """Bad reconcile input or an unusable repository (one line, exit 2)."""

    status = 400
    code = "reconcile_failed"


class GitFailed(FleetgateError):
    """A git command failed after start-up (retried at the next interval); `returncode` is git's."""

    status = 502
    code = "git_failed"

    def __init__(self, message: str, returncode: int | None = None) -> None:
        super().__init__(message)
        self.returncode = returncode


def public_repo(repo: str) -> str:
    """The repository as logs and the audit log may show it: a URL's user:password@ dropped."""
    parts = urlsplit(repo)
    if parts.scheme and "@" in parts.netloc:
        return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
    return repo


@dataclass(frozen=True, slots=True)
class Target:
    """What to reconcile from: a repository (path or URL), a branch, and a directory inside it."""

    repo: str
    branch: str
    subdir: str = ""

    @classmethod
    def checked(cls, repo: str, branch: str, subdir: str | None) -> Target:
        """Raises: ReconcileError for a branch or --path git or the checkout cannot take."""
        if not BRANCH_RE.fullmatch(branch) or branch.startswith(("-", "/")) or ".." in branch:
            raise ReconcileError(f"--branch {branch[:64]!r} is not a branch name")
        sub = PurePosixPath(subdir or ".")
        if sub.is_absolute() or ".." in sub.parts:
            raise ReconcileError(f"--path {subdir!r} must be a directory inside the repository (no '..')")
        local = Path(repo).expanduser()
        if not repo.strip() or repo.startswith("-"):
            raise ReconcileError(f"--repo {repo[:64]!r} is not a repository path or URL")
        return cls(str(local.resolve()) if local.exists() else repo, branch, "" if str(sub) == "." else str(sub))

    @property
    def public(self) -> str:
        return public_repo(self.repo)


def _git(*args: str, cwd: Path | None = None) -> str:
    """Run git; its stdout. Raises GitFailed with git's reason (its first fatal: line)."""
    try:
        done = subprocess.run(["git", *args], cwd=cwd, env={**os.environ, **GIT_ENV}, capture_output=True,
                              text=True, timeout=GIT_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired as e:
        raise GitFailed(f"git {args[0]} took longer than {GIT_TIMEOUT_S:g} s") from e
    except FileNotFoundError as e:
        raise ReconcileError("the git binary is not installed (reconcile runs git clone and git fetch)") from e
    if done.returncode != 0:
        lines = [line.strip() for line in done.stderr.splitlines() if line.strip()]
        fatal = [line for line in lines if line.startswith(("fatal:", "error:"))]  # the reason, not the advice
        raise GitFailed((fatal or lines or [f"git {args[0]} exited with {done.returncode}"])[0], done.returncode)
    return done.stdout


class Checkout:
    """Our clone of the target's branch, its state file and its lock, under `root`: one per repository,
    branch and gateway (what was applied to one gateway says nothing about another)."""

    def __init__(self, target: Target, root: Path, gateway_url: str) -> None:
        self.target, self.gateway_url = target, gateway_url
        digest = hashlib.sha256(f"{target.repo}#{target.branch}>{gateway_url}".encode()).hexdigest()[:12]
        stem = re.sub(r"[^A-Za-z0-9._-]+", "-", PurePosixPath(urlsplit(target.public).path).name or "repo")
        self.dir = root / f"{stem.removesuffix('.git')[:40]}-{digest}"
        self.state_file = self.dir.with_name(self.dir.name + ".json")
        self._lock_fd: int | None = None

    def lock(self) -> None:
        """Raises: ReconcileError when another reconciler works on this clone."""
        self.dir.parent.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
        fd = os.open(self.dir.with_name(self.dir.name + ".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            os.close(fd)
            raise ReconcileError(f"another opsctl reconcile is using {self.dir}") from e
        self._lock_fd = fd

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def check_remote(self) -> None:
        """Raises: ReconcileError for an unreachable repository or an unknown branch."""
        try:
            _git("ls-remote", "--exit-code", "--heads", "--", self.target.repo, f"refs/heads/{self.target.branch}")
        except GitFailed as e:
            if e.returncode == 2:  # --exit-code: the repository answered, without that branch
                raise ReconcileError(f"{self.target.public} has no branch {self.target.branch!r}") from e
            raise ReconcileError(f"cannot reach the repository {self.target.public}: "
                                 f"{e.message.replace(self.target.repo, self.target.public)}") from e

    def sync(self) -> str:
        """Clone or fetch, reset to origin/<branch>; the commit now checked out.

        Raises: GitFailed.
        """
        branch = self.target.branch
        if not (self.dir / ".git").is_dir():
            _git("clone", "--quiet", "--single-branch", "--branch", branch, "--", self.target.repo, str(self.dir))
        else:
            _git("fetch", "--quiet", "--prune", "origin", f"+refs/heads/{branch}:refs/remotes/origin/{branch}",
                 cwd=self.dir)
            _git("reset", "--quiet", "--hard", f"origin/{branch}", cwd=self.dir)
            _git("clean", "--quiet", "-fdx", cwd=self.dir)
        return _git("rev-parse", "HEAD", cwd=self.dir).strip()

    def config_path(self) -> Path:
        return self.dir / self.target.subdir if self.target.subdir else self.dir

    def remembered(self) -> dict[str, Any]:
        try:
            return json.loads(self.state_file.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            raise ReconcileError(f"cannot read {self.state_file}: {e}; remove it to start over") from e

    def remember(self, **values: Any) -> None:
        """Merge `values` into the state file (written whole, then renamed: never half written)."""
        state = {**self.remembered(), **values, "repo": self.target.public, "branch": self.target.branch,
                 "gateway": self.gateway_url, "updated_at": datetime.now(UTC).isoformat()}
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2) + "\n")
        tmp.replace(self.state_file)


@dataclass(frozen=True, slots=True)
class Event:
    """One thing the reconciler reports: applied, up-to-date, invalid (skipped), or error (retried)."""

    kind: str
    commit: str | None
    message: str = ""
    result: Result | None = None
    problems: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"event": self.kind, "commit": self.commit, "message": self.message}
        if self.result is not None:
            out["result"] = self.result.to_dict()
        if self.problems:
            out["problems"] = list(self.problems)
        return out

    @property
    def failed(self) -> bool:
        return self.kind in ("invalid", "error") or (self.result is not None and self.result.failed)


class Reconciler:
    """Applies each new commit of `checkout`'s branch through clients made by `connect`."""

    def __init__(self, checkout: Checkout, connect: Callable[[], AdminClient], *, prune: bool, dry_run: bool,
                 secrets_out: Path | None, terminal: bool, report: Callable[[Event], None]) -> None:
        self.checkout, self.connect, self.report = checkout, connect, report
        self.prune, self.dry_run, self.secrets_out, self.terminal = prune, dry_run, secrets_out, terminal
        self._last_reported: tuple[str, str | None] | None = None
        self._planned: str | None = None  # a dry run plans each commit once

    def step(self) -> Event:
        """Fetch, and apply the branch's commit unless it was applied (or found invalid) before."""
        target = self.checkout.target
        try:
            commit = self.checkout.sync()
        except GitFailed as e:
            return self._emit(Event("error", None, "git: " + e.message.replace(target.repo, target.public)))
        state = self.checkout.remembered()
        if commit == state.get("applied") or (self.dry_run and commit == self._planned):
            return self._emit(Event("up-to-date", commit, "already applied" if not self.dry_run else "already planned"))
        if commit == state.get("invalid"):
            return self._emit(Event("invalid", commit, "skipped: its config is invalid (waiting for a new commit)"))
        return self._emit(self._apply(commit))

    def _apply(self, commit: str) -> Event:
        target = self.checkout.target
        source = Source(target.public, target.branch, commit)
        try:
            config = load(self.checkout.config_path(), root=self.checkout.dir)
            with self.connect() as client:
                tag_writes(client, source)
                result = apply_config(client, config, prune=self.prune, dry_run=self.dry_run,
                                      secrets=SecretSink(self.secrets_out), terminal=self.terminal, source=source)
        except ConfigInvalid as e:
            return self._invalid(commit, f"{len(e.problems)} problem(s) in the config", tuple(e.lines()))
        except SecretsError as e:
            return self._invalid(commit, e.message, ())
        except FleetgateError as e:  # the gateway unreachable or refusing: retried at the next interval
            return Event("error", commit, e.message)
        if self.dry_run:
            self._planned = commit
        elif result.outcome is not None and result.outcome.stopped is None:
            self.checkout.remember(applied=commit, invalid=None)
        return Event("applied" if not self.dry_run else "planned", commit, "; ".join(result.errors()), result)

    def _invalid(self, commit: str, message: str, problems: tuple[str, ...]) -> Event:
        if not self.dry_run:
            self.checkout.remember(invalid=commit)
        return Event("invalid", commit, message, problems=problems)

    def _emit(self, event: Event) -> Event:
        """Report an event, except the same skip or up-to-date state again and again every interval."""
        key = (event.kind, event.commit)
        quiet = event.kind in ("up-to-date", "invalid") and event.result is None and not event.problems
        if not (quiet and key == self._last_reported):
            self.report(event)
        self._last_reported = key
        return event

    def run(self, *, interval_s: float, once: bool, stop: threading.Event) -> int:
        """Step until `stop` is set (or once); exit status: 1 when the last step failed, else 0."""
        while True:
            event = self.step()
            if once:
                return 1 if event.failed else 0
            if stop.wait(interval_s):
                return 0
