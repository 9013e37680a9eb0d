"""The analytics API on a real gateway over a real lake (rolled-up hours and raw ones): exact answers, org
scope, stable paging while events arrive, 400s naming the parameter, and freshness on every response."""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

from analytics_lake import rollup
from analytics_lake.exports import usd_text
from analytics_lake.synthetic import make_event
from analytics_lake.writer import write_batch
from gateway import appkeys
from gateway.usage import lake_config
from tests.fleet import Gateway, gateway_settings, running_gateway
from tests.support import eventually

pytestmark = pytest.mark.asyncio(loop_scope="module")

NOW = datetime.now(UTC).replace(microsecond=0)
HOUR = timedelta(hours=1)
# The seeded events are before NOW; the ones written during the paging test after LATER, so the exact
# answers below (over [3 days ago, LATER)) hold in any test order. NOW is taken at collection: LATER leaves
# hours for a slow suite to reach the paging test, whose pinned `until` (the time of its first page) must be
# before LATER.
LATER = NOW + timedelta(hours=6)
ALL = {"since": "3d", "until": LATER.isoformat()}
STATUSES = (200, 200, 200, 200, 200, 200, 400, 429, 499, 500, 503)
MEASURES = ("requests", "errors", "server_errors", "prompt_tokens", "completion_tokens", "cost_micros", "cost_usd")
FRESHNESS_KEYS = {"newest_event", "lag_s", "rollup_lag_s", "checked_at"}


def status_class(status: int) -> str:
    if status < 400:
        return "2xx"
    return str(status) if status in (429, 499) else "5xx" if status >= 500 else "4xx"


def dimension(event: Mapping, name: str) -> str | None:
    ts = datetime.fromtimestamp(event["ts"] / 1e6, UTC)
    return {"org": event["org_id"], "key": event["key_id"], "model": event["model"],
            "environment": event["environment"], "release": event["release"],
            "status_class": status_class(event["status"]), "day": ts.date().isoformat(),
            "hour": ts.replace(minute=0, second=0, microsecond=0).isoformat()}[name]


COLUMN = {"org": "org_id", "key": "key_id"}


def expected_usage(events: Iterable[Mapping], group_by: tuple[str, ...], **filters: str) -> list[dict]:
    """The usage answer computed from the events themselves, in the API's order (by the group columns)."""
    sums: dict[tuple, list[int]] = defaultdict(lambda: [0] * 6)
    for e in events:
        if any(dimension(e, name) != value for name, value in filters.items()):
            continue
        s = sums[tuple(dimension(e, name) for name in group_by)]
        for i, value in enumerate((1, e["status"] >= 400, e["status"] >= 500, e["prompt_tokens"],
                                   e["completion_tokens"], e["cost_micros"])):
            s[i] += int(value)
    return [{**{COLUMN.get(n, n): v for n, v in zip(group_by, key)},
             **dict(zip(MEASURES, [*s, usd_text(s[5])]))} for key, s in sorted(sums.items())]


def event(ts: datetime, rng: random.Random, *, org: str, key: str, model: str, status: int) -> dict:
    e = make_event(int(ts.timestamp() * 1e6), org=org, key=key, model=model, status=status, rng=rng)
    e["release"] = rng.choice(("stable", "canary"))
    return e


@dataclass
class World:
    gw: Gateway
    org_a: str
    org_b: str
    key_a: str  # secrets
    key_b: str
    viewer_a: str  # a personal token of org A's viewer
    events: list[dict]
    lake: object

    def client(self, token: str | None) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.AsyncClient(base_url=self.gw.url, headers=headers, timeout=30)

    newest: list[int] = None  # the newest event after each write (what freshness may show)

    def write(self, events: list[dict]) -> None:
        write_batch(self.lake, events, writer_id="test")
        self.events += events
        self.newest = [*(self.newest or []), max(e["ts"] for e in self.events)]

    def seeded(self) -> list[dict]:
        return [e for e in self.events if e["ts"] < LATER.timestamp() * 1e6]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(tmp_path_factory) -> World:
    tmp: Path = tmp_path_factory.mktemp("analytics-api")
    settings = gateway_settings(tmp, export_runner=False)
    async with running_gateway(settings) as gw:
        a, b = (await gw.create_org("org-a"))["id"], (await gw.create_org("org-b"))["id"]
        key_a, key_b = await gw.create_key("org-a"), await gw.create_key("org-b")
        r = await gw.admin.post("/admin/v1/users", json={"name": "a-viewer", "role": "viewer", "org": "org-a"})
        token = (await gw.admin.post(f"/admin/v1/users/{r.json()['id']}/tokens", json={})).json()["token"]
        rng = random.Random(13)
        events = []
        # 26 hours back (over a midnight: a closed day is packed): whole hours are rolled up below, the
        # current hour stays raw.
        for i in range(160):
            ts = NOW - (i % 26) * HOUR - timedelta(seconds=30 + i)
            org, key = (a, key_a["id"]) if i % 3 else (b, key_b["id"])
            events.append(event(ts, rng, org=org, key=key, model=("m1", "m2")[i % 2],
                                status=STATUSES[i % len(STATUSES)]))
        world = World(gw, a, b, key_a["key"], key_b["key"], token, [], lake_config(settings))
        await asyncio.to_thread(world.write, events)
        built = await asyncio.to_thread(rollup.update, world.lake)
        assert built["hours_built"] >= 20, built  # most hours come from rollups, the newest from raw rows
        yield world


