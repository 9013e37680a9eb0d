"""Export jobs end to end: queued through the API, written into a real lake (a directory, or moto's S3) by the
gateway's runner, downloaded through a signed link with a plain GET, totals equal to the lake's exact sums;
leases on SQLite and PostgreSQL, and jobs that a dead runner left behind are redone, or failed, never
presented half-written."""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import random
import sqlite3
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from analytics_lake.exports import spec_from_args, usd_text
from analytics_lake.location import open_lake
from analytics_lake.synthetic import make_event
from analytics_lake.writer import write_batch
from gateway import appkeys
from gateway.analytics.jobs import ExportRunner, object_path
from gateway.analytics.presign import LINKS
from gateway.store import open_database
from gateway.store.sql import SqlStore
from gateway.usage import lake_config
from tests.fleet import Gateway, gateway_settings, running_gateway
from tests.support import eventually

HOUR_US = 3_600_000_000
JAN_1 = datetime(2026, 1, 1, tzinfo=UTC)
T0 = int(JAN_1.timestamp() * 1_000_000)
FEB_1 = int(datetime(2026, 2, 1, tzinfo=UTC).timestamp() * 1_000_000)


def january(org_a: str, org_b: str, *, hours: int = 72) -> list[dict]:
    """Two orgs over the first `hours` of January, and one event on each side of the month (not exported)."""
    rng = random.Random(5)
    out = [make_event(T0 + (i % hours) * HOUR_US + i, org=(org_a, org_b)[i % 3 == 0], key=f"k{i % 4}",
                      model=("m1", "m2")[i % 2], status=(200, 200, 500, 429)[i % 4], rng=rng) for i in range(150)]
    out.append(make_event(T0 - 1, org=org_a, rng=rng))
    out.append(make_event(FEB_1, org=org_a, rng=rng))
    return out


def exact(events: list[dict], org: str | None = None) -> tuple[int, int]:
    """(requests, cost_micros) of January, for one org or all."""
    mine = [e for e in events if T0 <= e["ts"] < FEB_1 and (org is None or e["org_id"] == org)]
    return len(mine), sum(e["cost_micros"] for e in mine)


async def finished(client: httpx.AsyncClient, job_id: str) -> dict:
    async def done() -> dict | None:
        job = (await client.get(f"/analytics/v1/exports/{job_id}")).json()
        return job if job["status"] in ("succeeded", "failed") else None

    return await eventually(done, timeout=20, what=f"export {job_id} to finish")


def plain_get(url: str) -> tuple[int, bytes]:
    """A GET without any credential, as a browser or curl would send it."""
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


async def fetch(url: str) -> tuple[int, bytes]:
    return await asyncio.to_thread(plain_get, url)


def csv_totals(data: bytes) -> tuple[int, int]:
    rows = list(csv.DictReader(io.StringIO(data.decode())))
    return sum(int(r["requests"]) for r in rows), sum(int(r["cost_micros"]) for r in rows)


async def setup_fleet(gw: Gateway, *, hours: int = 72) -> tuple[dict, dict, list[dict]]:
    a, b = await gw.create_org("org-a"), await gw.create_org("org-b")
    events = january(a["id"], b["id"], hours=hours)
    await asyncio.to_thread(write_batch, lake_config(gw.app[appkeys.SETTINGS]), events)
    return a, b, events


