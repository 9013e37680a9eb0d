"""Admin API: the audit log, read in pages (`GET /admin/v1/audit`) or exported whole as JSON lines or CSV.

An org principal sees its own org's entries only. Pages are newest first, by id; the `X-Next-Before-Id`
header is the next page's cursor. Exports stream oldest first, batch by batch, in constant memory.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import re
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import orjson
from aiohttp import web

from analytics_lake.report_args import ReportArgumentError, check_range, parse_since, parse_until
from gateway import appkeys
from gateway.admin import access, auditing
from gateway.admin.common import reply
from gateway.admin.inputs import query_int, query_str
from gateway.errors import InvalidRequest, NotFound
from gateway.store.models import AuditEntry, AuditFilter

MAX_PAGE = 1000
EXPORT_BATCH = 1000
MAX_CURSOR = 10**18 - 1  # query_int reads at most 18 digits
NEXT_PAGE_HEADER = "X-Next-Before-Id"
CONTENT_TYPES = {"jsonl": "application/x-ndjson", "csv": "text/csv; charset=utf-8"}
CSV_COLUMNS = tuple(f.name for f in dataclasses.fields(AuditEntry))
_ACTION = re.compile(r"\*|[A-Za-z0-9_.:-]{1,200}\*?", re.ASCII)
_ORG_ID = re.compile(r"org_[0-9a-f]{16}", re.ASCII)  # as gateway/store/ids.py makes them


async def _org_id(request: web.Request, ref: str | None) -> str | None:
    """The org the entries are limited to: `?org=` (name or id, within the caller's scope), else the caller's.

    A removed org is no longer found by name, but its entries stay readable by its id."""
    if ref is None:
        return access.org_scope(request)
    try:
        org_id = (await request.app[appkeys.STORE].get_org(ref)).id
    except NotFound:
        if not _ORG_ID.fullmatch(ref):
            raise
        org_id = ref
    access.check_org(request, org_id)
    return org_id


async def filters_of(request: web.Request) -> AuditFilter:
    """?actor= ?action= (exact, or a prefix ending in *) ?target= ?org= ?since= ?until= (exclusive)."""
    action = query_str(request, "action")
    if action is not None and not _ACTION.fullmatch(action):
        raise InvalidRequest("query parameter 'action' must be an action such as key.create, or a prefix ending "
                             "in * such as key.*.", param="action")
    try:
        since_text = query_str(request, "since", max_length=64)
        until_text = query_str(request, "until", max_length=64)
        since = parse_since(since_text) if since_text else None
        until = parse_until(until_text) if until_text else None
        check_range(since, until)
    except ReportArgumentError as e:
        raise InvalidRequest(str(e), param=e.argument) from e
    return AuditFilter(actor=query_str(request, "actor"), action=action, target=query_str(request, "target"),
                       org_id=await _org_id(request, query_str(request, "org")), since=since, until=until)


async def list_audit(request: web.Request) -> web.Response:
    """Newest first: ?limit= (1-1000, default 100) entries with an id below ?before_id=, filtered."""
    filters = await filters_of(request)
    limit = query_int(request, "limit", 100, maximum=MAX_PAGE)
    before_id = query_int(request, "before_id", 0, maximum=MAX_CURSOR) or None
    entries = await request.app[appkeys.STORE].list_audit(filters, limit=limit, before_id=before_id)
    response = reply([e.to_dict() for e in entries])
    if len(entries) == limit:  # maybe more: the last id is the next page's cursor
        response.headers[NEXT_PAGE_HEADER] = str(entries[-1].id)
    return response


def jsonl(entries: Sequence[AuditEntry]) -> bytes:
    """One JSON object per line, as `GET /admin/v1/audit` lists them."""
    return b"".join(orjson.dumps(e.to_dict()) + b"\n" for e in entries)


def csv_rows(entries: Sequence[AuditEntry]) -> bytes:
    """CSV rows in CSV_COLUMNS order; before, after and detail as JSON text, None as an empty cell."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    for entry in entries:
        cells = auditing.flat(entry)
        writer.writerow([cells[c] for c in CSV_COLUMNS])
    return buffer.getvalue().encode()


def _csv_header() -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer).writerow(CSV_COLUMNS)
    return buffer.getvalue().encode()


ENCODERS: dict[str, Callable[[Sequence[AuditEntry]], bytes]] = {"jsonl": jsonl, "csv": csv_rows}


async def export_audit(request: web.Request) -> web.StreamResponse:
    """Every matching entry, oldest first, as ?format=jsonl (default) or csv; streamed.

    The export ends at the newest entry when it started: it is a consistent snapshot, and it ends
    however fast entries are added meanwhile."""
    fmt = query_str(request, "format", "jsonl")
    if fmt not in ENCODERS:
        raise InvalidRequest("query parameter 'format' must be jsonl or csv.", param="format")
    filters = await filters_of(request)
    store = request.app[appkeys.STORE]
    newest = await store.list_audit(limit=1)
    end = newest[0].id + 1 if newest else 1
    filename = f"fleetgate-audit-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.{fmt}"
    response = web.StreamResponse(headers={
        "Content-Type": CONTENT_TYPES[fmt], "Content-Disposition": f'attachment; filename="{filename}"',
        "X-Request-ID": request[appkeys.REQUEST_ID],
    })
    response.enable_chunked_encoding()
    await response.prepare(request)
    if fmt == "csv":
        await response.write(_csv_header())
    encode = ENCODERS[fmt]
    after_id = 0
    while True:
        batch = await store.list_audit(filters, limit=EXPORT_BATCH, after_id=after_id, before_id=end,
                                       oldest_first=True)
        if batch:
            await response.write(encode(batch))
        if len(batch) < EXPORT_BATCH:
            break
        after_id = batch[-1].id
    await response.write_eof()
    return response


def setup(app: web.Application) -> None:
    auditing.install(app)
    app.router.add_get("/admin/v1/audit", list_audit)
    app.router.add_get("/admin/v1/audit/export", export_audit)
