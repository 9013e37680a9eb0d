"""The export routes: `POST /analytics/v1/exports` queues a job, the runner (gateway/analytics/jobs.py) writes
it into the lake, and a finished job hands out fresh, expiring download links.

Org scope as everywhere in the analytics API: an API key or org principal exports, lists and downloads
its own org's exports only (a job of every org, `org_id` null, is for global callers).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import re
from datetime import datetime
from typing import Any

import orjson
import pyarrow as pa
from aiohttp import web

from analytics_lake.exports import ExportSpec, spec_from_args, spec_from_dict, usd_text
from analytics_lake.report_args import ReportArgumentError
from gateway import appkeys
from gateway.admin import access, auditing
from gateway.admin.common import json_body
from gateway.admin.inputs import MAX_STRING, field, only_fields, query_int, query_str
from gateway.analytics.envelope import FRESHNESS, freshness_headers, reply, unknown_freshness
from gateway.analytics.jobs import RUNNER
from gateway.analytics.params import known_params
from gateway.analytics.presign import LINKS
from gateway.errors import Conflict, InvalidRequest, NotFound, PermissionDenied
from gateway.store import ids
from gateway.store.rows import decode_time
from gateway.store.sql_exports import EXPORT_ID_PREFIX, EXPORT_STATUSES, ExportJob, idempotency_digest

BODY_FIELDS = ("month", "since", "until", "org", "format", "schema")
IDEMPOTENCY_HEADER = "Idempotency-Key"
MAX_ACTIVE_PER_ORG = 10  # queued or running exports of one org (or of all orgs) at a time
DEFAULT_PAGE, MAX_PAGE = 50, 1000
CONTENT_TYPES = {"csv": "text/csv; charset=utf-8", "parquet": "application/vnd.apache.parquet",
                 "sqlite": "application/vnd.sqlite3"}
DOWNLOAD_CHUNK = 256 * 1024
_IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,255}", re.ASCII)
_JOB_ID = re.compile(rf"{EXPORT_ID_PREFIX}_[0-9a-f]{{16}}", re.ASCII)


def job_view(job: ExportJob) -> dict[str, Any]:
    """A job as the API shows it (no lease internals, no storage path)."""
    spec = spec_from_dict(job.spec)
    return {
        "id": job.id, "object": "export", "status": job.status, "org_id": job.org_id,
        "since": job.spec["start"], "until": job.spec["end"], "format": spec.format, "schema": spec.schema,
        "filename": spec.filename(), "rows": job.rows, "requests": job.requests, "cost_micros": job.cost_micros,
        "cost_usd": None if job.cost_micros is None else usd_text(job.cost_micros), "bytes": job.bytes,
        "sha256": job.sha256, "error": job.error, "attempts": job.attempts, "created_by": job.created_by,
        "created_at": job.created_at.isoformat(), "started_at": _iso(job.started_at),
        "finished_at": _iso(job.finished_at),
    }


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def _base_url(request: web.Request) -> str:
    return str(request.url.origin())


def _with_link(request: web.Request, job: ExportJob) -> dict[str, Any]:
    view = job_view(job)
    if job.status == "succeeded" and job.object_path is not None:
        url, expires = request.app[LINKS].link(job.id, job.object_path, base_url=_base_url(request))
        view |= {"download_url": url, "download_expires_at": expires.isoformat()}
    return view


async def _visible_job(request: web.Request) -> ExportJob:
    """The job of the path, if the caller's org may see it (403 org_scope_denied otherwise)."""
    job_id = request.match_info["job_id"]
    if not _JOB_ID.fullmatch(job_id):
        raise NotFound(f"export {job_id[:64]!r} not found", code="export_not_found", param="id")
    job = await request.app[appkeys.STORE].get_export(job_id)
    access.check_org(request, job.org_id)
    return job


def _idempotency(request: web.Request) -> str | None:
    raw = request.headers.get(IDEMPOTENCY_HEADER)
    if raw is None:
        return None
    if not _IDEMPOTENCY_KEY.fullmatch(raw):
        raise InvalidRequest(f"Header {IDEMPOTENCY_HEADER} must be 1-255 printable ASCII characters without spaces.",
                             param=IDEMPOTENCY_HEADER)
    return idempotency_digest(access.principal(request).actor, raw)


async def _spec(request: web.Request, body: dict[str, Any]) -> ExportSpec:
    only_fields(body, BODY_FIELDS)
    values = {name: field(body, name, str, max_length=MAX_STRING if name == "org" else 64) for name in BODY_FIELDS}
    scoped = access.org_scope(request)
    org = scoped  # an org-scoped caller exports its own org, whatever it asks
    if scoped is None and values["org"] is not None:
        org = (await request.app[appkeys.STORE].get_org(values["org"])).id
    try:
        return spec_from_args(month=values["month"], since=values["since"], until=values["until"], org=org,
                              format=values["format"] or "csv", schema=values["schema"] or "fleetgate")
    except ReportArgumentError as e:
        raise InvalidRequest(str(e), param=e.argument) from e


