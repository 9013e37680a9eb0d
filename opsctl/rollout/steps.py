"""What each playbook step does to the deployer and the registry, and how a rollout is undone.

Every step is idempotent (a resumed rollout re-runs the step it was in): weights are set to absolute values,
endpoints are upserted, a deploy is skipped when this rollout's revision is already deployed, and finalize /
rollback record their sub-steps in the rollout's `state`. Steps raise StepFailed; the engine then rolls back.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

from gateway.errors import FleetgateError
from opsctl.client import path_part
from opsctl.deploy import PENDING_STATES, ReleaseNotFound
from opsctl.deploy.helm import merge_values

if TYPE_CHECKING:
    from opsctl.rollout.engine import Run
    from opsctl.rollout.playbook import Gates, Step

# Endpoint weights are integers: one percent of the traffic is UNIT weight, so a 10 % canary beside three
# stable endpoints is 1000 vs 3 × 3000 (exact to 1/10000 of the traffic).
UNIT = 100
DEFAULT_WEIGHT = 100  # what `opsctl registry register` gives an endpoint
IN_ROTATION = ("ready", "unhealthy")  # the prober flips these two; disabled and draining are operator choices
APPLY_TIMEOUT_S = 15.0  # a registry change reaches every replica in < 1 s; this is for a loaded gateway
APPLY_POLL_S = 0.1
SMOKE_TIMEOUT_S = 25  # below the admin client's 30 s read timeout


@dataclass(frozen=True)
class Done:
    """What a step reports when it passed: one line, and data for the event (weights, gate results …)."""

    message: str
    data: Mapping[str, Any] = field(default_factory=dict)


class StepFailed(Exception):
    """A step could not do its job: the rollout rolls back and ends `failed` with `reason`."""

    def __init__(self, reason: str, data: Mapping[str, Any] | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.data = dict(data or {})


# --- the registry -----------------------------------------------------------------------------------------


def registry_endpoints(run: Run) -> list[dict[str, Any]]:
    """The model's endpoints in the rollout's environment, as the registry has them."""
    t = run.target
    return run.client.get(f"/admin/v1/models/{path_part(t.env)}/{path_part(t.model)}")["endpoints"]


def analysis_snapshot(run: Run) -> dict[str, Any]:
    return run.client.get("/admin/v1/analysis", model=run.target.model, env=run.target.env)


def patch_endpoint(run: Run, endpoint_id: str, **changes: Any) -> None:
    run.client.patch(f"/admin/v1/endpoints/{path_part(endpoint_id)}", changes)


def new_endpoints(run: Run, endpoints: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The endpoints of the release this rollout deployed (by URL, and in canary mode by release label)."""
    urls = set(run.state.get("new_urls") or ())
    label = run.target.canary if run.state.get("mode") == "canary" else None
    return [e for e in endpoints if e["url"] in urls or (label is not None and e["release"] == label)]