async def usage(client: httpx.AsyncClient, **params) -> dict:
    r = await client.get("/analytics/v1/usage", params=params)
    assert r.status_code == 200, r.text
    return r.json()


def check_freshness(r: httpx.Response, world: World) -> None:
    body = r.json()
    fresh = body["freshness"]
    assert set(fresh) >= FRESHNESS_KEYS, body
    # cached for ~2 s: the newest event after one of the writes so far
    shown = datetime.fromisoformat(fresh["newest_event"])
    assert shown in {datetime.fromtimestamp(ts / 1e6, UTC) for ts in world.newest}, (shown, world.newest)
    checked = datetime.fromisoformat(fresh["checked_at"])
    assert fresh["lag_s"] == pytest.approx(max(0.0, (checked - shown).total_seconds()), abs=0.01)
    assert r.headers["X-Fleetgate-Data-Newest"] == fresh["newest_event"]
    assert float(r.headers["X-Fleetgate-Data-Lag-S"]) == pytest.approx(fresh["lag_s"], abs=0.001)


async def test_usage_is_exact_for_every_grouping(world):
    for group_by in [("org", "model", "day"), ("key",), ("status_class", "release"), ("hour",),
                     ("org", "environment", "status_class", "model", "day", "hour")]:
        body = await usage(world.gw.admin, group_by=",".join(group_by), limit=1000, **ALL)
        assert body["data"] == expected_usage(world.seeded(), group_by), group_by
        assert body["next_cursor"] is None and body["group_by"] == list(group_by)
    totals = (await usage(world.gw.admin, group_by="org", **ALL))["data"]
    assert sum(r["cost_micros"] for r in totals) == sum(e["cost_micros"] for e in world.seeded())
    assert all(r["cost_usd"] == usd_text(r["cost_micros"]) for r in totals)


async def test_usage_filters(world):
    body = await usage(world.gw.admin, group_by="model", org="org-b", status_class="5xx", **ALL)
    assert body["org"] == world.org_b
    assert body["data"] == expected_usage(world.seeded(), ("model",), org=world.org_b, status_class="5xx")
    body = await usage(world.gw.admin, group_by="org", model="m2", release="canary", **ALL)
    assert body["data"] == expected_usage(world.seeded(), ("org",), model="m2", release="canary")
    # by id as well as by name
    assert (await usage(world.gw.admin, org=world.org_a, **ALL))["data"] == \
        expected_usage(world.seeded(), ("org",), org=world.org_a)


async def test_an_org_caller_sees_only_its_own_org_whatever_it_asks(world):
    for token in (world.key_a, world.viewer_a):
        async with world.client(token) as client:
            for ask in ({}, {"org": "org-b"}, {"org": world.org_b}):
                body = await usage(client, group_by="org,key,model", **ALL, **ask)
                assert body["org"] == world.org_a
                assert body["data"] == expected_usage(world.seeded(), ("org", "key", "model"), org=world.org_a)
            r = await client.get("/analytics/v1/reliability", params={"group_by": "org", "org": "org-b"})
            assert r.status_code == 200 and [row["org_id"] for row in r.json()["data"]] == [world.org_a]
    async with world.client(world.key_b) as client:
        body = await usage(client, group_by="org", **ALL)
        assert [row["org_id"] for row in body["data"]] == [world.org_b]