async def test_export_round_trip_on_a_local_lake(tmp_path):
    async with running_gateway(gateway_settings(tmp_path)) as gw:
        a, b, events = await setup_fleet(gw)
        key_a, key_b = (await gw.create_key("org-a"))["key"], (await gw.create_key("org-b"))["key"]
        r = await gw.admin.post("/analytics/v1/exports", json={"month": "2026-01", "org": "org-a", "format": "csv"})
        assert r.status_code == 202, r.text
        queued = r.json()
        assert queued["status"] in ("queued", "running") and queued["org_id"] == a["id"] and "freshness" in queued
        assert r.headers["Location"] == f"/analytics/v1/exports/{queued['id']}"
        job = await finished(gw.admin, queued["id"])
        requests, micros = exact(events, a["id"])
        assert (job["status"], job["requests"], job["cost_micros"], job["attempts"]) == ("succeeded", requests,
                                                                                          micros, 1)
        assert job["cost_usd"] == usd_text(micros) and job["filename"] == f"usage-{a['id']}-2026-01.csv"
        assert job["since"].startswith("2026-01-01T00:00:00") and job["until"].startswith("2026-02-01T00:00:00")

        # The link works without any credential and serves the complete, checksummed file.
        status, data = await fetch(job["download_url"])
        assert status == 200 and len(data) == job["bytes"]
        assert hashlib.sha256(data).hexdigest() == job["sha256"]
        assert csv_totals(data) == (requests, micros)
        assert datetime.fromisoformat(job["download_expires_at"]) - datetime.now(UTC) > timedelta(minutes=59)
        r = await gw.admin.get(f"/analytics/v1/exports/{job['id']}/download")
        assert r.status_code == 302 and "freshness" in r.json()
        assert (await fetch(r.headers["Location"])) == (200, data)

        # A changed or expired link is refused, OpenAI-shaped, with freshness.
        signer = gw.app[LINKS].signer
        tampered = job["download_url"].replace("sig=", "sig=0", 1)[:-1]
        path = (await gw.app[appkeys.STORE].get_export(job["id"])).object_path
        expires, sig = signer.sign(job["id"], path, expires_s=60, now=datetime.now(UTC) - timedelta(hours=1))
        expired = f"{gw.url}/analytics/v1/exports/{job['id']}/file?expires={expires}&sig={sig}"
        longer = job["download_url"].replace("expires=", "expires=1", 1)
        for url, code in ((tampered, "invalid_download_link"), (longer, "invalid_download_link"),
                          (expired, "download_link_expired"),
                          (job["download_url"].split("?")[0], "invalid_download_link"),
                          (job["download_url"].replace(job["id"], "exp_0000000000000000"), "invalid_download_link")):
            async with httpx.AsyncClient() as anonymous:
                r = await anonymous.get(url)
            assert r.status_code == 403 and r.json()["error"]["code"] == code, (url, r.text)
            assert "freshness" in r.json() and r.headers["X-Fleetgate-Data-Newest"]

        # Creating an export is audited.
        audit = (await gw.admin.get("/admin/v1/audit", params={"action": "export.create"})).json()
        assert [(e["target"], e["actor"], e["org_id"]) for e in audit] == [(job["id"], "bootstrap", a["id"])]

        # An API key exports its own org whatever it names, and sees only its own org's jobs.
        async with httpx.AsyncClient(base_url=gw.url, headers={"Authorization": f"Bearer {key_a}"}) as as_a, \
                httpx.AsyncClient(base_url=gw.url, headers={"Authorization": f"Bearer {key_b}"}) as as_b:
            r = await as_a.post("/analytics/v1/exports", json={"month": "2026-01", "org": "org-b",
                                                               "format": "parquet"})
            assert r.status_code == 202 and r.json()["org_id"] == a["id"], r.text
            mine = await finished(as_a, r.json()["id"])
            status, data = await fetch(mine["download_url"])
            table = pq.read_table(io.BytesIO(data))
            assert (sum(table.column("requests").to_pylist()), sum(table.column("cost_micros").to_pylist())) == \
                (requests, micros)
            r = await as_b.get(f"/analytics/v1/exports/{mine['id']}")
            assert r.status_code == 403 and r.json()["error"]["code"] == "org_scope_denied"
            r = await as_b.get(f"/analytics/v1/exports/{mine['id']}/download")
            assert r.status_code == 403
            assert (await as_b.get("/analytics/v1/exports")).json()["data"] == []
            assert [j["id"] for j in (await as_a.get("/analytics/v1/exports")).json()["data"]] == [mine["id"],
                                                                                                    job["id"]]
            actors = [e["actor"] for e in (await gw.admin.get("/admin/v1/audit",
                                                             params={"action": "export.create"})).json()]
            assert actors[0].startswith("api_key:key_")

        # Lists: newest first, paged, filtered.
        everything = (await gw.admin.get("/analytics/v1/exports")).json()
        assert [j["id"] for j in everything["data"]] == [mine["id"], job["id"]] and everything["next_cursor"] is None
        first = (await gw.admin.get("/analytics/v1/exports", params={"limit": 1})).json()
        second = (await gw.admin.get("/analytics/v1/exports", params={"limit": 1, "cursor": first["next_cursor"]}
                                     )).json()
        assert [j["id"] for j in first["data"] + second["data"]] == [mine["id"], job["id"]]
        assert second["next_cursor"] is None
        assert (await gw.admin.get("/analytics/v1/exports", params={"org": "org-b"})).json()["data"] == []
        assert len((await gw.admin.get("/analytics/v1/exports", params={"status": "succeeded"})).json()["data"]) == 2


