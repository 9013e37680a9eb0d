"""Admin API for declarative configuration: which objects each applied config owns, and a record of each apply.

`opsctl apply` / `opsctl reconcile` write through the ordinary routes, then name what they own here, so
`--prune` can only ever remove its own objects; the apply record puts the git commit in the audit log.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from aiohttp import web

from gateway import appkeys
from gateway.admin import auditing
from gateway.admin.common import json_body, reply
from gateway.admin.inputs import MAX_STRING, field, only_fields, query_str
from gateway.admin.orgs import check_name
from gateway.errors import InvalidRequest
from gateway.store.models import CONFIG_KINDS, OwnershipChange
from gateway.store.sql_config import MAX_OWNED_NAME
from gateway.store.validation import INT32_MAX

MAX_OWNED = 10_000  # objects one config may own
MAX_SOURCE_TEXT = 512
OWNERSHIP_FIELDS = ("owner", "objects", "adopt")
OBJECT_FIELDS = ("kind", "object_id", "name")
APPLIED_FIELDS = ("owner", "source", "dry_run", "summary")
SOURCE_FIELDS = ("repo", "branch", "commit")
SUMMARY_FIELDS = ("added", "changed", "removed")
COMMIT_RE = re.compile(r"[0-9a-fA-F]{4,64}", re.ASCII)


def _member(value: Any, param: str) -> dict[str, Any]:
    """A nested object with its keys prefixed by its path, so every check names `source.repo` or `objects[3].kind`."""
    if not isinstance(value, dict):
        raise InvalidRequest(f"'{param}' must be an object.", param=param)
    return {f"{param}.{name}": item for name, item in value.items()}


def _objects(body: dict[str, Any]) -> list[tuple[str, str, str]]:
    objects = body.get("objects")
    if not isinstance(objects, list):
        raise InvalidRequest("'objects' must be a list of {kind, object_id, name} (an empty list disowns all).",
                             param="objects")
    if len(objects) > MAX_OWNED:
        raise InvalidRequest(f"'objects' must have at most {MAX_OWNED} items.", param="objects")
    refs = []
    for i, value in enumerate(objects):
        item = _member(value, f"objects[{i}]")
        only_fields(item, [f"objects[{i}].{name}" for name in OBJECT_FIELDS])
        refs.append((field(item, f"objects[{i}].kind", str, required=True, choices=CONFIG_KINDS),
                     field(item, f"objects[{i}].object_id", str, required=True, max_length=MAX_STRING),
                     field(item, f"objects[{i}].name", str, required=True, max_length=MAX_OWNED_NAME)))
    return refs


def change_dict(owner: str, change: OwnershipChange) -> dict[str, Any]:
    return {"owner": owner, "objects": [o.to_dict() for o in change.objects], "added": len(change.added),
            "renamed": len(change.renamed), "removed": len(change.removed),
            "adopted": [o.to_dict() for o in change.adopted]}


async def list_ownership(request: web.Request) -> web.Response:
    """The objects each declarative config owns (`?owner=`, `?kind=` narrow it), by owner, kind and name."""
    owner = query_str(request, "owner")
    kind = query_str(request, "kind")
    if kind is not None and kind not in CONFIG_KINDS:
        raise InvalidRequest(f"'kind' must be one of: {', '.join(CONFIG_KINDS)}.", param="kind")
    owned = await request.app[appkeys.STORE].list_owned(
        owner=None if owner is None else check_name(owner, "owner"), kind=kind)
    return reply([o.to_dict() for o in owned])


async def replace_ownership(request: web.Request) -> web.Response:
    """Make `objects` exactly what config `owner` owns; another owner's objects are a 409 unless `adopt`."""
    body = await json_body(request)
    only_fields(body, OWNERSHIP_FIELDS)
    owner = check_name(field(body, "owner", str, required=True), "owner")
    objects = _objects(body)
    adopt = field(body, "adopt", bool, default=False)
    change = await request.app[appkeys.STORE].replace_owned(owner, objects, adopt=adopt)
    if change.changed:
        # Counts, not the objects: a first apply of a large fleet would otherwise write one huge audit entry.
        await auditing.record(
            request, "config.ownership", owner,
            before={"objects": len(change.objects) - len(change.added) + len(change.removed)},
            after={"objects": len(change.objects), "added": len(change.added), "renamed": len(change.renamed),
                   "removed": len(change.removed), "adopted": len(change.adopted),
                   "adopted_from": sorted({o.owner for o in change.adopted})})
    return reply(change_dict(owner, change))


def _printable(value: str, param: str) -> str:
    if not value.isprintable():
        raise InvalidRequest(f"'{param}' must be printable text.", param=param)
    return value


def without_credentials(repo: str) -> str:
    """The repository as the audit log may show it: a URL's user:password@ dropped (tokens travel there)."""
    try:
        parts = urlsplit(repo)
    except ValueError as e:
        raise InvalidRequest("'source.repo' must be a path or a URL git can reach.", param="source.repo") from e
    if parts.scheme and "@" in parts.netloc:
        return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
    return repo


def _source(body: dict[str, Any]) -> dict[str, str] | None:
    if body.get("source") is None:
        return None
    source = _member(body["source"], "source")
    only_fields(source, [f"source.{name}" for name in SOURCE_FIELDS])
    text = {name: _printable(field(source, f"source.{name}", str, required=True, max_length=MAX_SOURCE_TEXT),
                             f"source.{name}") for name in SOURCE_FIELDS}
    if not COMMIT_RE.fullmatch(text["commit"]):
        raise InvalidRequest("'source.commit' must be a commit id of 4 to 64 hex characters.", param="source.commit")
    return {"repo": without_credentials(text["repo"]), "branch": text["branch"], "commit": text["commit"].lower()}


def _summary(body: dict[str, Any]) -> dict[str, int]:
    summary = _member(field(body, "summary", dict, required=True), "summary")
    only_fields(summary, [f"summary.{name}" for name in SUMMARY_FIELDS])
    return {name: field(summary, f"summary.{name}", int, required=True, minimum=0, maximum=INT32_MAX)
            for name in SUMMARY_FIELDS}


async def record_applied(request: web.Request) -> web.Response:
    """Record one `opsctl apply` of config `owner` (its git source, dry run or not, counts) in the audit log."""
    body = await json_body(request)
    only_fields(body, APPLIED_FIELDS)
    applied = {
        "owner": check_name(field(body, "owner", str, required=True), "owner"),
        "source": _source(body),
        "dry_run": field(body, "dry_run", bool, default=False),
        "summary": _summary(body),
    }
    await auditing.record(request, "config.apply", applied["owner"], after=applied)
    return reply(applied, status=201)


def setup(app: web.Application) -> None:
    r = app.router
    r.add_get("/admin/v1/config/ownership", list_ownership)
    r.add_put("/admin/v1/config/ownership", replace_ownership)
    r.add_post("/admin/v1/config/applied", record_applied)
