"""Admin API: rollout state machines and their step events (`/admin/v1/rollouts`).

The rollout engine (opsctl) keeps all its state here, so a rollout survives its driver:
writes are compare-and-set on `version_no`, and at most one rollout per model and
environment is active. Status changes and step events go out live to `/admin/v1/events`.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway import appkeys
from gateway.admin import auditing
from gateway.admin.common import json_body, reply
from gateway.admin.events import publish_live
from gateway.admin.inputs import field, only_fields, path, query_int, query_str
from gateway.admin.orgs import check_model_name, check_name
from gateway.errors import InvalidRequest
from gateway.store.models import (
    ROLLOUT_EVENT_PHASES,
    ROLLOUT_KINDS,
    ROLLOUT_STATUSES,
    Rollout,
    RolloutEvent,
)
from gateway.store.sql_rollouts import MAX_ROLLOUT_PAGE
from gateway.store.validation import INT32_MAX, INT64_MAX, MAX_TEXT_LENGTH, text as free_text

CREATE_FIELDS = ("model", "environment", "version", "kind", "playbook", "spec", "owner")
UPDATE_FIELDS = ("status", "step", "phase", "state", "reason", "owner", "expected_version_no")
EVENT_FIELDS = ("step", "name", "phase", "message", "data")
OWNER_FIELDS = ("host", "pid")
# PATCH fields whose change is announced live as a rollout "status" event.
_ANNOUNCED = ("status", "step", "phase", "reason")


def _owner(body: dict[str, Any]) -> dict[str, Any] | None:
    """`owner`: {"host": str, "pid": int} of the driving process, or null."""
    owner = field(body, "owner", dict)
    if owner is None:
        return None
    unknown = sorted(set(owner) - set(OWNER_FIELDS))
    if unknown or "host" not in owner or "pid" not in owner:
        raise InvalidRequest("'owner' must be an object with exactly 'host' (string) and 'pid' (integer).",
                             param="owner")
    host = owner["host"]
    pid = owner["pid"]
    if not isinstance(host, str) or isinstance(pid, bool) or not isinstance(pid, int):
        raise InvalidRequest("'owner' must be an object with exactly 'host' (string) and 'pid' (integer).",
                             param="owner")
    field(owner, "host", str)  # bounded, no control characters
    if not 0 <= pid <= INT32_MAX:
        raise InvalidRequest("'owner.pid' must be a process id.", param="owner")
    return {"host": host, "pid": pid}


def _free_text(body: dict[str, Any], name: str) -> str | None:
    """Free text that may be empty or span lines (a gate's verdict, a deployer's error)."""
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidRequest(f"'{name}' must be of type str.", param=name)
    try:
        return free_text(name, value, max_length=MAX_TEXT_LENGTH)
    except InvalidRequest as e:
        raise InvalidRequest(f"'{name}' {e.message.removeprefix(name + ' ')}.", param=name) from e


def _query_bool(request: web.Request, name: str) -> bool | None:
    raw = request.query.get(name)
    if not raw:
        return None
    if raw not in ("true", "false"):
        raise InvalidRequest(f"query parameter '{name}' must be true or false.", param=name)
    return raw == "true"


def status_event(rollout: Rollout) -> dict[str, Any]:
    """The live `rollout` event of a status change."""
    return {"name": "status", "rollout_id": rollout.id, "model": rollout.model, "environment": rollout.environment,
            "status": rollout.status, "step": rollout.step, "phase": rollout.phase, "reason": rollout.reason}


def step_event(rollout: Rollout, event: RolloutEvent) -> dict[str, Any]:
    """The live `rollout` event of a step event: its JSON plus the rollout's model and environment."""
    return {**event.to_dict(), "model": rollout.model, "environment": rollout.environment}


def audited(rollout: Rollout) -> dict[str, Any]:
    """A rollout as the audit log records it: the engine's working `state` by its keys only (it is bulky and
    internal; the rollout's own events tell its story)."""
    state = rollout.to_dict()
    state["state_keys"] = sorted(state.pop("state"))
    return state