BAD_BODIES = [
    ({"month": "2026-13"}, "month"),
    ({"month": "2026-01", "since": "2026-01-01"}, "month"),
    ({}, "month"),
    ({"since": "yesterday"}, "since"),
    ({"since": "2026-02-01", "until": "2026-01-01"}, "until"),
    ({"since": "2020-01-01", "until": "2026-01-01"}, "until"),  # more than a year in one file
    ({"month": "2026-01", "until": "2026-02-01"}, "until"),
    ({"month": "2026-01", "format": "xlsx"}, "format"),
    ({"month": "2026-01", "schema": "csv"}, "schema"),
    ({"month": "2026-01", "format": 5}, "format"),
    ({"month": "2026-01", "colour": "red"}, "colour"),
    ({"month": "2026-01", "org": ""}, "org"),
]


async def test_bad_requests_create_nothing(tmp_path):
    async with running_gateway(gateway_settings(tmp_path)) as gw:
        await setup_fleet(gw)
        for body, param in BAD_BODIES:
            r = await gw.admin.post("/analytics/v1/exports", json=body)
            assert r.status_code == 400 and r.json()["error"]["param"] == param, (body, r.text)
            assert "freshness" in r.json()
        r = await gw.admin.post("/analytics/v1/exports", json={"month": "2026-01", "org": "nope"})
        assert r.status_code == 404 and r.json()["error"]["param"] == "org"
        r = await gw.admin.post("/analytics/v1/exports", content=b"{not json")
        assert r.status_code == 400
        for bad in ("", "x" * 256, "spaced key"):
            r = await gw.admin.post("/analytics/v1/exports", json={"month": "2026-01"},
                                    headers={"Idempotency-Key": bad})
            assert r.status_code == 400 and r.json()["error"]["param"] == "Idempotency-Key", (bad, r.text)
        for params, param in (({"status": "done"}, "status"), ({"limit": "0"}, "limit"),
                              ({"cursor": "bm9wZQ"}, "cursor")):
            r = await gw.admin.get("/analytics/v1/exports", params=params)
            assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
        assert (await gw.admin.get("/analytics/v1/exports/exp_0000000000000000")).status_code == 404
        assert (await gw.admin.get("/analytics/v1/exports/nope")).status_code == 404
        assert (await gw.admin.get("/analytics/v1/exports")).json()["data"] == []
        assert (await gw.admin.get("/admin/v1/audit", params={"action": "export.*"})).json() == []

        # Idempotency-Key: the same request again is the same job; another request under the key is refused.
        body = {"since": "2026-01-01", "until": "2026-01-02"}
        first = await gw.admin.post("/analytics/v1/exports", json=body, headers={"Idempotency-Key": "run-42"})
        again = await gw.admin.post("/analytics/v1/exports", json=body, headers={"Idempotency-Key": "run-42"})
        assert first.status_code == again.status_code == 202 and first.json()["id"] == again.json()["id"]
        assert again.headers["Idempotent-Replayed"] == "true"
        r = await gw.admin.post("/analytics/v1/exports", json={**body, "format": "parquet"},
                                headers={"Idempotency-Key": "run-42"})
        assert r.status_code == 409 and r.json()["error"]["code"] == "idempotency_key_reused"
        assert len((await gw.admin.get("/analytics/v1/exports")).json()["data"]) == 1
        assert len((await gw.admin.get("/admin/v1/audit", params={"action": "export.create"})).json()) == 1

        # Without its store the analytics API is not ready (and says so).
        await gw.app[appkeys.STORE].close()
        r = await gw.admin.get("/analytics/v1/status/readyz")
        assert r.status_code == 503 and r.json()["checks"] == {"store": "unreachable", "lake": "ok"}, r.text


