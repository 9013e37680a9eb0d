"""The rollout engine: runs a playbook's steps through the admin API and a Deployer, resumably.

All state lives in the gateway's `/admin/v1/rollouts` record (step index, phase, state JSON, owner), written
before and after every step with `expected_version_no`, so another process can resume a rollout whose driver
died, or abort it. A failed step or an abort runs the rollback (steps.roll_back); the result maps to exit codes.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.errors import Conflict, FleetgateError, InvalidRequest, NotFound
from opsctl.client import AdminClient, GatewayUnreachable, path_part
from opsctl.rollout.steps import STEPS, StepFailed, roll_back

if TYPE_CHECKING:
    from opsctl.deploy import Deployer
    from opsctl.rollout.playbook import Playbook
    from opsctl.rollout.progress import Progress

ACTIVE = ("running", "aborting")
TERMINAL = ("succeeded", "failed", "aborted")
POLL_S = 1.0  # an abort is noticed within this long (every sleep of the engine checks the record)
FOLLOW_TIMEOUT_S = 600.0  # how long `abort` waits for a live driver to finish its rollback
ROLLING_BACK = "rolling_back"
REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Result:
    """How a rollout (or a rollback) ended: succeeded → exit 0; failed, aborted (or still active) → exit 1."""

    rollout_id: str | None
    status: str
    reason: str | None
    elapsed_s: float

    def to_dict(self) -> dict[str, Any]:
        return {"rollout_id": self.rollout_id, "status": self.status, "reason": self.reason,
                "elapsed_s": round(self.elapsed_s, 3)}

    @property
    def exit_code(self) -> int:
        return 0 if self.status == "succeeded" else 1


class RolloutAborted(Exception):
    """The record says `aborting`: stop the current step, roll back."""


class LostOwnership(FleetgateError):
    """Another process drives the rollout now (resume --force elsewhere): stop without touching anything."""

    status = 503
    code = "rollout_taken_over"


@dataclass(frozen=True)
class Target:
    """What a rollout acts on: the model, its environment, the releases and the chart."""

    model: str
    env: str
    version: str
    stable: str
    canary: str
    chart: Path | None
    values_files: tuple[Path, ...]


def make_target(playbook: Playbook, version: str) -> Target:
    from opsctl.deploy import check_environment
    from opsctl.deploy.naming import release_name

    env = check_environment(playbook.environment)
    chart = find_chart(playbook.chart)
    env_values = chart / f"values-{env}.yaml" if chart is not None else None
    return Target(model=playbook.model, env=env, version=version,
                  stable=release_name(playbook.model, env), canary=release_name(playbook.model, env, "canary"),
                  chart=chart, values_files=(env_values,) if env_values is not None and env_values.is_file() else ())


def find_chart(chart: str | None) -> Path | None:
    """The chart directory: as given, or (a relative path that is not here) inside the Fleetgate source tree."""
    if chart is None:
        return None
    path = Path(chart)
    if not path.is_absolute() and not path.exists() and (REPO_ROOT / path).exists():
        return REPO_ROOT / path
    return path


def this_owner() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid()}


def pid_alive(pid: int) -> bool:
    """True while process `pid` exists on this host and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


def owner_dead(owner: Mapping[str, Any] | None) -> bool:
    """The recorded driver is gone for sure: none recorded, or a dead pid on this very host."""
    if not owner:
        return True
    return owner.get("host") == socket.gethostname() and not pid_alive(int(owner.get("pid") or 0))


class Record:
    """The rollout record, with optimistic concurrency: every PATCH carries the version_no last seen."""

    def __init__(self, client: AdminClient, data: Mapping[str, Any], owner: Mapping[str, Any]) -> None:
        self.client = client
        self.data = dict(data)
        self.owner = dict(owner)
        self.rolling_back = False

    @property
    def id(self) -> str:
        return self.data["id"]

    @property
    def state(self) -> dict[str, Any]:
        if not isinstance(self.data.get("state"), dict):
            self.data["state"] = {}
        return self.data["state"]

    def refresh(self) -> dict[str, Any]:
        fresh = self.client.get(f"/admin/v1/rollouts/{path_part(self.id)}")
        fresh.pop("events", None)
        return fresh

    def patch(self, **changes: Any) -> None:
        """Write `changes`; on a version conflict look at what changed: an abort request interrupts the step
        (unless rolling back already), another owner or a finished rollout stops this driver; anything else
        (a write that did not concern us) is retried on the new version."""
        for _ in range(5):
            body = {**changes, "expected_version_no": self.data["version_no"]}
            try:
                answer = self.client.patch(f"/admin/v1/rollouts/{path_part(self.id)}", body)
            except FleetgateError as e:
                if e.status != 409:
                    raise
                fresh = self.refresh()
                self.check(fresh)
                self.data = fresh
                continue
            answer.pop("events", None)
            self.data = answer
            return
        raise Conflict(f"rollout {self.id} keeps changing under this driver; stopped")

    def check(self, fresh: Mapping[str, Any]) -> None:
        """Raise when `fresh` (the stored record) means this driver must stop or roll back."""
        if fresh["status"] in TERMINAL:
            raise LostOwnership(f"rollout {self.id} is already {fresh['status']}")
        owner = fresh.get("owner") or {}
        if owner and (owner.get("host"), owner.get("pid")) != (self.owner["host"], self.owner["pid"]):
            raise LostOwnership(f"rollout {self.id} is now driven by pid {owner.get('pid')} on {owner.get('host')}")
        if fresh["status"] == "aborting" and not self.rolling_back:
            self.data["version_no"] = fresh["version_no"]
            raise RolloutAborted(fresh.get("reason") or "aborted")