async def create_rollout(request: web.Request) -> web.Response:
    """Start a rollout; 409 `rollout_in_progress` while another of the model+environment is active."""
    body = await json_body(request)
    only_fields(body, CREATE_FIELDS)
    model = check_model_name(field(body, "model", str, required=True), "model")
    environment = check_name(field(body, "environment", str, required=True), "environment")
    version = field(body, "version", str, required=True)
    kind = field(body, "kind", str, required=True, choices=ROLLOUT_KINDS)
    playbook = field(body, "playbook", str, default="")
    spec = field(body, "spec", dict, default={})
    owner = _owner(body)
    store = request.app[appkeys.STORE]
    rollout = await store.create_rollout(model, environment, version=version, kind=kind, playbook=playbook,
                                         spec=spec, owner=owner)
    await auditing.record(request, "rollout.start", rollout.id, after=audited(rollout))
    await publish_live(request, "rollout", status_event(rollout))
    return reply(rollout.to_dict(), status=201)


async def list_rollouts(request: web.Request) -> web.Response:
    """Rollouts newest first: ?model=, ?env=, ?active=true|false, ?limit= (default 50)."""
    rollouts = await request.app[appkeys.STORE].list_rollouts(
        model=query_str(request, "model"), environment=query_str(request, "env"),
        active=_query_bool(request, "active"), limit=query_int(request, "limit", 50, maximum=MAX_ROLLOUT_PAGE))
    return reply([r.to_dict() for r in rollouts])


async def get_rollout(request: web.Request) -> web.Response:
    """One rollout with its events, oldest first."""
    store = request.app[appkeys.STORE]
    rollout = await store.get_rollout(path(request, "rollout_id"))
    events = await store.list_rollout_events(rollout.id)
    return reply({**rollout.to_dict(), "events": [e.to_dict() for e in events]})


async def update_rollout(request: web.Request) -> web.Response:
    """Advance a rollout (compare-and-set on `expected_version_no`: 409 `rollout_changed` if another wrote)."""
    rollout_id = path(request, "rollout_id")
    body = await json_body(request)
    only_fields(body, UPDATE_FIELDS)
    expected = field(body, "expected_version_no", int, required=True, minimum=1, maximum=INT64_MAX)
    changes = {
        "status": field(body, "status", str, choices=ROLLOUT_STATUSES),
        "step": field(body, "step", int, minimum=0, maximum=INT32_MAX),
        "phase": field(body, "phase", str),
        "state": field(body, "state", dict),
        "reason": _free_text(body, "reason"),
        "owner": _owner(body),
    }
    given = {k: v for k, v in changes.items() if v is not None}
    if not given:
        raise InvalidRequest("Nothing to change: give status, step, phase, state, reason or owner.")
    store = request.app[appkeys.STORE]
    before = await store.get_rollout(rollout_id)
    rollout = await store.update_rollout(rollout_id, expected_version_no=expected, **given)
    await auditing.record(request, "rollout.update", rollout.id, before=audited(before), after=audited(rollout))
    if any(k in given for k in _ANNOUNCED):
        await publish_live(request, "rollout", status_event(rollout))
    return reply(rollout.to_dict())


async def add_event(request: web.Request) -> web.Response:
    """Append a step event to the rollout's timeline; it also goes out live."""
    rollout_id = path(request, "rollout_id")
    body = await json_body(request)
    only_fields(body, EVENT_FIELDS)
    step = field(body, "step", int, required=True, minimum=0, maximum=INT32_MAX)
    name = field(body, "name", str, required=True)
    phase = field(body, "phase", str, required=True, choices=ROLLOUT_EVENT_PHASES)
    message = _free_text(body, "message") or ""
    data = field(body, "data", dict, default={})
    store = request.app[appkeys.STORE]
    rollout = await store.get_rollout(rollout_id)
    event = await store.add_rollout_event(rollout.id, step=step, name=name, phase=phase, message=message, data=data)
    await publish_live(request, "rollout", step_event(rollout, event))
    return reply(event.to_dict(), status=201)


def setup(app: web.Application) -> None:
    r = app.router
    r.add_get("/admin/v1/rollouts", list_rollouts)
    r.add_post("/admin/v1/rollouts", create_rollout)
    r.add_get("/admin/v1/rollouts/{rollout_id}", get_rollout)
    r.add_patch("/admin/v1/rollouts/{rollout_id}", update_rollout)
    r.add_post("/admin/v1/rollouts/{rollout_id}/events", add_event)