async def test_reliability_counts_and_quantiles(world):
    r = await world.gw.admin.get("/analytics/v1/reliability", params={"group_by": "model", **ALL})
    assert r.status_code == 200, r.text
    rows = {row["model"]: row for row in r.json()["data"]}
    assert set(rows) == {"m1", "m2"}
    for model, row in rows.items():
        mine = [e for e in world.seeded() if e["model"] == model]
        classes = defaultdict(int)
        for e in mine:
            classes[status_class(e["status"])] += 1
        eligible = len(mine) - classes["4xx"] - classes["429"] - classes["499"]
        assert (row["requests"], row["ok"], row["client_errors"], row["rate_limited"], row["cancelled"],
                row["server_errors"], row["eligible"]) == (len(mine), classes["2xx"], classes["4xx"], classes["429"],
                                                           classes["499"], classes["5xx"], eligible)
        assert row["availability"] == pytest.approx(1 - classes["5xx"] / eligible)
        assert row["error_rate_5xx"] == pytest.approx(classes["5xx"] / len(mine))
        ok = sorted(e["latency_ms"] for e in mine if e["status"] < 400)
        for q in (0.5, 0.95, 0.99):
            exact = ok[int(q * (len(ok) - 1))]
            assert row[f"latency_p{format(q * 100, 'g')}_ms"] == pytest.approx(exact, rel=0.0051), q
    default = await world.gw.admin.get("/analytics/v1/reliability")
    assert default.json()["group_by"] == ["model", "environment", "release"]
    check_freshness(default, world)


