"""Promotion (a release that serves one environment goes to the next, through a canary there) and the rollback
of a model's stable release to an earlier revision (`opsctl rollback` when no rollout is active).

Promotion refuses before touching anything unless the source is healthy and proven: its stable release deployed
and ready, its endpoints ready and healthy in the gateway, and the newest rollout there succeeded with its version.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.errors import FleetgateError, InvalidRequest, NotFound
from opsctl.client import path_part
from opsctl.deploy import ReleaseNotFound
from opsctl.deploy.helm import merge_values
from opsctl.rollout.engine import Result, find_chart
from opsctl.rollout.steps import (
    DEFAULT_WEIGHT,
    IN_ROTATION,
    StepFailed,
    registry_endpoints,
    route_to_release,
)

if TYPE_CHECKING:
    from opsctl.deploy import Revision
    from opsctl.rollout.engine import RolloutEngine, Target
    from opsctl.rollout.playbook import Playbook

ROLLBACK_DRAIN_S = 60.0


class ApprovalRequired(InvalidRequest):
    """Production promotions pass a manual gate: --approve (exit 2, nothing touched)."""

    code = "approval_required"


def require_approval(target_env: str, approve: bool) -> None:
    """Raises ApprovalRequired for a promotion to production without --approve."""
    if target_env == "production" and not approve:
        raise ApprovalRequired("promotion to production needs --approve (a manual gate): nothing was changed",
                               param="approve")


class _ReleaseOp:
    """What the registry helpers in steps.py need for an operation that has no rollout record."""

    def __init__(self, engine: RolloutEngine, target: Target) -> None:
        self.client = engine.client
        self.deployer = engine.deployer
        self.progress = engine.progress
        self.clock = engine.clock
        self.wait = engine.sleep
        self.target = target
        self.state: dict[str, Any] = {}

    def event(self, name: str, phase: str, message: str, data: Mapping[str, Any] | None = None) -> None:
        self.progress.event({"rollout_id": None, "step": 0, "name": name, "phase": phase, "message": message,
                             "data": dict(data or {})})


# --- rollback of the stable release -----------------------------------------------------------------------


def previous_revision(history: list[Revision]) -> int | None:
    """The revision that served before the deployed one (superseded or deployed, never a failed one)."""
    deployed = [r.revision for r in history if r.status == "deployed"]
    current = deployed[-1] if deployed else max(r.revision for r in history)
    earlier = [r.revision for r in history if r.revision < current and r.status in ("superseded", "deployed")]
    return earlier[-1] if earlier else None


def rollback_stable(engine: RolloutEngine, model: str, env: str, to_revision: int | None) -> Result:
    """Return the model's stable release to `to_revision` (default: the previous one), route the registry to
    its endpoints (added before the old ones drain: no request finds no endpoint), stop the old processes.

    Raises:
        NotFound: the model has no release in `env` (exit 2).
        InvalidRequest: no such revision, or no earlier one (exit 2).
    """
    from opsctl.deploy import check_environment
    from opsctl.deploy.naming import release_name
    from opsctl.rollout.engine import Target

    started = engine.clock()
    stable = release_name(model, check_environment(env))
    target = Target(model=model, env=env, version="", stable=stable, canary=release_name(model, env, "canary"),
                    chart=None, values_files=())
    op = _ReleaseOp(engine, target)
    try:
        history = engine.deployer.history(stable)
    except ReleaseNotFound as e:
        raise NotFound(f"{model} has no release in {env} ({stable}): nothing to roll back") from e
    revisions = [r.revision for r in history]
    if to_revision is None:
        to_revision = previous_revision(history)
        if to_revision is None:
            raise InvalidRequest(f"release {stable} has no earlier revision to roll back to "
                                 f"(revisions: {', '.join(map(str, revisions))})", param="to_revision")
    elif to_revision not in revisions:
        raise InvalidRequest(f"release {stable} has no revision {to_revision} "
                             f"(revisions: {', '.join(map(str, revisions))})", param="to_revision")
    op.event("rollback", "started", f"rolling {stable} back to revision {to_revision}", {"to_revision": to_revision})
    try:
        weight = _serving_weight(op)
        revision = engine.deployer.rollback(stable, to_revision)
        canaries = [e["id"] for e in registry_endpoints(op) if e["release"] == target.canary]
        urls = route_to_release(op, stable, weight, drain_timeout_s=ROLLBACK_DRAIN_S, keep=canaries)
        engine.deployer.prune(stable)
    except (StepFailed, FleetgateError) as e:
        if isinstance(e, FleetgateError) and 400 <= e.status < 500 and not isinstance(e, ReleaseNotFound):
            raise
        reason = getattr(e, "reason", None) or getattr(e, "message", str(e))
        op.event("rollback", "failed", reason)
        result = Result(None, "failed", f"rollback of {stable} failed: {reason}", engine.clock() - started)
        engine.progress.close(result.to_dict())
        return result
    op.event("rollback", "passed", f"{stable} revision {revision.revision} (= revision {to_revision}) serves "
                                   f"{len(urls)} endpoint(s)", {"revision": revision.revision, "endpoints": urls})
    result = Result(None, "succeeded", None, engine.clock() - started)
    engine.progress.close(result.to_dict())
    return result


def _serving_weight(op: _ReleaseOp) -> int:
    """The weight the stable endpoints carry now (the rollback keeps it)."""
    weights = [e["weight"] for e in registry_endpoints(op)
               if e["release"] != op.target.canary and e["status"] in IN_ROTATION and e["weight"] > 0]
    return max(weights) if weights else DEFAULT_WEIGHT


# --- promotion --------------------------------------------------------------------------------------------


def promote(engine: RolloutEngine, playbook: Playbook) -> Result:
    """Check the source environment, then roll its stable release's version and values out to the target
    environment with `playbook` (kind promote). A refused promotion changes nothing and ends `failed`.

    Raises:
        ApprovalRequired: to production without approve (exit 2).
        NotFound: the model is not registered in one of the environments (exit 2).
    """
    from opsctl.deploy.naming import release_name

    model, source, target_env = playbook.model, str(playbook.params["from"]), playbook.environment
    require_approval(target_env, bool(playbook.params.get("approve")))
    engine.require_model(model, source)
    engine.require_model(model, target_env)
    started = engine.clock()
    release = release_name(model, source)
    try:
        version, values = source_release(engine, model, source, release)
    except PromotionRefused as e:
        result = Result(None, "failed", f"promotion refused: {e}", engine.clock() - started)
        engine.progress.close(result.to_dict())
        return result
    merged = merge_values(own_values(values, find_chart(playbook.chart), source), playbook.values)
    promoted = replace(playbook, values=merged, params={**playbook.params, "version": version})
    return engine.start(promoted, version=version)


class PromotionRefused(Exception):
    """The source environment is not in a state to promote from (the message says why)."""


def source_release(engine: RolloutEngine, model: str, env: str, release: str) -> tuple[str, dict[str, Any]]:
    """The version and values of `release` (the source's stable release) once every check passed.

    Raises:
        PromotionRefused: no release, not deployed/ready, unhealthy endpoints, no succeeded rollout of it.
    """
    try:
        status = engine.deployer.status(release)
    except ReleaseNotFound as e:
        raise PromotionRefused(f"{model} has no stable release in {env} ({release})") from e
    if status.current.status != "deployed" or not status.ready:
        raise PromotionRefused(f"release {release} is not ready in {env} (revision {status.current.revision} "
                               f"{status.current.status}, pods ready {status.pods_ready or 'unknown'})")
    unhealthy = _unhealthy_endpoints(engine, model, env, release)
    if unhealthy:
        raise PromotionRefused(f"the endpoints of {release} are not all ready and healthy: {unhealthy}")
    record = _release_record(engine, release)
    newest = engine.client.get("/admin/v1/rollouts", model=model, env=env, limit=1)
    if not newest:
        raise PromotionRefused(f"{model} has no rollout in {env}: promote what a rollout proved there")
    last = newest[0]
    if last["status"] != "succeeded":
        raise PromotionRefused(f"the newest rollout of {model} in {env} ({last['id']}, version {last['version']}) "
                               f"is {last['status']}, not succeeded")
    if record is not None:
        version, values = str(record["version"]), dict(record.get("values") or {})
    else:  # a deployer without release records in the gateway (Helm): the rollout's own
        version, values = str(last["version"]), dict((last.get("spec") or {}).get("values") or {})
        if last["id"] not in status.current.description:
            raise PromotionRefused(f"release {release} revision {status.current.revision} was not deployed by "
                                   f"rollout {last['id']} (its description: {status.current.description!r})")
    if version != str(last["version"]):
        raise PromotionRefused(f"release {release} serves version {version}, but the newest rollout in {env} "
                               f"({last['id']}) was of version {last['version']}")
    return version, values


def _unhealthy_endpoints(engine: RolloutEngine, model: str, env: str, release: str) -> str | None:
    snapshot = engine.client.get("/admin/v1/analysis", model=model, env=env)
    mine = [e for e in snapshot["endpoints"] if e["release"] == release]
    if not mine:
        return f"none is registered with release {release}"
    bad = [f"{e['url']} ({e['status']}, {'healthy' if e['healthy'] else 'unhealthy'}"
           f"{', ejected' if e.get('ejected') else ''})"
           for e in mine if e["status"] != "ready" or not e["healthy"] or e.get("ejected")]
    return ", ".join(bad) or None


def _release_record(engine: RolloutEngine, release: str) -> dict[str, Any] | None:
    try:
        return engine.client.get(f"/admin/v1/releases/{path_part(release)}")
    except FleetgateError as e:
        if e.status == 404:
            return None
        raise


def own_values(values: Mapping[str, Any], chart: Path | None, env: str) -> dict[str, Any]:
    """What a release's values set beyond the chart's defaults for `env` (values.yaml + values-<env>.yaml).

    A release record may hold the computed values (the LocalDeployer's do): promoting those as they are would
    carry the source environment's profile (its name, replica count, resources) into the target environment.
    """
    if chart is None or not (chart / "Chart.yaml").is_file():
        return dict(values)
    from opsctl.deploy.local_plan import chart_defaults

    env_file = chart / f"values-{env}.yaml"
    defaults, _, _ = chart_defaults(chart, [env_file] if env_file.is_file() else [], {})
    return _difference(values, defaults)


_MISSING = object()


def _difference(values: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        default = defaults.get(key, _MISSING)
        if isinstance(value, Mapping) and isinstance(default, Mapping):
            inner = _difference(value, default)
            if inner:
                out[key] = inner
        elif value != default:
            out[key] = value
    return out