class Run:
    """One driver's view of one rollout: what the steps use (client, deployer, target, state, events, waits)."""

    def __init__(self, engine: RolloutEngine, record: Record, playbook: Playbook, target: Target) -> None:
        self.client = engine.client
        self.deployer = engine.deployer
        self.progress = engine.progress
        self.clock = engine.clock
        self._sleep = engine.sleep
        self.record = record
        self.playbook = playbook
        self.target = target
        self.marker = f"opsctl rollout {record.id} ({playbook.kind} to {target.version})"
        self.started = engine.clock()
        self._last_check = engine.clock()
        self.plan = _plan_lines(playbook)

    @property
    def state(self) -> dict[str, Any]:
        return self.record.state

    def save(self, **changes: Any) -> None:
        """Merge `changes` into the rollout's state and write it (the state is the engine's scratch)."""
        self.record.patch(state={**self.state, **changes})

    def event(self, step: int, name: str, phase: str, message: str, data: Mapping[str, Any] | None = None) -> None:
        """Record a step event in the rollout and show it."""
        body = {"step": step, "name": name, "phase": phase, "message": message,
                "data": {**(data or {}), "elapsed_s": round(self.clock() - self.started, 3)}}
        posted = self.client.post(f"/admin/v1/rollouts/{path_part(self.record.id)}/events", body)
        self.progress.event(posted if isinstance(posted, dict) else {"rollout_id": self.record.id, **body})

    def wait(self, seconds: float) -> None:
        """Sleep, looking at the record at least every POLL_S: an abort request interrupts the wait."""
        deadline = self.clock() + seconds
        while True:
            now = self.clock()
            if now - self._last_check >= POLL_S and not self.record.rolling_back:
                self._last_check = now
                self.record.check(self.record.refresh())
            left = deadline - now
            if left <= 0:
                return
            self._sleep(min(left, POLL_S, max(POLL_S - (now - self._last_check), 0.01)))