async def create(request: web.Request) -> web.Response:
    """Queue an export (a month or a since/until range, one org or all, CSV, Parquet or SQLite): 202 with the job."""
    body = await json_body(request)
    spec = await _spec(request, body)
    key = _idempotency(request)
    fingerprint = hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()
    who = access.principal(request)
    job, created = await request.app[appkeys.STORE].create_export(
        ids.new_id(EXPORT_ID_PREFIX), org_id=spec.org, spec=spec.as_dict(), created_by=who.actor,
        idempotency_key=key, request_hash=fingerprint if key else None, max_active=MAX_ACTIVE_PER_ORG)
    headers = {"Location": f"/analytics/v1/exports/{job.id}"}
    if created:
        await auditing.record(request, "export.create", job.id, org_id=job.org_id, after=job_view(job))
        runner = request.app.get(RUNNER)
        if runner is not None:
            runner.wake()
    else:
        headers["Idempotent-Replayed"] = "true"
    return reply(request, _with_link(request, job), status=202, headers=headers)


def _page_cursor(job: ExportJob) -> str:
    raw = f"{job.created_at.isoformat()}|{job.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _before(text: str | None) -> tuple[datetime, str] | None:
    if text is None:
        return None
    bad = InvalidRequest("'cursor' is not a cursor this API returned.", param="cursor")
    try:
        created, _, job_id = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode().partition("|")
        moment = decode_time(created)
    except (binascii.Error, UnicodeDecodeError, ValueError) as e:
        raise bad from e
    if not _JOB_ID.fullmatch(job_id):
        raise bad
    return moment, job_id


async def list_jobs(request: web.Request) -> web.Response:
    """Exports newest first, ?limit= per page (1-1000) from ?cursor=, of ?org= and ?status=."""
    known_params(request, ("org", "status", "limit", "cursor"))
    org_ref = query_str(request, "org")
    status = query_str(request, "status")
    if status is not None and status not in EXPORT_STATUSES:
        raise InvalidRequest(f"'status' must be one of {', '.join(EXPORT_STATUSES)}.", param="status")
    limit = query_int(request, "limit", DEFAULT_PAGE, maximum=MAX_PAGE)
    before = _before(query_str(request, "cursor", max_length=256))
    org = await access.list_filter(request, org_ref)
    jobs = await request.app[appkeys.STORE].list_exports(org_id=org, all_orgs=org is None, status=status,
                                                         limit=limit + 1, before=before)
    more = len(jobs) > limit
    return reply(request, {"object": "list", "data": [job_view(j) for j in jobs[:limit]],
                           "next_cursor": _page_cursor(jobs[limit - 1]) if more else None})


async def get(request: web.Request) -> web.Response:
    """One export: its status, results and, once succeeded, a fresh download link."""
    return reply(request, _with_link(request, await _visible_job(request)))


def _finished(job: ExportJob) -> str:
    if job.status != "succeeded" or job.object_path is None:
        raise Conflict(f"Export {job.id} is {job.status}: there is nothing to download "
                       f"{'yet' if job.status in ('queued', 'running') else '(it failed)'}.",
                       code="export_not_ready", param="id")
    return job.object_path


async def download(request: web.Request) -> web.Response:
    """302 to a fresh download link of a succeeded export (409 while it is queued or running, or failed)."""
    job = await _visible_job(request)
    path = _finished(job)
    url, expires = request.app[LINKS].link(job.id, path, base_url=_base_url(request))
    return reply(request, {"download_url": url, "download_expires_at": expires.isoformat()}, status=302,
                 headers={"Location": url, "Cache-Control": "no-store"})


async def file(request: web.Request) -> web.StreamResponse:
    """The export's file, for whoever holds a valid, unexpired signed link (no Authorization header)."""
    links = request.app[LINKS]
    job_id = request.match_info["job_id"]
    denied = PermissionDenied("This download link's signature is invalid.", code="invalid_download_link")
    if not _JOB_ID.fullmatch(job_id):
        raise denied
    try:
        job = await request.app[appkeys.STORE].get_export(job_id)
    except NotFound as e:  # the same answer as a forged link: links do not reveal which jobs exist
        raise denied from e
    if job.object_path is None or job.status != "succeeded":
        raise denied
    links.signer.verify(job.id, job.object_path, request.query.get("expires"), request.query.get("sig"))
    fs = links.lake.fs
    try:
        stream = await asyncio.to_thread(fs.open_input_stream, job.object_path)
    except (OSError, pa.ArrowException) as e:
        raise NotFound("The export's file is no longer in the lake; create the export again.",
                       code="export_file_missing") from e
    spec = spec_from_dict(job.spec)
    freshness = request.get(FRESHNESS) or unknown_freshness()
    response = web.StreamResponse(headers={
        "Content-Type": CONTENT_TYPES[spec.format], "Content-Length": str(job.bytes),
        "Content-Disposition": f'attachment; filename="{spec.filename()}"', "Cache-Control": "no-store",
        "X-Fleetgate-Export-SHA256": job.sha256 or "", **freshness_headers(freshness)})
    try:
        await response.prepare(request)
        # A read that fails halfway raises: the edge middleware logs it and the connection is dropped, so the
        # client sees a download shorter than its Content-Length, never a complete-looking partial file.
        while chunk := await asyncio.to_thread(stream.read, DOWNLOAD_CHUNK):
            await response.write(chunk)
    finally:
        await asyncio.to_thread(stream.close)
    await response.write_eof()
    return response


def setup(app: web.Application) -> None:
    r = app.router
    r.add_post("/analytics/v1/exports", create)
    r.add_get("/analytics/v1/exports", list_jobs)
    r.add_get("/analytics/v1/exports/{job_id}", get)
    r.add_get("/analytics/v1/exports/{job_id}/download", download)
    r.add_get("/analytics/v1/exports/{job_id}/file", file)