async def test_pages_concatenate_to_the_whole_answer_while_events_arrive(world):
    params = {"group_by": "key,hour", "since": "3d", "limit": 7}
    first = await usage(world.gw.admin, **params)
    pinned = {"since": first["since"], "until": first["until"]}
    pages = [first["data"]]
    cursor = first["next_cursor"]
    assert cursor is not None and len(first["data"]) == 7
    late = LATER + timedelta(minutes=1)  # after the pinned until (now), and outside the other tests' range
    assert late > datetime.fromisoformat(first["until"])
    rng = random.Random(7)
    while cursor is not None:
        # New traffic between pages: new groups (a new key) and more requests in existing ones.
        await asyncio.to_thread(world.write, [
            event(late, rng, org=world.org_a, key=f"new-{len(pages)}", model="m1", status=200),
            event(late, rng, org=world.org_b, key=world.events[0]["key_id"], model="m2", status=200)])
        page = await usage(world.gw.admin, **params, cursor=cursor)
        assert (page["since"], page["until"]) == (first["since"], first["until"])
        pages.append(page["data"])
        cursor = page["next_cursor"]
    whole = await usage(world.gw.admin, group_by="key,hour", limit=1000, **pinned)
    assert [row for page in pages for row in page] == whole["data"]
    pinned_until = datetime.fromisoformat(first["until"]).timestamp() * 1e6
    assert whole["data"] == expected_usage([e for e in world.events if e["ts"] < pinned_until], ("key", "hour"))
    assert len(pages) == -(-len(whole["data"]) // 7) >= 3

    async def newest_seen() -> bool:  # the new events are there for a query reaching their time
        rows = (await usage(world.gw.admin, group_by="key", since="3d", until=(late + HOUR).isoformat(),
                            limit=1000))["data"]
        return any(row["key_id"].startswith("new-") for row in rows)

    await eventually(newest_seen, timeout=10, what="events written between pages to be read")


BAD_PARAMS = [
    ({"group_by": "nonsense"}, "group_by"),
    ({"group_by": "org,org"}, "group_by"),
    ({"group_by": "org,key,model,environment,release,status_class,day"}, "group_by"),
    ({"since": "yesterday-ish"}, "since"),
    ({"since": "2026-13-01"}, "since"),
    ({"until": "soon"}, "until"),
    ({"since": "2026-02-01", "until": "2026-01-01"}, "until"),
    ({"limit": "0"}, "limit"),
    ({"limit": "1001"}, "limit"),
    ({"limit": "ten"}, "limit"),
    ({"cursor": "garbage"}, "cursor"),
    ({"cursor": "eyJ2IjoxfQ"}, "cursor"),
    ({"status_class": "3xx"}, "status_class"),
    ({"model": "x" * 300}, "model"),
    ({"key": "a\x00b"}, "key"),
    ({"by": "org"}, "by"),
]


@pytest.mark.parametrize(("params", "param"), BAD_PARAMS)
async def test_bad_parameters_are_400s_naming_them(world, params, param):
    for path in ("/analytics/v1/usage", "/analytics/v1/reliability"):
        if path.endswith("reliability") and param in ("limit", "cursor"):
            continue
        r = await world.gw.admin.get(path, params=params)
        assert r.status_code == 400, (path, params, r.text)
        error = r.json()["error"]
        assert error["param"] == param and error["type"] == "invalid_request_error", error
        check_freshness(r, world)


async def test_a_cursor_only_serves_the_query_it_came_from(world):
    first = await usage(world.gw.admin, group_by="org,model", since="3d", limit=1)
    for other in ({"group_by": "org"}, {"group_by": "org,model", "since": "2d"}, {"group_by": "org,model",
                                                                                      "model": "m1"}):
        r = await world.gw.admin.get("/analytics/v1/usage", params={"since": "3d", **other,
                                                                  "cursor": first["next_cursor"]})
        assert r.status_code == 400 and r.json()["error"]["param"] == "cursor", (other, r.text)
    async with world.client(world.key_a) as client:  # another caller's scope is another query
        r = await client.get("/analytics/v1/usage", params={"group_by": "org,model", "since": "3d",
                                                             "cursor": first["next_cursor"]})
        assert r.status_code == 400 and r.json()["error"]["param"] == "cursor"


async def test_unknown_org_is_404(world):
    r = await world.gw.admin.get("/analytics/v1/usage", params={"org": "nope"})
    assert r.status_code == 404 and r.json()["error"]["param"] == "org"
    check_freshness(r, world)


async def test_every_answer_carries_freshness(world):
    async with world.client(None) as anonymous, world.client("sk-fg-not-a-key-" + "x" * 30) as bad_key:
        answers = [
            (await world.gw.admin.get("/analytics/v1/usage"), 200),
            (await anonymous.get("/analytics/v1/usage"), 401),
            (await bad_key.get("/analytics/v1/usage"), 401),
            (await anonymous.get("/analytics/v1/status/healthz"), 200),
            (await anonymous.get("/analytics/v1/status/readyz"), 200),
            (await world.gw.admin.get("/analytics/v1/nothing-here"), 404),
            (await world.gw.admin.delete("/analytics/v1/usage"), 405),
            (await world.gw.admin.get("/analytics/v1/exports"), 200),
        ]
    for r, status in answers:
        assert r.status_code == status, (r.request.url, r.text)
        check_freshness(r, world)
        if status >= 400:
            assert set(r.json()["error"]) == {"message", "type", "code", "param"}
    assert answers[1][0].json()["error"]["code"] == "invalid_admin_token"
    assert answers[3][0].json()["status"] == "ok"
    assert answers[4][0].json()["checks"] == {"store": "ok", "lake": "ok"}
    # The data plane is untouched by the analytics middleware.
    r = await world.gw.admin.get("/v1/status/healthz")
    assert r.status_code == 200 and "X-Fleetgate-Data-Newest" not in r.headers


async def test_openapi_describes_the_analytics_routes(world):
    paths = (await world.gw.admin.get("/openapi.json")).json()["paths"]
    usage_op = paths["/analytics/v1/usage"]["get"]
    assert usage_op["tags"] == ["analytics"] and usage_op["security"] == [{"bearer": []}]
    assert usage_op["description"].startswith("Needs the viewer role (org scope")
    assert "post" in paths["/analytics/v1/exports"] and "get" in paths["/analytics/v1/exports/{job_id}/download"]
    for public in ("/analytics/v1/status/healthz", "/analytics/v1/status/readyz",
                   "/analytics/v1/exports/{job_id}/file"):
        assert "security" not in paths[public]["get"], public


async def test_hostile_values_never_yield_a_5xx(world):
    values = ["'; DROP TABLE usage; --", "%00", "\u202e", "9" * 100, "-1", "2026-01-01T00:00:00+99:00",
              "org,", " ", "é" * 200, "NaN"]

    async def ask(name: str, value: str) -> None:
        r = await world.gw.admin.get("/analytics/v1/usage", params={"since": "1h", name: value})
        assert r.status_code < 500, (name, value, r.text)
        assert "freshness" in r.json()

    for name in ("group_by", "since", "until", "org", "key", "model", "environment", "release", "status_class",
                 "limit", "cursor"):
        await asyncio.gather(*(ask(name, value) for value in values))


async def test_readyz_says_what_is_down(world, tmp_path):
    app = world.gw.app
    lake_dir = Path(lake_config(app[appkeys.SETTINGS]).url.removeprefix("file://"))
    moved = tmp_path / "lake-away"
    lake_dir.rename(moved)
    lake_dir.write_text("not a directory")  # even root cannot list this
    try:
        r = await world.gw.admin.get("/analytics/v1/status/readyz")
        assert r.status_code == 503, r.text
        assert r.json()["checks"] == {"store": "ok", "lake": "unreadable"} and r.json()["down"] == ["lake"]
    finally:
        lake_dir.unlink()
        moved.rename(lake_dir)
    assert (await world.gw.admin.get("/analytics/v1/status/readyz")).status_code == 200
