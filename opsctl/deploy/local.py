"""LocalDeployer: a release revision runs as local processes (a real vLLM, or the simulator) on free ports.

Each revision starts beside the previous one, which keeps serving until `prune`, so the caller can move the
registry between them without dropping a request. The Helm-like revision history lives in the gateway
(/admin/v1/releases); pid files and logs live in `{state_dir}/releases/{release}/`.
"""

from __future__ import annotations

import fcntl
import os
import socket
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from gateway.errors import FleetgateError
from opsctl.client import AdminClient, path_part
from opsctl.deploy import (
    PENDING_STATES,
    DeployError,
    DeployerOptions,
    DeployInputError,
    DeploymentStatus,
    Pod,
    ReleaseNotFound,
    Revision,
)
from opsctl.deploy.processes import (
    PidFiles,
    ProcessRecord,
    Reaper,
    free_port,
    is_ours,
    open_private,
    port_free,
    probe,
    restarted,
    spawn,
    stop,
)
from opsctl.deploy.local_plan import STOP_GRACE_S, Plan, chart_defaults, make_plan, values_version
from opsctl.state import RELEASES_DIR

# --- the history, kept by the gateway -------------------------------------------------------------------


class ReleaseRecords:
    """/admin/v1/releases through the admin client; the gateway's errors become deployer errors."""

    def __init__(self, client: AdminClient) -> None:
        self.client = client

    def _call(self, release: str, method: str, path: str, body: Any = None) -> Any:
        try:
            return self.client.request(method, path, json=body)
        except FleetgateError as e:
            if e.status == 404:
                raise ReleaseNotFound(f"release {release} not found (local deployer, gateway "
                                      f"{self.client.base_url})", param="release") from e
            if 400 <= e.status < 500:
                raise DeployInputError(f"release {release}: {e.message}", param="release") from e
            raise DeployError(f"release {release}: {e.message}") from e

    def get(self, release: str) -> dict[str, Any]:
        """The release with its history (oldest first). Raises ReleaseNotFound."""
        return self._call(release, "GET", f"/admin/v1/releases/{path_part(release)}")

    def find(self, release: str) -> dict[str, Any] | None:
        try:
            return self.get(release)
        except ReleaseNotFound:
            return None

    def add_revision(self, release: str, body: Mapping[str, Any]) -> dict[str, Any]:
        return self._call(release, "POST", f"/admin/v1/releases/{path_part(release)}/revisions", dict(body))

    def update_revision(self, release: str, revision: int, **changes: Any) -> dict[str, Any]:
        return self._call(release, "PATCH", f"/admin/v1/releases/{path_part(release)}/revisions/{revision}",
                          changes)

    def delete(self, release: str) -> None:
        self._call(release, "DELETE", f"/admin/v1/releases/{path_part(release)}")


def deployed_revision(record: Mapping[str, Any]) -> dict[str, Any] | None:
    """The revision that serves (the last one `deployed`), or None."""
    deployed = [r for r in record.get("history") or () if r.get("status") == "deployed"]
    return deployed[-1] if deployed else None


def to_revision(entry: Mapping[str, Any]) -> Revision:
    runtime = entry.get("runtime") or {}
    return Revision(revision=int(entry["revision"]), status=str(entry.get("status", "")),
                    chart=str(runtime.get("chart", "local")), app_version=str(entry.get("version", "")),
                    updated=str(entry.get("updated_at", "")), description=str(entry.get("description", "")))


def _processes(entry: Mapping[str, Any]) -> list[ProcessRecord]:
    runtime = entry.get("runtime") or {}
    return [ProcessRecord.from_dict(p) for p in runtime.get("processes") or ()]


# --- the deployer -----------------------------------------------------------------------------------------