@pytest.mark.s3
async def test_export_to_s3_is_a_presigned_url_a_plain_get_downloads(tmp_path, s3_server, s3_bucket):
    settings = gateway_settings(tmp_path, lake_url=f"s3://{s3_bucket}/fleet", s3_endpoint=s3_server.endpoint,
                                s3_access_key="test", s3_secret_key="test")
    async with running_gateway(settings) as gw:
        _, _, events = await setup_fleet(gw, hours=4)  # an S3 PUT per hour: few hours keep it quick
        r = await gw.admin.post("/analytics/v1/exports", json={"month": "2026-01", "format": "sqlite",
                                                               "schema": "focus"})
        assert r.status_code == 202, r.text
        job = await finished(gw.admin, r.json()["id"])
        assert job["status"] == "succeeded", job
        url = job["download_url"]
        assert url.startswith(f"{s3_server.endpoint}/{s3_bucket}/fleet/exports/all/{job['id']}/1/")
        assert "X-Amz-Signature=" in url and "X-Amz-Expires=3600" in url
        status, data = await fetch(url)
        assert status == 200 and hashlib.sha256(data).hexdigest() == job["sha256"] and len(data) == job["bytes"]
        path = tmp_path / "export.sqlite"
        path.write_bytes(data)
        with sqlite3.connect(path) as db:
            requests, micros = db.execute("SELECT sum(x_Requests), sum(x_CostMicros) FROM usage_daily").fetchone()
        assert (requests, micros) == exact(events) == (job["requests"], job["cost_micros"])
        r = await gw.admin.get(f"/analytics/v1/exports/{job['id']}/download")
        assert r.status_code == 302 and r.headers["Location"].startswith(s3_server.endpoint)
        assert (await fetch(r.headers["Location"])) == (200, data)


def past_store(database_url: str, start: datetime) -> tuple[SqlStore, list[datetime]]:
    """A store whose clock the test moves: what a runner that ran (and died) an hour ago did."""
    now = [start]
    return SqlStore(open_database(database_url), clock=lambda: now[0]), now


async def dead_runners_claim(database_url: str, claims: int) -> str:
    """Queue a January export of every org and let `claims` runners claim it and die, an hour ago."""
    store, clock = past_store(database_url, datetime.now(UTC) - timedelta(hours=1))
    await store.open()
    try:
        job, _ = await store.create_export("exp_00000000000000aa", org_id=None, created_by="bootstrap",
                                           spec=spec_from_args(month="2026-01").as_dict())
        for n in range(1, claims + 1):
            claimed = await store.claim_export(f"dead-{n}", lease_s=60, max_attempts=3)
            assert claimed is not None and claimed.attempts == n
            clock[0] += timedelta(seconds=61)  # its lease runs out
    finally:
        await store.close()
    return job.id