class RolloutEngine:
    """Starts, resumes and aborts rollouts; rolls back a model's stable release.

    Args:
        client: the gateway's admin API.
        deployer: where releases go (LocalDeployer, HelmDeployer).
        progress: shows the events (opsctl.rollout.progress.make_progress).
        sleep, clock: injectable for tests of the timing.
    """

    def __init__(self, client: AdminClient, deployer: Deployer, progress: Progress, *,
                 sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic) -> None:
        self.client = client
        self.deployer = deployer
        self.progress = progress
        self.sleep = sleep
        self.clock = clock
        self.owner = this_owner()

    # --- commands --------------------------------------------------------------------------------------------

    def start(self, playbook: Playbook, *, version: str | None = None) -> Result:
        """Create the rollout record and drive it to the end.

        Raises:
            Conflict: another rollout of the model in the environment is active (exit 2, naming it).
            NotFound: the model is not in the registry of that environment.
        """
        version = version or playbook.version
        if not version:
            raise InvalidRequest("the rollout needs a version: give --version", param="version")
        target = make_target(playbook, version)
        self.require_model(target.model, target.env)
        body = {"model": target.model, "environment": target.env, "version": version, "kind": playbook.kind,
                "playbook": playbook.path.name if playbook.path else playbook.kind, "spec": playbook.to_spec(),
                "owner": self.owner}
        try:
            data = self.client.post("/admin/v1/rollouts", body)
        except FleetgateError as e:
            if e.status == 409:
                raise self.in_progress(target.model, target.env) from e
            raise
        record = Record(self.client, data, self.owner)
        return self._drive(Run(self, record, playbook, target))

    def resume(self, rollout_id: str, *, force: bool = False) -> Result:
        """Take over an active rollout and drive it on from its current step (or finish its rollback).

        Raises:
            Conflict: the rollout is finished, or a live process on another host (or this one) drives it.
        """
        from opsctl.rollout.playbook import Playbook

        data = self.get(rollout_id)
        if data["status"] in TERMINAL:
            raise Conflict(f"rollout {rollout_id} already {data['status']}: nothing to resume")
        owner = data.get("owner")
        if owner and not force and not owner_dead(owner) and owner != self.owner:
            raise Conflict(f"rollout {rollout_id} is driven by pid {owner.get('pid')} on {owner.get('host')}; "
                           "if that process is gone, take over with --force")
        record = Record(self.client, data, self.owner)
        record.patch(owner=self.owner)
        playbook = Playbook.from_spec(record.data["spec"])
        return self._drive(Run(self, record, playbook, make_target(playbook, record.data["version"])))

    def abort(self, rollout_id: str) -> Result:
        """Ask the driver to stop and roll back; with no live driver, roll back here.

        Raises:
            Conflict: the rollout is already finished.
        """
        from opsctl.rollout.playbook import Playbook

        started = self.clock()
        data = self.get(rollout_id)
        if data["status"] in TERMINAL:
            raise Conflict(f"rollout {rollout_id} already {data['status']}: nothing to abort")
        record = Record(self.client, data, data.get("owner") or self.owner)
        if data["status"] == "running":
            record.rolling_back = True  # our own PATCH must not interrupt us
            record.patch(status="aborting", reason=f"aborted by pid {self.owner['pid']} on {self.owner['host']}")
        if owner_dead(data.get("owner")) or data.get("owner") == self.owner:
            record.owner = self.owner
            record.patch(owner=self.owner)
            playbook = Playbook.from_spec(record.data["spec"])
            run = Run(self, record, playbook, make_target(playbook, record.data["version"]))
            return self._close(self._roll_back(run, "aborted", record.data.get("reason") or "aborted"))
        return self._close(self.follow(rollout_id, started))

    def follow(self, rollout_id: str, started: float | None = None, timeout_s: float = FOLLOW_TIMEOUT_S) -> Result:
        """Show a rollout's new events until it finishes (another process drives it)."""
        started = self.clock() if started is None else started
        seen: set[Any] | None = None  # the events before this call are history: not shown again
        deadline = self.clock() + timeout_s
        while True:
            data = self.client.get(f"/admin/v1/rollouts/{path_part(rollout_id)}")
            events = data.get("events") or ()
            if seen is None:
                seen = {event.get("id") for event in events}
            for event in events:
                if event.get("id") not in seen:
                    seen.add(event.get("id"))
                    self.progress.event(event)
            if data["status"] in TERMINAL:
                return Result(rollout_id, data["status"], data.get("reason"), self.clock() - started)
            if self.clock() >= deadline:
                owner = data.get("owner") or {}
                return Result(rollout_id, data["status"],
                              f"still {data['status']} after {timeout_s:.0f} s, driven by pid {owner.get('pid')} "
                              f"on {owner.get('host')}", self.clock() - started)
            self.sleep(POLL_S)

    def rollback_release(self, model: str, env: str, to_revision: int | None = None) -> Result:
        """`opsctl rollback`: abort the model's active rollout if there is one (that is its rollback), else
        return its stable release to `to_revision` (default: the previous deployed one) and route to it."""
        from opsctl.rollout.promotion import rollback_stable

        self.require_model(model, env)
        active = self.active(model, env)
        if active is not None:
            return self.abort(active["id"])
        return rollback_stable(self, model, env, to_revision)

    # --- helpers ---------------------------------------------------------------------------------------------

    def get(self, rollout_id: str) -> dict[str, Any]:
        try:
            data = self.client.get(f"/admin/v1/rollouts/{path_part(rollout_id)}")
        except FleetgateError as e:
            if e.status == 404:
                raise NotFound(f"unknown rollout {rollout_id!r} (see opsctl rollout status)") from e
            raise
        data.pop("events", None)
        return data

    def active(self, model: str, env: str) -> dict[str, Any] | None:
        found = self.client.get("/admin/v1/rollouts", model=model, env=env, active="true", limit=1)
        return found[0] if found else None

    def in_progress(self, model: str, env: str) -> Conflict:
        active = self.active(model, env)
        if active is None:
            return Conflict(f"a rollout of {model} in {env} is already in progress")
        owner = active.get("owner") or {}
        return Conflict(f"rollout {active['id']} of {model} in {env} is already {active['status']} (pid "
                        f"{owner.get('pid')} on {owner.get('host')}): continue it with `opsctl rollout resume "
                        f"{model} --env {env}` or stop it with `opsctl rollout abort {model} --env {env}`")

    def require_model(self, model: str, env: str) -> dict[str, Any]:
        try:
            return self.client.get(f"/admin/v1/models/{path_part(env)}/{path_part(model)}")
        except FleetgateError as e:
            if e.status == 404:
                raise NotFound(f"unknown model {model!r} in {env}: register it first "
                               f"(opsctl registry register {model} --env {env})") from e
            raise

    # --- driving ---------------------------------------------------------------------------------------------

    def _drive(self, run: Run) -> Result:
        record, steps = run.record, run.playbook.steps
        try:
            if record.data["status"] == "aborting":
                raise RolloutAborted(record.data.get("reason") or "aborted")
            if record.data.get("phase") == ROLLING_BACK:
                raise StepFailed(record.data.get("reason") or "failed")
            first = record.data.get("step") or 0
            if record.data.get("phase") == "done":
                first += 1
            for index in range(first, len(steps)):
                self._run_step(run, index)
            record.patch(status="succeeded", phase="done")
            result = Result(record.id, "succeeded", None, self.clock() - run.started)
        except StepFailed as e:
            result = self._roll_back(run, "failed", e.reason)
        except RolloutAborted as e:
            result = self._roll_back(run, "aborted", str(e))
        except (GatewayUnreachable, LostOwnership) as e:
            result = self._stopped(run, e)
        except KeyboardInterrupt:  # Ctrl-C stops this driver, not the rollout
            result = self._stopped(run, FleetgateError("interrupted"))
        return self._close(result)

    def _close(self, result: Result) -> Result:
        self.progress.close(result.to_dict())
        return result

    def _run_step(self, run: Run, index: int) -> None:
        step = run.playbook.steps[index]
        run.record.patch(step=index, phase="started")
        data = {k: v for k, v in step.args.items() if v is not None}
        run.event(index, step.kind, "started", run.plan[index], data)
        try:
            done = STEPS[step.kind](run, index, step)
        except StepFailed as e:
            run.event(index, step.kind, "failed", e.reason, e.data)
            raise
        except (RolloutAborted, GatewayUnreachable, LostOwnership):
            raise
        except FleetgateError as e:  # the admin API or the deployer refused something mid-step
            run.event(index, step.kind, "failed", e.message)
            raise StepFailed(f"{step.kind}: {e.message}") from e
        run.record.patch(step=index, phase="done")
        phase = "skipped" if done.data.get("skipped") else "passed"
        run.event(index, step.kind, phase, done.message, done.data)

    def _roll_back(self, run: Run, final: str, reason: str) -> Result:
        """Undo the rollout and end it `final` (failed or aborted) with `reason`."""
        record = run.record
        record.rolling_back = True
        try:
            if record.data.get("phase") != ROLLING_BACK:
                record.patch(phase=ROLLING_BACK, reason=reason)
            run.event(record.data.get("step") or 0, "rollback", "started", f"rolling back: {reason}")
            roll_back(run)
            status = "aborted" if final == "aborted" or record.data["status"] == "aborting" else "failed"
            record.patch(status=status, reason=reason)
            run.event(record.data.get("step") or 0, "rollback", "passed", "stable restored, new release removed")
            result = Result(record.id, status, reason, self.clock() - run.started)
        except (GatewayUnreachable, LostOwnership) as e:
            return self._stopped(run, e, during="the rollback")
        except (StepFailed, FleetgateError) as e:
            message = getattr(e, "reason", None) or getattr(e, "message", str(e))
            return Result(record.id, record.data["status"],
                          f"{reason}; the rollback did not finish: {message} (retry with `opsctl rollout abort "
                          f"{run.target.model} --env {run.target.env}`)", self.clock() - run.started)
        return result

    def _stopped(self, run: Run, error: FleetgateError, during: str = "the rollout") -> Result:
        """This driver cannot go on (gateway gone, or someone else drives): say how to continue."""
        t = run.target
        hint = "" if isinstance(error, LostOwnership) else (
            f"; {during} is left as it was: `opsctl rollout resume {t.model} --env {t.env}` continues it, "
            f"`opsctl rollout abort {t.model} --env {t.env}` rolls it back")
        return Result(run.record.id, run.record.data.get("status", "running"), f"{error.message}{hint}",
                      self.clock() - run.started)


def _plan_lines(playbook: Playbook) -> list[str]:
    """What each step will do, in words (the --dry-run plan without its numbers): the "started" messages."""
    from opsctl.rollout.playbook import plan

    lines = plan(playbook)
    if len(lines) != len(playbook.steps):
        return [step.kind.replace("_", " ") for step in playbook.steps]
    return [line.split(". ", 1)[-1] for line in lines]