def baseline_endpoints(run: Run, endpoints: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The endpoints that served before the rollout (saved at `register`), still in the registry."""
    saved = run.state.get("baseline") or {}
    return [e for e in endpoints if e["id"] in saved]


def split_weights(percent: float, baseline: Sequence[str], new: Sequence[str]) -> dict[str, int]:
    """Endpoint weights that send `percent` % of the traffic to `new` and the rest to `baseline`.

    The balancer splits by per-endpoint weight over all routable endpoints, so each side's share is spread
    evenly over its endpoints (the first ones take the rounding remainder).
    """
    weights: dict[str, int] = {}
    for ids, share in ((baseline, 100 - percent), (new, percent)):
        if not ids:
            continue
        total = round(share * UNIT)
        base, extra = divmod(total, len(ids))
        weights.update({i: base + (1 if n < extra else 0) for n, i in enumerate(ids)})
    return weights


def _matches(seen: Mapping[str, Any], want: Mapping[str, Any]) -> bool:
    for key, value in want.items():
        have = seen.get(key)
        if key == "status" and value in IN_ROTATION:
            if have not in IN_ROTATION:
                return False
        elif key == "mirror_percent":
            if not math.isclose(float(have or 0.0), float(value), abs_tol=1e-6):
                return False
        elif have != value:
            return False
    return True


def wait_applied(run: Run, expected: Mapping[str, Mapping[str, Any]], gone: Iterable[str] = ()) -> None:
    """Wait until the gateway routes by the registry change: `expected` endpoint id → fields it must show in
    the analysis endpoint list (weight, status, mirror_percent), and `gone` ids absent.

    Raises:
        StepFailed: not applied within APPLY_TIMEOUT_S.
    """
    gone = set(gone)
    deadline = run.clock() + APPLY_TIMEOUT_S
    while True:
        seen = {e["id"]: e for e in analysis_snapshot(run)["endpoints"]}
        pending = [i for i, want in expected.items() if i not in seen or not _matches(seen[i], want)]
        pending += [i for i in gone if i in seen]
        if not pending:
            return
        if run.clock() >= deadline:
            raise StepFailed(f"the gateway did not apply the registry change within {APPLY_TIMEOUT_S:.0f} s "
                             f"(endpoints {', '.join(sorted(pending))})")
        run.wait(APPLY_POLL_S)


def set_endpoints(run: Run, changes: Mapping[str, Mapping[str, Any]]) -> None:
    """PATCH each endpoint whose registry record differs, then wait until the gateway applied them all."""
    current = {e["id"]: e for e in registry_endpoints(run)}
    present = {i: c for i, c in changes.items() if i in current}
    for endpoint_id, change in present.items():
        record = current[endpoint_id]
        diff = {k: v for k, v in change.items() if record.get(k) != v}
        if diff.get("status") in IN_ROTATION and record.get("status") in IN_ROTATION:
            del diff["status"]  # the prober owns ready <-> unhealthy
        if diff:
            patch_endpoint(run, endpoint_id, **diff)
    wait_applied(run, present)


def drain(run: Run, endpoint_ids: Sequence[str], timeout_s: float) -> None:
    """Stop routing to these endpoints, wait for their in-flight requests, delete them."""
    from opsctl.deploy.registry_sync import drain_and_remove

    if endpoint_ids:
        drain_and_remove(run.client, run.target.model, run.target.env, list(endpoint_ids), timeout_s=timeout_s)
        wait_applied(run, {}, gone=endpoint_ids)


def full_weight(run: Run) -> int:
    """The weight a stable endpoint had before the rollout (the first one in rotation), else the default."""
    for saved in (run.state.get("baseline") or {}).values():
        if saved["status"] in IN_ROTATION and saved["weight"] > 0:
            return int(saved["weight"])
    return DEFAULT_WEIGHT


def route_to_release(run: Run, release: str, weight: int, *, drain_timeout_s: float, keep: Iterable[str] = ()
                     ) -> list[str]:
    """Make the registry route the model to `release`'s current endpoints only: add them (ready, `weight`),
    then drain and remove every other endpoint but the `keep` ids. New endpoints are routable before old
    ones stop, so no request is refused in between.

    Returns:
        The release's endpoint URLs.
    """
    from opsctl.deploy.registry_sync import sync_endpoints

    t = run.target
    urls = run.deployer.endpoints(release)
    if not urls:
        raise StepFailed(f"release {release} has no endpoints to route to")
    sync_endpoints(run.client, t.model, t.env, release, urls, status="ready", weight=weight)
    endpoints = registry_endpoints(run)
    set_endpoints(run, {e["id"]: {"status": "ready", "weight": weight} for e in endpoints if e["url"] in urls})
    keep = set(keep)
    old = [e["id"] for e in endpoints if e["url"] not in urls and e["id"] not in keep]
    drain(run, old, drain_timeout_s)
    return urls


# --- deployer helpers -------------------------------------------------------------------------------------


def deployed_by_us(run: Run, release: str) -> int | None:
    """The revision of `release` this rollout deployed and that is deployed now, if any (a resumed deploy
    must not deploy again: the description carries the rollout id)."""
    try:
        history = run.deployer.history(release)
    except ReleaseNotFound:
        return None
    deployed = [r for r in history if r.status == "deployed"]
    if deployed and deployed[-1].description == run.marker:
        return deployed[-1].revision
    return None


def deployed_revision(run: Run, release: str) -> int | None:
    """The revision of `release` deployed now (None: no release, or none deployed)."""
    try:
        history = run.deployer.history(release)
    except ReleaseNotFound:
        return None
    deployed = [r for r in history if r.status == "deployed"]
    return deployed[-1].revision if deployed else None


def _exists(run: Run, release: str) -> bool:
    try:
        run.deployer.history(release)
    except ReleaseNotFound:
        return False
    return True


def uninstall(run: Run, release: str) -> None:
    try:
        run.deployer.uninstall(release)
    except ReleaseNotFound:
        pass


def apply(run: Run, release: str, *, canary: bool) -> int:
    t = run.target
    values = overlay(run.playbook.values, canary=canary)
    revision = run.deployer.apply(release, t.chart, values, values_files=t.values_files, description=run.marker,
                                  timeout_s=run.playbook.readiness_timeout_s, version=t.version)
    return revision.revision


def overlay(values: Mapping[str, Any], *, canary: bool) -> dict[str, Any]:
    """The playbook's values plus what the engine decides: the engine registers endpoints itself (the chart's
    registration Jobs stay off), and a canary's objects get the `-canary` suffix."""
    merged = merge_values(values, {"registration": {"enabled": False}})
    return merge_values(merged, {"nameSuffix": "canary"}) if canary else merged


