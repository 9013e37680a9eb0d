"""Fuzzing every admin route with hostile bodies, query parameters and path segments.

The routes come from the router itself, so a new admin route is fuzzed without touching this file.
Properties: never a 5xx, every 4xx is an OpenAI-shaped JSON error, and the gateway answers afterwards.
Two passes per route: hypothesis (random, derandomized) and a sweep of every known field, query
parameter and path segment through a list of edge values (random draws rarely pair the one field
with the one value that breaks it). A real gateway (tests.fleet.running_gateway) runs on its own
event-loop thread, because hypothesis drives synchronous tests; SQLite always, PostgreSQL when reachable.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import re
import secrets
import tempfile
import threading
from pathlib import Path
from typing import Any, Self
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.app import create_app
from tests.fleet import ADMIN_TOKEN, gateway_settings, running_gateway
from tests.support import PostgresDatabase

EXAMPLES_PER_ROUTE = 25  # with the sweep: ~30 s for 25 routes x 2 databases on the busy 2-core machine
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
_PARAM = re.compile(r"{(\w+)}")


def admin_routes() -> list[tuple[str, str]]:
    """(method, path template) of every admin route, read from a freshly built (never started) app."""
    app = create_app(gateway_settings(Path(tempfile.gettempdir()) / "fg-fuzz-routes", access_log=False))
    routes = {(r.method, r.resource.canonical) for r in app.router.routes()
              if r.resource is not None and r.resource.canonical.startswith("/admin/") and r.method != "HEAD"}
    routes.discard(("GET", "/admin/v1/events"))  # an endless SSE stream; its bad input: test_admin_events.py
    return sorted(routes, key=lambda r: (r[1], r[0]))


class GatewayThread:
    """A running gateway on a private event loop; `reseed` puts back an org, a key, a model and a budget."""

    def __init__(self, settings_) -> None:
        self._settings = settings_
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self.url = ""
        self.seed: dict[str, str] = {}
        self._thread = threading.Thread(target=asyncio.run, args=(self._main(),), name="fuzz-gateway", daemon=True)

    async def _main(self) -> None:
        try:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            async with running_gateway(self._settings) as gw:
                self.url = gw.url
                self._ready.set()
                await self._stop.wait()
        except BaseException as e:
            self._error = e
            self._ready.set()
            raise

    def reseed(self, client: httpx.Client) -> None:
        """Make sure org `acme` (with a budget), an active key of it and model `m` with one endpoint exist."""
        r = client.post("/admin/v1/organizations", json={"name": "acme"}, headers=ADMIN)
        assert r.status_code in (201, 409), r.text
        org = client.get("/admin/v1/organizations/acme", headers=ADMIN).json()
        key = client.post("/admin/v1/api-keys", json={"org": "acme"}, headers=ADMIN).json()
        model = client.post("/admin/v1/models", json={"name": "m", "endpoint": "http://127.0.0.1:9",
                                                      "status": "ready"}, headers=ADMIN).json()
        r = client.put("/admin/v1/budgets", json={"org": "acme", "usd": 5, "period": "daily"}, headers=ADMIN)
        assert r.status_code == 200, r.text
        self.seed = {"org_id": org["id"], "key_id": key["id"], "secret": key["key"],
                     "endpoint_id": model["endpoint"]["id"]}

    def __enter__(self) -> Self:
        self._thread.start()
        assert self._ready.wait(60), "the fuzz gateway did not start"
        if self._error is not None:
            raise AssertionError(f"the fuzz gateway failed to start: {self._error!r}")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(60)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def fuzz_gateway(request, tmp_path_factory):
    overrides: dict[str, Any] = {}
    database = None
    if request.param == "postgresql":
        request.getfixturevalue("postgres_database")  # skips (or fails in CI) without PostgreSQL
        database = PostgresDatabase()
        database.create()
        overrides["database_url"] = database.url
    state = tmp_path_factory.mktemp(f"fuzz-{request.param}")
    try:
        with GatewayThread(gateway_settings(state, access_log=False, **overrides)) as gateway, \
                httpx.Client(base_url=gateway.url, timeout=30) as client:
            yield gateway, client
    finally:
        if database is not None:
            database.drop()


# -- inputs -------------------------------------------------------------------------------

# A valid body per route: changing one field of it reaches that field's check (not the first one).
# A route missing here (a new one) is still fuzzed, with bodies that are not route-aware.
VALID_BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("POST", "/admin/v1/organizations"): {"name": "fuzz-org", "rpm_limit": 60, "tpm_limit": 6000},
    ("PATCH", "/admin/v1/organizations/{org}"): {"rpm_limit": 60, "tpm_limit": 6000},
    ("POST", "/admin/v1/api-keys"): {"org": "acme", "name": "k", "expires_in": "30d", "rpm_limit": 5,
                                     "tpm_limit": 500, "models": ["m"], "environment": "production"},
    ("PUT", "/admin/v1/budgets"): {"org": "acme", "usd": 1, "period": "daily", "soft_limit_pct": 80},
    ("POST", "/admin/v1/budgets"): {"org": "acme", "usd": 1, "period": "monthly", "soft_limit_pct": 80},
    ("POST", "/admin/v1/budgets/rebuild"): {"org": "acme"},
    ("POST", "/admin/v1/models"): {"name": "m", "environment": "production", "endpoint": "http://127.0.0.1:9",
                                   "input_price": 1, "output_price": 2, "max_tokens": 16, "fallbacks": [],
                                   "metadata": {}, "weight": 100, "release": "stable", "status": "ready"},
    ("PATCH", "/admin/v1/models/{env}/{name}"): {"status": "active", "input_price": 1, "output_price": 2,
                                                 "max_tokens": 16, "fallbacks": [], "metadata": {}},
    ("PATCH", "/admin/v1/endpoints/{endpoint_id}"): {"weight": 100, "status": "ready", "release": "stable"},
}
FIELD_NAMES = sorted({name for body in VALID_BODIES.values() for name in body})
QUERY_NAMES = ("org", "env", "limit", "by", "since")
DEEP_LIST: list = []
for _ in range(200):
    DEEP_LIST = [DEEP_LIST]
EDGE_VALUES: tuple[Any, ...] = (
    None, True, False, 0, -1, 2**31, 2**53, 2**63, 2**64, 10**30, 1e308, -1e308, float("nan"), float("inf"),
    5e-324, 1e9 + 1, 100_000.5, "", " ", "\x00", "a\nb", "a" * 300, "9" * 1500, "99999999999d", "3651d", "0d",
    "🙂", "http://[::1", "http://127.0.0.1:99999", [], ["x"] * 1001, [None], {}, {"a\x00": 1}, DEEP_LIST,
)
QUERY_EDGES = ("", "\x00", "a" * 300, "9" * 1500, "99999999999d", "3651d", "9999-12-31T23:59:59-23:59",
               "0001-01-01T00:00:00+23:59", "-1", "1e308", "NaN", "org,org", ",".join(["org"] * 1000),
               "endpoint", "\u0663", "🙂", "1_0")
SEGMENT_EDGES = ("\x00", "a" * 300, "..", "%", "🙂", "\n", " ", "\u202e", "null")
PLAUSIBLE = ("acme", "m", "production", "staging", "daily", "monthly", "total", "ready", "disabled", "draining",
             "active", "30d", "12h", "http://127.0.0.1:9", "org,day", "model", "2026-01-31", "10")

texts = st.one_of(st.sampled_from(PLAUSIBLE), st.sampled_from(QUERY_EDGES), st.text(max_size=40))
EDGE_SCALARS = [v for v in EDGE_VALUES if not isinstance(v, list | dict)]
scalars = st.one_of(st.none(), st.booleans(), st.sampled_from(EDGE_SCALARS),
                    st.integers(min_value=-(2**70), max_value=2**70), st.floats(), texts)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.one_of(st.sampled_from(FIELD_NAMES), st.text(max_size=8)), inner,
                                             max_size=4), max_leaves=10)
objects = st.dictionaries(st.one_of(st.sampled_from(FIELD_NAMES), st.text(max_size=12)), json_values, max_size=6)
queries = st.dictionaries(st.one_of(st.sampled_from(QUERY_NAMES), st.text(max_size=8)), texts, max_size=4)


def _dumps(value: Any) -> bytes:
    # The stdlib encoder, unlike orjson, writes NaN, Infinity and integers beyond 64 bits.
    return json.dumps(value, allow_nan=True).encode("utf-8", "surrogatepass")


def bodies(base: dict[str, Any]) -> st.SearchStrategy[bytes]:
    names = sorted(base) or FIELD_NAMES
    mutations = st.dictionaries(st.sampled_from(names), st.one_of(json_values, st.sampled_from(EDGE_VALUES)),
                                min_size=1, max_size=2)
    return st.one_of(
        st.builds(lambda changes: _dumps({**base, **changes}), mutations),
        st.builds(lambda extra: _dumps({**base, **extra}), objects),
        json_values.map(_dumps),  # any JSON, mostly not an object
        st.integers(min_value=1, max_value=3000).map(lambda n: b"[" * n + b"]" * n),
        st.binary(max_size=64),
        st.sampled_from((b"", b"\xff\xfe", b'{"name": "\\ud800"}', b'{"usd": 1e999}', b'{"a":1,"a":2}')),
    )


def segments(gateway: GatewayThread, name: str) -> st.SearchStrategy[str]:
    valid = {"org": ["acme", gateway.seed["org_id"]], "key_id": [gateway.seed["key_id"]], "env": ["production"],
             "name": ["m"], "endpoint_id": [gateway.seed["endpoint_id"]], "kind": ["spend", "latency", "errors"]}
    good = st.sampled_from(valid.get(name, ["x"]))
    return st.one_of(good, good, st.sampled_from(SEGMENT_EDGES), texts.filter(bool))


def authorizations(gateway: GatewayThread) -> st.SearchStrategy[dict[str, str]]:
    return st.sampled_from([*[ADMIN] * 8, {"Authorization": f"Bearer {gateway.seed['secret']}"},
                            {"Authorization": f"Bearer sk-fg-{secrets.token_urlsafe(8)}"}, {},
                            {"Authorization": "Basic x"}])


def fill(template: str, values: dict[str, str]) -> str:
    for name, value in values.items():
        template = template.replace("{" + name + "}", quote(value, safe=""))
    return template


def valid_segments(gateway: GatewayThread, template: str) -> dict[str, str]:
    defaults = {"org": "acme", "key_id": gateway.seed["key_id"], "env": "production", "name": "m",
                "endpoint_id": gateway.seed["endpoint_id"], "kind": "spend"}
    return {name: defaults.get(name, "x") for name in _PARAM.findall(template)}


# -- the property -------------------------------------------------------------------------

def check_response(r: httpx.Response, what: str) -> None:
    assert r.status_code < 500, f"{what} → {r.status_code}: {r.text[:500]}"
    if r.status_code >= 400:
        assert r.headers.get("content-type", "").startswith("application/json"), f"{what} → {r.text[:200]}"
        error = r.json()["error"]
        assert set(error) == {"message", "type", "code", "param"}, f"{what} → {error}"
        assert isinstance(error["message"], str) and error["message"] and isinstance(error["type"], str), error
    elif r.headers.get("content-type", "").startswith("application/x-ndjson"):  # an export: JSON lines
        [json.loads(line) for line in r.text.splitlines()]
    elif r.headers.get("content-type", "").startswith("text/csv"):
        list(csv.reader(io.StringIO(r.text)))
    else:
        r.json()


def still_answers(client: httpx.Client) -> None:
    assert client.get("/v1/status/healthz").status_code == 200
    r = client.get("/admin/v1/organizations", headers=ADMIN)
    assert r.status_code == 200 and isinstance(r.json(), list)


ROUTES = admin_routes()
ROUTE_IDS = [f"{method} {template}" for method, template in ROUTES]


@pytest.mark.parametrize(("method", "template"), ROUTES, ids=ROUTE_IDS)
def test_admin_route_survives_random_hostile_input(fuzz_gateway, method, template):
    gateway, client = fuzz_gateway
    gateway.reseed(client)  # an earlier route may have deleted or revoked the seeded things
    body_strategy = bodies(VALID_BODIES.get((method, template), {}))

    @settings(max_examples=EXAMPLES_PER_ROUTE, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(data=st.data())
    def fuzz(data: st.DataObject) -> None:
        path = fill(template, {name: data.draw(segments(gateway, name), label=name)
                               for name in _PARAM.findall(template)})
        query = data.draw(queries, label="query")
        headers = data.draw(authorizations(gateway), label="auth")
        body = data.draw(body_strategy, label="body") if method in ("POST", "PUT", "PATCH", "DELETE") else None
        if body is not None:
            headers = {**headers, "Content-Type": "application/json"}
        r = client.request(method, path, params=query, content=body, headers=headers)
        check_response(r, f"{method} {path} query={query!r} body={body[:200] if body else body!r}")

    fuzz()
    still_answers(client)


@pytest.mark.parametrize(("method", "template"), ROUTES, ids=ROUTE_IDS)
def test_admin_route_refuses_every_edge_value_cleanly(fuzz_gateway, method, template):
    """Each body field, query parameter and path segment in turn takes every edge value; the rest stay valid."""
    gateway, client = fuzz_gateway
    gateway.reseed(client)
    segments_ok = valid_segments(gateway, template)
    base = VALID_BODIES.get((method, template))
    body = _dumps(base) if base is not None else None
    for name in segments_ok:
        for value in SEGMENT_EDGES:
            path = fill(template, {**segments_ok, name: value})
            check_response(client.request(method, path, content=body, headers=ADMIN), f"{method} {path}")
    path = fill(template, segments_ok)
    if base is not None:  # the base itself is valid, so each edge value below is the only thing wrong
        r = client.request(method, path, content=body, headers=ADMIN)
        assert r.status_code < 300 or r.status_code == 409, r.text
    if method == "GET":
        for name in QUERY_NAMES:
            for value in QUERY_EDGES:
                check_response(client.get(path, params={name: value}, headers=ADMIN), f"GET {path} {name}={value!r}")
    for name in base or {}:
        for value in EDGE_VALUES:
            r = client.request(method, path, content=_dumps({**base, name: value}), headers=ADMIN)
            check_response(r, f"{method} {path} {name}={str(value)[:80]!r}")
    still_answers(client)


def test_every_admin_route_is_fuzzed():
    """The walk finds the routes (a broken walk would fuzz nothing and pass), and the bodies fit them."""
    found = {(method, template) for method, template in ROUTES}
    assert {("GET", "/admin/v1/organizations"), ("GET", "/admin/v1/api-keys/{key_id}"),
            ("GET", "/admin/v1/usage/{kind}"), ("DELETE", "/admin/v1/models/{env}/{name}")} <= found
    assert set(VALID_BODIES) <= found
