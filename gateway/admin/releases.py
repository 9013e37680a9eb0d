"""Admin API: deployer releases and their Helm-like revision history (`/admin/v1/releases`).

The local deployer keeps its history here (Helm keeps its own in the cluster); `opsctl deployment
history` and the rollout engine read it. Every change is audited.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway import appkeys
from gateway.admin import auditing
from gateway.admin.common import json_body, reply
from gateway.admin.inputs import MAX_LIST, MAX_URL, field, only_fields, path, query_str, text
from gateway.admin.orgs import check_model_name, check_name
from gateway.admin.registry import check_url
from gateway.errors import InvalidRequest
from gateway.store.models import RELEASE_DEPLOYERS, RELEASE_TRACKS, REVISION_STATUSES, Release, ReleaseRevision
from gateway.store.validation import MAX_TEXT_LENGTH, text as free_text

REVISION_FIELDS = ("model", "environment", "deployer", "track", "version", "values", "status", "description",
                   "runtime", "endpoints")
REVISION_CHANGE_FIELDS = ("status", "runtime", "endpoints", "description")
MAX_REVISION = 2**31 - 1


def _endpoints(body: dict[str, Any]) -> list[str] | None:
    """`endpoints`: a list of http(s) URLs (None when absent)."""
    value = body.get("endpoints")
    if value is None:
        return None
    if not isinstance(value, list) or len(value) > MAX_LIST:
        raise InvalidRequest(f"'endpoints' must be a list of at most {MAX_LIST} http(s) URLs.", param="endpoints")
    urls = []
    for item in value:
        if not isinstance(item, str):
            raise InvalidRequest("'endpoints' must be a list of http(s) URLs.", param="endpoints")
        try:
            urls.append(check_url(text(item, "endpoints", max_length=MAX_URL)))
        except InvalidRequest as e:
            raise InvalidRequest(f"'endpoints' must be a list of http(s) URLs: {e.message}",
                                 param="endpoints") from e
    return urls


def _description(body: dict[str, Any]) -> str | None:
    """Free text that may be empty or span lines (a deployer's message)."""
    value = body.get("description")
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidRequest("'description' must be of type str.", param="description")
    try:
        return free_text("description", value, max_length=MAX_TEXT_LENGTH)
    except InvalidRequest as e:
        raise InvalidRequest(f"'description' {e.message.removeprefix('description ')}.", param="description") from e


def _release_name(request: web.Request) -> str:
    return check_name(path(request, "name"), "name")


def _revision_number(request: web.Request) -> int:
    raw = request.match_info["revision"]
    if not raw.isascii() or not raw.isdigit() or len(raw) > 10 or not 1 <= int(raw) <= MAX_REVISION:
        raise InvalidRequest(f"'revision' must be a positive integer, got {raw[:16]!r}.", param="revision")
    return int(raw)


async def list_releases(request: web.Request) -> web.Response:
    """Releases in name order, filtered by ?model=, ?env= and ?deployer=."""
    model = query_str(request, "model")
    env = query_str(request, "env")
    deployer = query_str(request, "deployer")
    if deployer is not None and deployer not in RELEASE_DEPLOYERS:
        raise InvalidRequest(f"'deployer' must be one of: {', '.join(RELEASE_DEPLOYERS)}.", param="deployer")
    releases = await request.app[appkeys.STORE].list_releases(model=model, environment=env, deployer=deployer)
    return reply([r.to_dict() for r in releases])


async def get_release(request: web.Request) -> web.Response:
    """One release (its latest revision flattened in) with its whole history, oldest first."""
    name = _release_name(request)
    store = request.app[appkeys.STORE]
    release = await store.get_release(name)
    history = await store.release_history(name)
    return reply({**release.to_dict(), "history": [r.to_dict() for r in history]})


def audited(revision: ReleaseRevision | Release) -> dict[str, Any]:
    """A revision (or a release) as the audit log records it: without the deployer's runtime facts (pids, ports)."""
    state = revision.to_dict()
    state.pop("runtime")
    return state


async def add_revision(request: web.Request) -> web.Response:
    """Record the release's next revision (creating the release with its first)."""
    name = _release_name(request)
    body = await json_body(request)
    only_fields(body, REVISION_FIELDS)
    values = {
        "model": check_model_name(field(body, "model", str, required=True), "model"),
        "environment": check_name(field(body, "environment", str, required=True), "environment"),
        "deployer": field(body, "deployer", str, required=True, choices=RELEASE_DEPLOYERS),
        "track": field(body, "track", str, required=True, choices=RELEASE_TRACKS),
        "version": field(body, "version", str, required=True),
        "status": field(body, "status", str, required=True, choices=REVISION_STATUSES),
        "values": field(body, "values", dict, default={}),
        "runtime": field(body, "runtime", dict, default={}),
        "endpoints": _endpoints(body) or [],
        "description": _description(body) or "",
    }
    store = request.app[appkeys.STORE]
    revision = await store.add_release_revision(name, **values)
    await auditing.record(request, "release.revision", name, after={**audited(revision), "model": values["model"],
                          "environment": values["environment"], "track": values["track"]})
    return reply(revision.to_dict(), status=201)


async def update_revision(request: web.Request) -> web.Response:
    """Change a revision's status, runtime, endpoints or description (`deployed` supersedes the others)."""
    name = _release_name(request)
    number = _revision_number(request)
    body = await json_body(request)
    only_fields(body, REVISION_CHANGE_FIELDS)
    changes = {
        "status": field(body, "status", str, choices=REVISION_STATUSES),
        "runtime": field(body, "runtime", dict),
        "endpoints": _endpoints(body),
        "description": _description(body),
    }
    if all(v is None for v in changes.values()):
        raise InvalidRequest("Nothing to change: give status, runtime, endpoints or description.")
    store = request.app[appkeys.STORE]
    before = next((r for r in await store.release_history(name) if r.revision == number), None)
    revision = await store.update_release_revision(name, number, **changes)
    await auditing.record(request, "release.update", name, before=audited(before) if before else None,
                          after=audited(revision))
    return reply(revision.to_dict())


async def delete_release(request: web.Request) -> web.Response:
    """Forget the release and its history (as `helm uninstall`)."""
    name = _release_name(request)
    store = request.app[appkeys.STORE]
    before = await store.get_release(name)
    await store.delete_release(name)
    await auditing.record(request, "release.delete", name, before=audited(before))
    return reply({"deleted": name})


def setup(app: web.Application) -> None:
    r = app.router
    r.add_get("/admin/v1/releases", list_releases)
    r.add_get("/admin/v1/releases/{name}", get_release)
    r.add_delete("/admin/v1/releases/{name}", delete_release)
    r.add_post("/admin/v1/releases/{name}/revisions", add_revision)
    r.add_patch("/admin/v1/releases/{name}/revisions/{revision}", update_revision)