# --- steps ------------------------------------------------------------------------------------------------


def new_release(run: Run) -> str:
    return run.target.canary if run.state.get("mode") == "canary" else run.target.stable


def step_deploy(run: Run, index: int, step: Step) -> Done:
    """Deploy the new version as the canary release beside stable (or as stable: the model's first release)."""
    t = run.target
    if "mode" not in run.state:
        mode = "canary" if deployed_revision(run, t.stable) is not None else "initial"
        run.save(mode=mode)
    canary = run.state["mode"] == "canary"
    if canary:
        _refuse_stuck_stable(run)
    release = new_release(run)
    revision = deployed_by_us(run, release)
    if revision is not None:
        run.save(new_revision=revision)
        return Done(f"{release} revision {revision} already deployed", {"revision": revision})
    if canary:
        if _exists(run, release):
            uninstall(run, release)  # a leftover canary (an interrupted deploy, an old rollout): start clean
    else:
        _clear_interrupted_install(run, release)
    try:
        revision = apply(run, release, canary=canary)
    except FleetgateError as e:
        raise StepFailed(f"deploy of {release} failed: {e.message}") from e
    run.save(new_revision=revision)
    return Done(f"{release} revision {revision} deployed ({t.version})", {"revision": revision})


def _refuse_stuck_stable(run: Run) -> None:
    """A stable release stuck in a pending operation would fail finalize after the whole analysis: fail now,
    with the command that recovers it (Helm; the LocalDeployer recovers by itself)."""
    status = run.deployer.status(run.target.stable)
    if status.recovery:
        raise StepFailed(f"the stable release {run.target.stable} is stuck in {status.current.status} "
                         f"(revision {status.current.revision}); if no other helm or opsctl operation is still "
                         f"running on it, recover with: {status.recovery}")


def _clear_interrupted_install(run: Run, release: str) -> None:
    """A first release that an interrupted run of this rollout left pending is removed before deploying again."""
    try:
        history = run.deployer.history(release)
    except ReleaseNotFound:
        return
    if history and all(r.description == run.marker for r in history) and history[-1].status in PENDING_STATES:
        uninstall(run, release)


def step_wait_ready(run: Run, index: int, step: Step) -> Done:
    release = new_release(run)
    deadline = run.clock() + run.playbook.readiness_timeout_s
    while True:
        try:
            status = run.deployer.status(release)
        except FleetgateError as e:
            raise StepFailed(f"cannot read the status of {release}: {e.message}") from e
        if status.ready:
            break
        if run.clock() >= deadline:
            raise StepFailed(f"release {release} not ready within {run.playbook.readiness_timeout_s} s "
                             f"(revision {status.current.revision} {status.current.status}, "
                             f"pods ready {status.pods_ready or 'unknown'})")
        run.wait(1.0)
    if not run.deployer.endpoints(release):
        raise StepFailed(f"release {release} is ready but has no endpoints")
    return Done(f"{release} ready" + (f" ({status.pods_ready} pods)" if status.pods_ready else ""))