async def test_a_dead_runners_job_is_redone_by_a_new_gateway(tmp_path, database_url):
    settings = gateway_settings(tmp_path, database_url=database_url)
    job_id = await dead_runners_claim(database_url, claims=1)
    lake = open_lake(lake_config(settings))
    events = january("org_a", "org_b")
    await asyncio.to_thread(write_batch, lake, events)
    # What the dead runner left: half a file in its attempt's directory (never offered).
    leftover = f"{lake.base}/exports/all/{job_id}/1/usage-all-2026-01.csv"
    Path(leftover).parent.mkdir(parents=True)
    Path(leftover).write_bytes(b"day,org_id,requ")
    async with running_gateway(settings) as gw:  # its runner looks for work as it starts
        job = await finished(gw.admin, job_id)
        assert (job["status"], job["attempts"]) == ("succeeded", 2), job
        status, data = await fetch(job["download_url"])
        assert status == 200 and hashlib.sha256(data).hexdigest() == job["sha256"]
        assert csv_totals(data) == exact(events) == (job["requests"], job["cost_micros"])
        stored = await gw.app[appkeys.STORE].get_export(job_id)
        assert stored.object_path == f"{lake.base}/exports/all/{job_id}/2/usage-all-2026-01.csv"
        assert not Path(leftover).parent.exists()  # the dead attempt's directory is cleaned up


async def test_a_job_whose_runners_all_died_fails_with_the_reason(tmp_path, database_url):
    job_id = await dead_runners_claim(database_url, claims=3)
    async with running_gateway(gateway_settings(tmp_path, database_url=database_url)) as gw:
        job = await finished(gw.admin, job_id)
        assert (job["status"], job["attempts"]) == ("failed", 3)
        assert "gave up after 3 attempts" in job["error"] and "download_url" not in job
        r = await gw.admin.get(f"/analytics/v1/exports/{job_id}/download")
        assert r.status_code == 409 and r.json()["error"]["code"] == "export_not_ready"


async def test_leases_claims_and_outcomes(database_url):
    t0 = datetime.now(UTC).replace(microsecond=0)
    a, clock = past_store(database_url, t0)
    b, _ = past_store(database_url, t0)
    b._clock = a._clock  # noqa: SLF001 - both replicas see the same time
    await a.open()
    await b.open()
    try:
        spec = spec_from_args(month="2026-01").as_dict()
        ids = [f"exp_{i:016x}" for i in range(3)]
        for job_id in ids:
            await a.create_export(job_id, org_id=None, spec=spec, created_by="bootstrap")
        claims = await asyncio.gather(*(store.claim_export(f"r{i}", lease_s=60, max_attempts=3)
                                        for i, store in enumerate([a, b, a, b, a])))
        won = [c for c in claims if c is not None]
        assert len({c.id for c in won}) == len(won) >= 2  # never one job to two runners
        for c in won:
            assert c.status == "running" and c.attempts == 1 and c.lease_until == t0 + timedelta(seconds=60)
        while (extra := await a.claim_export("r9", lease_s=60, max_attempts=3)) is not None:
            won.append(extra)
        assert sorted(c.id for c in won) == ids
        first, second, third = sorted(won, key=lambda c: c.id)

        assert await a.renew_export(first.id, first.lease_owner, lease_s=120)
        assert not await b.renew_export(first.id, "someone-else", lease_s=120)
        assert await b.finish_export(first.id, "someone-else", object_path="x", rows=1, requests=1, cost_micros=1,
                                     size_bytes=1, sha256="0" * 64) is None
        done = await b.finish_export(first.id, first.lease_owner, object_path="p", rows=2, requests=3,
                                     cost_micros=4, size_bytes=5, sha256="f" * 64)
        assert (done.status, done.rows, done.requests, done.cost_micros, done.bytes, done.lease_owner) == \
            ("succeeded", 2, 3, 4, 5, None)

        # A failed attempt is retried after its back-off, not before.
        retry = await a.fail_export(second.id, second.lease_owner, "boom\nsecond line", retry_after_s=30)
        assert (retry.status, retry.error, retry.attempts) == ("queued", "boom second line", 1)
        clock[0] = t0 + timedelta(seconds=29)
        assert await a.claim_export("r10", lease_s=60, max_attempts=3) is None
        clock[0] = t0 + timedelta(seconds=31)
        again = await a.claim_export("r10", lease_s=60, max_attempts=3)
        assert (again.id, again.attempts) == (second.id, 2)

        # A stopping runner hands its job back: queued at once, the claim not counted.
        assert await b.release_export(again.id, "r10")
        back = await a.get_export(again.id)
        assert (back.status, back.attempts, back.lease_owner) == ("queued", 1, None)

        # An expired lease is claimed by another runner; the first one's outcome is then refused.
        clock[0] = t0 + timedelta(seconds=200)
        taken = await b.claim_export("r11", lease_s=60, max_attempts=3)
        assert taken.id == second.id  # the oldest claimable first: the released job
        taken = await b.claim_export("r12", lease_s=60, max_attempts=3)
        assert (taken.id, taken.attempts) == (third.id, 2)
        assert await a.fail_export(third.id, third.lease_owner, "late") is None
        failed = await b.fail_export(third.id, "r12", "disk full")
        assert (failed.status, failed.error) == ("failed", "disk full")
        assert [j.id for j in await a.list_exports(all_orgs=True)] == ids[::-1]
        assert [j.id for j in await a.list_exports(all_orgs=True, status="failed")] == [third.id]
        page = await a.list_exports(all_orgs=True, limit=1, before=(first.created_at, ids[2]))
        assert [j.id for j in page] == [ids[1]]
    finally:
        await a.close()
        await b.close()