class LocalDeployer:
    """The Deployer for one machine: pods are processes, history is in the gateway, files in the state dir.

    Operations on one release are serialized by a lock file in its directory; an operation that finds the
    release's last revision still pending (its opsctl was killed) marks it failed and stops its processes.
    """

    def __init__(self, client: AdminClient, state_dir: Path, *, timeout_s: int = 900,
                 vllm_python: str | None = None, python: str = sys.executable) -> None:
        self.records = ReleaseRecords(client)
        self.state_dir = Path(state_dir).resolve()
        self.pid_files = PidFiles(self.state_dir / RELEASES_DIR)
        self.timeout_s = timeout_s
        self.vllm_python = vllm_python
        self.python = python
        self.reaper = Reaper()
        self.host = socket.gethostname()

    @classmethod
    def from_options(cls, options: DeployerOptions) -> LocalDeployer:
        """FLEETGATE_VLLM_PYTHON is read here, at construction, as KUBECONFIG is for Helm.

        Raises:
            DeployInputError: no state dir or gateway URL in the options.
        """
        if options.state_dir is None or not options.gateway_url:
            raise DeployInputError("the local deployer needs a state dir and the gateway URL (the gateway keeps "
                                   "its release history)", param="deployer")
        return cls(AdminClient(options.gateway_url, options.admin_token), options.state_dir,
                   timeout_s=options.timeout_s, vllm_python=os.environ.get("FLEETGATE_VLLM_PYTHON") or None)

    def close(self) -> None:
        self.records.client.close()

    # Deployer protocol

    def apply(self, release: str, chart: Path | None, values: Mapping[str, Any], *,
              values_files: Sequence[Path] = (), description: str | None = None, timeout_s: int | None = None,
              version: str | None = None) -> Revision:
        """`chart` may be None: then `values` (over `values_files`) are all there is."""
        merged, label, app_version = chart_defaults(chart, values_files, values)
        plan = make_plan(release, merged, python=self.python, vllm_python=self.vllm_python)
        with self._lock(release):
            record = self._recover(release)
            status = "pending-upgrade" if record and record.get("history") else "pending-install"
            done = "Upgrade complete" if status == "pending-upgrade" else "Install complete"
            return self._deploy(release, plan, merged, label=label,
                                version=version or app_version or values_version(merged),
                                status=status, description=description or done, timeout_s=timeout_s)

    def rollback(self, release: str, revision: int, *, timeout_s: int | None = None) -> Revision:
        """A new revision with `revision`'s values and version, started beside the one serving now."""
        with self._lock(release):
            record = self._recover(release) or self.records.get(release)
            history = record.get("history") or []
            target = next((r for r in history if r.get("revision") == revision), None)
            if target is None:
                known = ", ".join(str(r.get("revision")) for r in history)
                raise DeployInputError(f"release {release} has no revision {revision} (it has {known})",
                                       param="revision")
            values = target.get("values") or {}
            plan = make_plan(release, values, python=self.python, vllm_python=self.vllm_python)
            label = str((target.get("runtime") or {}).get("chart", "local"))
            return self._deploy(release, plan, values, label=label, version=str(target.get("version", "")),
                                status="pending-rollback", description=f"Rollback to {revision}",
                                timeout_s=timeout_s)

    def status(self, release: str) -> DeploymentStatus:
        """The serving revision (else the latest) and its processes: Running and ready (/health 200), or
        Exited; Unknown when another machine runs them."""
        record = self.records.get(release)
        entry = deployed_revision(record) or (record.get("history") or [None])[-1]
        if entry is None:
            raise ReleaseNotFound(f"release {release} has no revisions", param="release")
        runtime = entry.get("runtime") or {}
        here = runtime.get("host") in (None, self.host)
        pods = tuple(self._pod(release, p, here) for p in _processes(entry))
        ready = entry.get("status") == "deployed" and bool(pods) and all(p.ready for p in pods)
        return DeploymentStatus(release=release, namespace=None, current=to_revision(entry), pods=pods,
                                engine=f"local {runtime.get('engine', '?')} on {runtime.get('host', '?')}",
                                ready=ready)

    def history(self, release: str) -> list[Revision]:
        return [to_revision(r) for r in self.records.get(release).get("history") or ()]

    def uninstall(self, release: str) -> None:
        """Stop every process of the release, then delete its history (logs stay in its directory)."""
        with self._lock(release):
            running = self.pid_files.read(release)
            self._stop(release, running)
            try:
                self.records.delete(release)
            except ReleaseNotFound:
                if not running:
                    raise

    def endpoints(self, release: str) -> list[str]:
        entry = deployed_revision(self.records.get(release))
        return list(entry.get("endpoints") or ()) if entry else []

    def prune(self, release: str) -> None:
        """Stop the processes of every revision but the deployed one."""
        with self._lock(release):
            entry = deployed_revision(self.records.get(release))
            keep = entry["revision"] if entry else None
            self._stop(release, [p for p in self.pid_files.read(release) if p.revision != keep])

    # For `opsctl up`

    def ensure_running(self, release: str, *, timeout_s: int | None = None) -> list[str]:
        """Restart the deployed revision's processes that died (e.g. after a reboot), on their old ports when
        those are free, so registered endpoints stay valid; wait until ready.

        Returns:
            The deployed revision's endpoints (changed where a port had to change).

        Raises:
            ReleaseNotFound: no such release. DeployError: nothing deployed, or a process does not come back.
        """
        with self._lock(release):
            record = self._recover(release) or self.records.get(release)
            entry = deployed_revision(record)
            if entry is None:
                raise DeployError(f"release {release} has no deployed revision to run")
            plan = make_plan(release, entry.get("values") or {}, python=self.python, vllm_python=self.vllm_python)
            number, processes = int(entry["revision"]), _processes(entry)
            if not processes:
                processes = [ProcessRecord(number, i, 0, free_port(), str(self.pid_files.log(release, number, i)))
                             for i in range(plan.replicas)]
            dead = [p for p in processes if not is_ours(p.pid, p.port)]
            if not dead:
                return list(entry.get("endpoints") or ())
            fresh = {}
            try:
                for old in dead:
                    port = old.port if port_free(old.port) else free_port()
                    fresh[old.index] = self._start(release, plan, number, old.index, port, restarts_of=old)
                self._wait_ready(release, number, list(fresh.values()), timeout_s or plan.timeout_s or self.timeout_s)
            except BaseException:
                self._stop(release, list(fresh.values()))
                raise
            processes = [fresh.get(p.index, p) for p in processes]
            urls = [p.url for p in processes]
            runtime = {**(entry.get("runtime") or {}), "processes": [p.to_dict() for p in processes]}
            self.records.update_revision(release, number, runtime=runtime, endpoints=urls)
            return urls

    def stop_all(self) -> list[str]:
        """Stop every process of this state dir's local releases; their records stay (ensure_running brings
        them back). Works while the gateway is down: the pid files are the truth here.

        Returns:
            The releases that had processes.
        """
        stopped = []
        for release in self.pid_files.releases():
            running = self.pid_files.read(release)
            if running:
                self._stop(release, running)
                stopped.append(release)
        return stopped

    def reap(self) -> None:
        """Collect the exit status of pods this process started that have exited (another opsctl may prune
        them): a long-lived caller such as `opsctl up` calls it now and then."""
        self.reaper.reap()

    # Internals

    def _deploy(self, release: str, plan: Plan, values: Mapping[str, Any], *, label: str, version: str,
                status: str, description: str, timeout_s: int | None) -> Revision:
        runtime = {"engine": plan.engine, "host": self.host, "state_dir": str(self.state_dir), "chart": label}
        created = self.records.add_revision(release, {
            "model": plan.model, "environment": plan.environment, "deployer": "local", "track": plan.track,
            "version": version, "values": dict(values), "status": status, "description": description,
            "runtime": {**runtime, "processes": []}, "endpoints": []})
        number = int(created["revision"])
        timeout = timeout_s or plan.timeout_s or self.timeout_s
        started: list[ProcessRecord] = []
        try:
            for index in range(plan.replicas):
                started.append(self._start(release, plan, number, index, free_port()))
            runtime["processes"] = [p.to_dict() for p in started]
            self.records.update_revision(release, number, runtime=runtime)
            self._wait_ready(release, number, started, timeout)
        except BaseException as e:
            self._stop(release, started)
            reason = e.message if isinstance(e, FleetgateError) else f"interrupted ({type(e).__name__})"
            self._mark_failed(release, number, reason, runtime)
            raise
        done = self.records.update_revision(release, number, status="deployed", description=description,
                                            endpoints=[p.url for p in started])
        return to_revision(done)

    def _mark_failed(self, release: str, number: int, reason: str, runtime: Mapping[str, Any]) -> None:
        """Best effort after a failure: the failure itself is what the caller must see, so an unreachable
        gateway here is reported on stderr and left for the next operation's recovery."""
        try:
            self.records.update_revision(release, number, status="failed", description=reason,
                                         runtime=dict(runtime), endpoints=[])
        except FleetgateError as e:
            print(f"warning: release {release} revision {number} could not be marked failed: {e.message}",
                  file=sys.stderr)

    def _start(self, release: str, plan: Plan, number: int, index: int, port: int, *,
               restarts_of: ProcessRecord | None = None) -> ProcessRecord:
        log = self.pid_files.log(release, number, index)
        try:
            proc = spawn(plan.argv(port), plan.env(), log)
        except OSError as e:
            raise DeployError(f"release {release} revision {number}: cannot start {plan.argv(port)[0]}: "
                              f"{e.strerror or e}") from e
        self.reaper.add(proc)
        record = (restarted(restarts_of, proc.pid, port) if restarts_of
                  else ProcessRecord(number, index, proc.pid, port, str(log)))
        self.pid_files.write(release, record)
        return record

    def _wait_ready(self, release: str, number: int, processes: Sequence[ProcessRecord], timeout_s: int) -> None:
        """Until every process answers /health 200.

        Raises:
            DeployError: a process exited, or `timeout_s` passed (naming the last answer and the log).
        """
        deadline = time.monotonic() + timeout_s
        while True:
            pending: list[tuple[ProcessRecord, str]] = []
            for p in processes:  # children of ours: until exec, their cmdline is still this process's
                code = self.reaper.exit_code(p.pid)
                if code is not None:
                    raise DeployError(f"release {release} revision {number} process {p.index} exited with code "
                                      f"{code} before it was ready; log: {p.log}")
                status, what = probe(p.port)
                if status != 200:
                    pending.append((p, what))
            if not pending:
                return
            if time.monotonic() >= deadline:
                p, what = pending[0]
                raise DeployError(f"release {release} revision {number} not ready within {timeout_s}s: "
                                  f"/health {what} (process {p.index}, {p.url}); log: {p.log}")
            time.sleep(0.2)

    def _stop(self, release: str, processes: Sequence[ProcessRecord]) -> None:
        if not processes:
            return
        left = stop(processes, self.reaper, STOP_GRACE_S)
        for p in processes:
            if p.pid not in left:
                self.pid_files.remove(release, p)
        if left:
            raise DeployError(f"release {release}: process groups {left} did not exit after SIGKILL")

    def _pod(self, release: str, process: ProcessRecord, here: bool) -> Pod:
        name = f"{release}-r{process.revision}-{process.index}"
        if not here:
            return Pod(name, "Unknown", ready=False, restarts=process.restarts)
        self.reaper.exit_code(process.pid)
        if not is_ours(process.pid, process.port):
            return Pod(name, "Exited", ready=False, restarts=process.restarts)
        return Pod(name, "Running", ready=probe(process.port)[0] == 200, restarts=process.restarts)

    def _recover(self, release: str) -> dict[str, Any] | None:
        """The release record, after marking a revision left pending by a killed opsctl failed (its
        processes stopped). Called with the release's lock held: nothing else here is changing it."""
        record = self.records.find(release)
        if record is None:
            return None
        stuck = [r for r in record.get("history") or () if r.get("status") in PENDING_STATES]
        for entry in stuck:
            number = int(entry["revision"])
            self._stop(release, [p for p in self.pid_files.read(release) if p.revision == number])
            self.records.update_revision(release, number, status="failed",
                                         description=f"{entry.get('status')} interrupted (opsctl stopped)")
        return self.records.get(release) if stuck else record

    @contextmanager
    def _lock(self, release: str) -> Iterator[None]:
        """An exclusive flock on the release's directory for one operation; a second one fails fast.

        Raises:
            DeployError: another operation on this release is running (from this state dir).
        """
        path = self.pid_files.directory(release) / ".lock"
        fd = open_private(path, os.O_RDWR)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as e:
                raise DeployError(f"another opsctl operation is changing release {release} right now "
                                  f"(lock {path}); try again when it has finished") from e
            yield
        finally:
            os.close(fd)