def step_register(run: Run, index: int, step: Step) -> Done:
    """Register the new release's endpoints disabled with weight 0, after saving the baseline's weights."""
    from opsctl.deploy.registry_sync import sync_endpoints

    t = run.target
    release = new_release(run)
    urls = run.deployer.endpoints(release)
    endpoints = registry_endpoints(run)
    if "baseline" not in run.state:  # saved once: a resumed register must not save the weights it set
        baseline = {e["id"]: {"url": e["url"], "release": e["release"], "weight": e["weight"],
                              "status": e["status"]}
                    for e in endpoints if e["url"] not in urls and e["release"] != t.canary}
        run.save(baseline=baseline)
    run.save(new_urls=urls)
    sync_endpoints(run.client, t.model, t.env, release, urls, status="disabled", weight=0)
    endpoints = registry_endpoints(run)
    stale = [e["id"] for e in endpoints if e["release"] == release and e["url"] not in urls
             and e["id"] not in run.state["baseline"]]
    drain(run, stale, 5)
    mine = {e["id"]: {"status": "disabled", "weight": 0} for e in endpoints if e["url"] in urls}
    set_endpoints(run, mine)
    return Done(f"{len(mine)} endpoint(s) of {release} registered disabled", {"endpoints": sorted(mine)})


def step_smoke(run: Run, index: int, step: Step) -> Done:
    body: dict[str, Any] = {"requests": step.args["requests"], "timeout_s": SMOKE_TIMEOUT_S}
    if step.args.get("kind"):
        body["kind"] = step.args["kind"]
    results = []
    for endpoint in new_endpoints(run, registry_endpoints(run)):
        answer = run.client.post(f"/admin/v1/endpoints/{path_part(endpoint['id'])}/smoke", body)
        results.append(answer)
    if not results:
        raise StepFailed("no endpoint of the new release to smoke-test")
    sent = [r for answer in results for r in answer["results"]]
    ok = sum(1 for r in sent if r.get("status") == 200 and not r.get("error"))
    summary = f"{ok}/{len(sent)} OK"
    if not all(answer["passed"] for answer in results):
        errors = sorted({str(r.get("error") or r.get("status")) for r in sent
                         if r.get("status") != 200 or r.get("error")})
        raise StepFailed(f"smoke test failed: {summary} ({'; '.join(errors)[:300]})", {"results": results})
    return Done(summary, {"results": results})


def step_shadow(run: Run, index: int, step: Step) -> Done:
    """Mirror a share of stable's live traffic to the new release and compare its replies' health."""
    endpoints = registry_endpoints(run)
    new = new_endpoints(run, endpoints)
    if not baseline_endpoints(run, endpoints):
        return Done("skipped: no stable endpoints, so no live traffic to mirror", {"skipped": True})
    percent = float(step.args["percent"])
    share = round(percent / max(len(new), 1), 4)
    gates = shadow_gates(step)
    try:
        set_endpoints(run, {e["id"]: {"mirror_percent": share} for e in new})
        run.event(index, step.kind, "progress", f"mirroring {percent:g} % of live traffic to {new_release(run)}",
                  {"mirror_percent": percent})
        done = analyze(run, index, step, gates, traffic="shadow")
    finally:
        set_endpoints(run, {e["id"]: {"mirror_percent": 0.0} for e in new})
    return done


def shadow_gates(step: Step) -> Gates:
    gates = step.gates
    assert gates is not None
    overrides = {k: step.args[k] for k in ("min_requests", "timeout_s") if step.args.get(k) is not None}
    return replace(gates, **overrides)


def step_weight(run: Run, index: int, step: Step) -> Done:
    percent = float(step.args["percent"])
    endpoints = registry_endpoints(run)
    new = new_endpoints(run, endpoints)
    if not new:
        raise StepFailed(f"no endpoint of {new_release(run)} in the registry")
    saved = run.state.get("baseline") or {}
    rotation = [e["id"] for e in baseline_endpoints(run, endpoints)
                if saved[e["id"]]["status"] in IN_ROTATION and saved[e["id"]]["weight"] > 0]
    weights = split_weights(percent, rotation, [e["id"] for e in new])
    changes = {i: {"weight": w} for i, w in weights.items()}
    for e in new:
        changes[e["id"]]["status"] = "ready"
    set_endpoints(run, changes)
    run.save(canary_weight=percent)
    shares = {"weights": weight_shares(run, percent, bool(rotation))}
    run.event(index, step.kind, "progress", f"{percent:g} % of the traffic to {new_release(run)}", shares)
    done = analyze(run, index, step, step.gates, traffic="live")
    return Done(done.message, {**shares, **done.data})