async def test_two_runners_share_the_work_without_doing_a_job_twice(tmp_path, database_url):
    lake = open_lake(lake_config(gateway_settings(tmp_path)))
    events = january("org_a", "org_b")
    await asyncio.to_thread(write_batch, lake, events)
    stores = [SqlStore(open_database(database_url)) for _ in range(2)]
    for store in stores:
        await store.open()
    runners = [ExportRunner(store, lake, work_dir=tmp_path / "work", poll_s=0.05) for store in stores]
    try:
        formats = ("csv", "parquet", "sqlite")
        for i, fmt in enumerate(formats):
            await stores[0].create_export(f"exp_{i:016x}", org_id=None, created_by="bootstrap",
                                          spec=spec_from_args(month="2026-01", format=fmt).as_dict())
        for runner in runners:
            runner.start()

        async def all_done() -> list | None:
            jobs = await stores[0].list_exports(all_orgs=True)
            return jobs if all(j.status == "succeeded" for j in jobs) else None

        jobs = await eventually(all_done, timeout=20, what="the runners to finish every job")
    finally:
        for runner in runners:
            await runner.stop()
        for store in stores:
            await store.close()
    assert [j.attempts for j in jobs] == [1, 1, 1]
    assert {(j.requests, j.cost_micros) for j in jobs} == {exact(events)}
    for job in jobs:
        info = lake.fs.get_file_info(job.object_path)
        assert info.type == pafs.FileType.File and info.size == job.bytes
        assert job.object_path == object_path(lake, job, spec_from_args(month="2026-01",
                                                                         format=job.spec["format"]))


async def test_failed_attempts_are_retried_then_fail_with_the_reason(tmp_path, store):
    lake = open_lake(lake_config(gateway_settings(tmp_path)))
    Path(lake.base).rmdir()
    Path(lake.base).write_text("a file where the lake should be")  # every attempt fails to write there
    await store.create_export("exp_00000000000000bb", org_id=None, created_by="bootstrap",
                              spec=spec_from_args(month="2026-01").as_dict())
    runner = ExportRunner(store, lake, work_dir=tmp_path / "work", poll_s=0.02, retry_s=0.01)
    runner.start()
    try:
        async def failed():
            job = await store.get_export("exp_00000000000000bb")
            return job if job.status == "failed" else None

        job = await eventually(failed, timeout=20, what="the job to use up its attempts")
    finally:
        await runner.stop()
    assert job.attempts == 3 and job.object_path is None and job.sha256 is None
    assert job.error.startswith("failed after 3 attempts: NotADirectoryError"), job.error