def weight_shares(run: Run, percent: float, has_baseline: bool) -> dict[str, float]:
    shares = {new_release(run): percent if has_baseline else 100.0}
    if has_baseline and run.state.get("mode") == "canary":
        shares[run.target.stable] = 100.0 - percent
    elif has_baseline:
        shares["previous"] = 100.0 - percent
    return shares


def step_pause(run: Run, index: int, step: Step) -> Done:
    seconds = float(step.args["seconds"])
    run.wait(seconds)
    return Done(f"paused {seconds:g} s")


def step_finalize(run: Run, index: int, step: Step) -> Done:
    """Make the new version stable (Flagger-like): upgrade the stable release, route to it, remove the canary.

    Sub-steps are recorded in the rollout's state, so a resumed finalize continues where it stopped.
    """
    t = run.target
    drain_timeout_s = float(step.args.get("drain_timeout_s", 60))
    canary = run.state.get("mode") == "canary"
    if canary and "stable_revision" not in run.state:
        revision = deployed_by_us(run, t.stable)
        if revision is None:
            run.save(stable_previous_revision=deployed_revision(run, t.stable))
            run.event(index, step.kind, "progress", f"upgrading {t.stable} to {t.version}")
            try:
                revision = apply(run, t.stable, canary=False)
            except FleetgateError as e:
                raise StepFailed(f"upgrade of {t.stable} to {t.version} failed: {e.message}") from e
        run.save(stable_revision=revision)
    if not run.state.get("stable_routed"):
        canary_ids = [e["id"] for e in new_endpoints(run, registry_endpoints(run))] if canary else []
        urls = route_to_release(run, t.stable, full_weight(run), drain_timeout_s=drain_timeout_s, keep=canary_ids)
        run.save(stable_routed=True, stable_urls=urls)
        run.event(index, step.kind, "progress", f"{t.stable} routed ({len(urls)} endpoint(s))",
                  {"weights": {t.stable: 100.0}})
    if canary and not run.state.get("canary_removed"):
        ids = [e["id"] for e in new_endpoints(run, registry_endpoints(run))]
        set_endpoints(run, {i: {"weight": 0} for i in ids})
        drain(run, ids, drain_timeout_s)
        run.save(canary_removed=True)
    if not run.state.get("stable_pruned"):
        run.deployer.prune(t.stable)
        run.save(stable_pruned=True)
    if canary and not run.state.get("canary_uninstalled"):
        uninstall(run, t.canary)
        run.save(canary_uninstalled=True)
    return Done(f"{t.stable} serves {t.version}", {"weights": {t.stable: 100.0}})


STEPS = {"deploy": step_deploy, "wait_ready": step_wait_ready, "register": step_register, "smoke": step_smoke,
         "shadow": step_shadow, "weight": step_weight, "pause": step_pause, "finalize": step_finalize}


# --- analysis ---------------------------------------------------------------------------------------------


def baseline_release(run: Run) -> str | None:
    """The release label the new release is compared with: the stable release, else the commonest label of
    the endpoints that served before (None: nothing to compare with)."""
    labels = [s["release"] for s in (run.state.get("baseline") or {}).values() if s["status"] in IN_ROTATION]
    mine = new_release(run)
    if run.target.stable in labels and run.target.stable != mine:
        return run.target.stable
    labels = [label for label in labels if label != mine]
    return max(set(labels), key=labels.count) if labels else None


def analyze(run: Run, index: int, step: Step, gates: Gates | None, *, traffic: str) -> Done:
    """One analysis window: snapshots of the gateway's per-release counters `interval_s` apart, extended until
    the new release saw `min_requests` (or `timeout_s` passed), then the gates.

    Raises:
        StepFailed: not enough traffic, or a gate failed (the gate results are in the failure's data).
    """
    from opsctl.rollout.analysis import AnalysisReset, enough, evaluate, window

    assert gates is not None
    release, stable = new_release(run), baseline_release(run)
    before = analysis_snapshot(run)
    started = run.clock()
    while True:
        run.wait(gates.interval_s)
        after = analysis_snapshot(run)
        try:
            new = window(before, after, release, traffic)
        except AnalysisReset:
            run.event(index, step.kind, "info", "the gateway restarted: analysis window restarted")
            before, started = after, run.clock()
            continue
        waited = run.clock() - started
        if enough(gates, new):
            break
        if waited >= gates.timeout_s:
            raise StepFailed(f"{step.kind} analysis: not enough traffic: {new.requests} of {gates.min_requests} "
                             f"requests to {release} in {waited:.0f} s", {"new": asdict(new)})
        run.event(index, step.kind, "progress", f"{new.requests} of {gates.min_requests} requests so far",
                  {"new": asdict(new)})
    base = window(before, after, stable, "live") if stable else None
    results = evaluate(gates, new, base)
    data = {"gates": [r.to_dict() for r in results], "new": asdict(new),
            "stable": asdict(base) if base else None, "traffic": traffic}
    failed = [r for r in results if not r.passed]
    if failed:
        raise StepFailed(f"{step.kind} analysis failed: " + "; ".join(f"{r.name}: {r.detail}" for r in failed),
                         data)
    return Done(f"{new.requests} requests, error rate {new.error_rate:.2%}"
                + (f", p95 {new.p95_ms:.0f} ms" if new.p95_ms is not None else ""), data)


# --- rollback ---------------------------------------------------------------------------------------------


def roll_back(run: Run) -> None:
    """Undo the rollout, leaving routing consistent at every moment: mirror off; the stable endpoints' saved
    weights and status back (before the new release stops taking traffic, so no request finds no endpoint);
    the new release's endpoints weight 0 and disabled; if finalize had upgraded stable, the stable release
    rolled back to its previous revision and routed to; the new endpoints removed; the canary uninstalled.

    Each action is idempotent; the one that is not (a deployer rollback) is recorded in the state.
    """
    t = run.target
    endpoints = registry_endpoints(run)
    new = new_endpoints(run, endpoints)
    set_endpoints(run, {e["id"]: {"mirror_percent": 0.0} for e in new if e.get("mirror_percent")})
    saved = run.state.get("baseline") or {}
    set_endpoints(run, {e["id"]: {"weight": saved[e["id"]]["weight"], "status": saved[e["id"]]["status"]}
                        for e in baseline_endpoints(run, endpoints)})
    set_endpoints(run, {e["id"]: {"weight": 0, "status": "disabled"} for e in new})
    if run.state.get("stable_revision") is not None and not run.state.get("stable_restored"):
        _restore_stable(run)
    drain(run, [e["id"] for e in new_endpoints(run, registry_endpoints(run))], 5)
    if run.state.get("mode") == "canary":
        if _exists(run, t.canary):
            uninstall(run, t.canary)
    elif run.state.get("mode") == "initial" and _ours(run, t.stable):
        uninstall(run, t.stable)  # the model's first release, made by this rollout


def _ours(run: Run, release: str) -> bool:
    """True when every revision of `release` was made by this rollout."""
    try:
        history = run.deployer.history(release)
    except ReleaseNotFound:
        return False
    return all(r.description == run.marker for r in history)


def _restore_stable(run: Run) -> None:
    """Finalize had upgraded stable: back to the revision that served before, routed to, the rest drained."""
    t = run.target
    previous = run.state.get("stable_previous_revision")
    if previous is not None and "stable_rolled_back_to" not in run.state:
        if deployed_revision(run, t.stable) != previous:
            revision = run.deployer.rollback(t.stable, previous, timeout_s=run.playbook.readiness_timeout_s)
            run.save(stable_rolled_back_to=revision.revision)
    saved = [s for s in (run.state.get("baseline") or {}).values() if s["release"] == t.stable]
    weight = int(saved[0]["weight"]) if saved and saved[0]["weight"] > 0 else full_weight(run)
    new_ids = [e["id"] for e in new_endpoints(run, registry_endpoints(run))]
    others = [i for i, s in (run.state.get("baseline") or {}).items() if s["release"] != t.stable]
    route_to_release(run, t.stable, weight, drain_timeout_s=60, keep=[*new_ids, *others])
    run.deployer.prune(t.stable)
    run.save(stable_restored=True)
