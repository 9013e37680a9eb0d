"""The control-plane store, run unchanged against SQLite and a real PostgreSQL.

Every Store method is exercised on both backends; errors are checked by type and message.
"""

from __future__ import annotations

import asyncio
import inspect
import sqlite3
from datetime import UTC, datetime, timedelta

import pytest

from gateway.errors import ConfigError, Conflict, InvalidRequest, NotFound
from gateway.store import SqlStore, Store, open_database, open_store
from gateway.store.db import StoreUnavailable
from gateway.store.migrations import (
    MIGRATIONS,
    Migration,
    apply_migrations,
    current_version,
    latest_version,
)
from tests.support import free_port

NOW = "2026-01-01T00:00:00.000000+00:00"


async def _model_with_endpoint(store: Store, name: str = "llama", environment: str = "production"):
    model = await store.create_model(name, environment, input_price=0.5, output_price=1.5)
    endpoint = await store.add_endpoint(model.id, "http://127.0.0.1:9001")
    return model, endpoint


# organizations -----------------------------------------------------------------------


async def test_orgs_create_get_list_update(store):
    acme = await store.create_org("acme", rpm_limit=600)
    beta = await store.create_org("beta")
    assert acme.id.startswith("org_") and len(acme.id) == 20
    assert acme.created_at.tzinfo is not None
    assert await store.get_org("acme") == acme
    assert await store.get_org(acme.id) == acme
    assert [o.name for o in await store.list_orgs()] == ["acme", "beta"]

    updated = await store.update_org("acme", tpm_limit=10_000)
    assert (updated.rpm_limit, updated.tpm_limit) == (600, 10_000)
    assert (await store.get_org(acme.id)).tpm_limit == 10_000
    assert await store.update_org(beta.id) == beta  # nothing to change


async def test_org_errors(store):
    await store.create_org("acme")
    with pytest.raises(Conflict, match="organization 'acme' already exists"):
        await store.create_org("acme")
    with pytest.raises(NotFound, match="organization 'nope' not found"):
        await store.get_org("nope")
    with pytest.raises(NotFound, match="organization 'nope' not found"):
        await store.update_org("nope", rpm_limit=1)
    with pytest.raises(InvalidRequest, match="rpm_limit") as bad:
        await store.create_org("other", rpm_limit=-1)
    assert bad.value.param == "rpm_limit"
    with pytest.raises(InvalidRequest, match="name must not be empty"):
        await store.create_org("  ")
    assert [o.name for o in await store.list_orgs()] == ["acme"]


async def test_concurrent_writes_all_land(store):
    orgs = await asyncio.gather(*(store.create_org(f"org-{i}") for i in range(20)))
    assert len({o.id for o in orgs}) == 20
    assert len(await store.list_orgs()) == 20


# api keys ----------------------------------------------------------------------------


async def test_api_keys_create_find_list_revoke(store):
    acme = await store.create_org("acme")
    beta = await store.create_org("beta")
    expires = datetime(2030, 1, 2, 3, 4, 5, 6, tzinfo=UTC)
    key = await store.create_api_key(
        acme.id, name="ci", key_hash="h1", prefix="sk-fg-aaaa", rpm_limit=60, tpm_limit=1000,
        allowed_models=["llama", "qwen"], environment="staging", expires_at=expires,
    )
    other = await store.create_api_key("beta", name="", key_hash="h2", prefix="sk-fg-bbbb")
    assert key.id.startswith("key_") and key.status == "active"
    assert key.allowed_models == ("llama", "qwen") and key.expires_at == expires
    assert "key_hash" not in key.to_dict()
    assert other.org_id == beta.id and other.allowed_models == () and other.expires_at is None

    assert await store.find_api_key_by_hash("h1") == key
    assert await store.find_api_key_by_hash("missing") is None
    assert await store.get_api_key(key.id) == key
    assert [k.id for k in await store.list_api_keys("acme")] == [key.id]
    assert [k.id for k in await store.list_api_keys(beta.id)] == [other.id]
    assert {k.id for k in await store.list_api_keys()} == {key.id, other.id}

    revoked = await store.revoke_api_key(key.id)
    assert revoked.status == "revoked"
    assert (await store.find_api_key_by_hash("h1")).status == "revoked"
    assert (await store.revoke_api_key(key.id)).status == "revoked"  # idempotent


async def test_api_key_errors(store):
    acme = await store.create_org("acme")
    await store.create_api_key(acme.id, name="a", key_hash="h1", prefix="p")
    with pytest.raises(Conflict, match="API key with this hash already exists"):
        await store.create_api_key(acme.id, name="b", key_hash="h1", prefix="p")
    with pytest.raises(NotFound, match="organization 'org_0000000000000000' not found"):
        await store.create_api_key("org_0000000000000000", name="x", key_hash="h2", prefix="p")
    with pytest.raises(NotFound, match="API key 'key_nope' not found"):
        await store.revoke_api_key("key_nope")
    with pytest.raises(NotFound, match="API key 'key_nope' not found"):
        await store.get_api_key("key_nope")
    with pytest.raises(NotFound, match="organization 'ghost' not found"):
        await store.list_api_keys("ghost")
    with pytest.raises(InvalidRequest, match="allowed_models must be a list") as bad:
        await store.create_api_key(acme.id, name="x", key_hash="h3", prefix="p", allowed_models="llama")
    assert bad.value.param == "allowed_models"
    with pytest.raises(InvalidRequest, match="expires_at must be a timezone-aware"):
        await store.create_api_key(acme.id, name="x", key_hash="h4", prefix="p", expires_at=datetime(2030, 1, 1))
    assert len(await store.list_api_keys(acme.id)) == 1


# models ------------------------------------------------------------------------------


async def test_models_create_get_update_list(store):
    model = await store.create_model(
        "llama", "production", input_price=0.2, output_price=0.6, max_tokens=512,
        fallbacks=["qwen"], metadata={"family": "llama", "ctx": 8192},
    )
    staging = await store.create_model("llama", "staging")
    assert model.id.startswith("mdl_") and model.revision == 1 and model.status == "active"
    assert await store.get_model("llama", "production") == model
    assert await store.get_model_by_id(model.id) == model
    assert model.fallbacks == ("qwen",) and model.metadata == {"family": "llama", "ctx": 8192}

    updated = await store.update_model("llama", "production", status="disabled", output_price=0.9, fallbacks=[])
    assert updated.revision == 2 and updated.status == "disabled" and updated.output_price == 0.9
    assert updated.fallbacks == () and updated.input_price == 0.2 and updated.updated_at >= model.updated_at
    again = await store.update_model("llama", "production", metadata={"family": "llama3"})
    assert again.revision == 3 and await store.get_model("llama", "production") == again
    assert (await store.update_model("llama", "production")).revision == 3  # no changes: no bump

    assert [m.id for m in await store.list_models("staging")] == [staging.id]
    assert {(m.name, m.environment) for m in await store.list_models()} == {
        ("llama", "production"), ("llama", "staging")}


async def test_model_errors(store):
    await store.create_model("llama", "production")
    with pytest.raises(Conflict, match="model 'llama' already exists in environment 'production'"):
        await store.create_model("llama", "production")
    with pytest.raises(NotFound, match="model 'x' in environment 'production' not found"):
        await store.get_model("x", "production")
    with pytest.raises(NotFound, match="model 'x' in environment 'production' not found"):
        await store.update_model("x", "production", status="active")
    with pytest.raises(NotFound, match="model 'x' in environment 'production' not found"):
        await store.delete_model("x", "production")
    with pytest.raises(NotFound, match="model 'mdl_nope' not found"):
        await store.get_model_by_id("mdl_nope")
    with pytest.raises(InvalidRequest, match="status must be one of active, disabled") as bad:
        await store.create_model("qwen", "production", status="paused")
    assert bad.value.param == "status"
    with pytest.raises(InvalidRequest, match="input_price must be a non-negative number"):
        await store.create_model("qwen", "production", input_price=-1)
    with pytest.raises(InvalidRequest, match="output_price"):
        await store.update_model("llama", "production", output_price=float("nan"))
    with pytest.raises(InvalidRequest, match="revision cannot be changed") as bad:
        await store.update_model("llama", "production", revision=7)
    assert bad.value.param == "revision"
    assert [m.name for m in await store.list_models()] == ["llama"]


async def test_delete_model_cascades_to_endpoints(store):
    model, endpoint = await _model_with_endpoint(store)
    keep, kept_endpoint = await _model_with_endpoint(store, "qwen")
    await store.delete_model("llama", "production")
    with pytest.raises(NotFound):
        await store.get_model("llama", "production")
    with pytest.raises(NotFound, match=f"endpoint '{endpoint.id}' not found"):
        await store.get_endpoint(endpoint.id)
    assert await store.list_endpoints() == [kept_endpoint]


# endpoints ---------------------------------------------------------------------------


async def test_endpoints_add_update_health_delete(store):
    model, stable = await _model_with_endpoint(store)
    canary = await store.add_endpoint(model.id, "http://127.0.0.1:9002/", release="canary", weight=0, status="disabled")
    assert stable.id.startswith("ep_") and canary.url == "http://127.0.0.1:9002"
    assert await store.get_endpoint(canary.id) == canary
    assert [e.id for e in await store.list_endpoints(model.id)] == [stable.id, canary.id]

    moved = await store.update_endpoint(canary.id, weight=10, status="ready")
    assert (moved.weight, moved.status, moved.release) == (10, "ready", "canary")
    assert (await store.update_endpoint(canary.id, release="v2")).release == "v2"

    checked = datetime(2026, 3, 4, 5, 6, 7, 890123, tzinfo=UTC)
    await store.record_health(stable.id, status=None, last_health="ok waiting=0", checked_at=checked)
    probed = await store.get_endpoint(stable.id)
    assert (probed.status, probed.last_health, probed.last_checked_at) == ("ready", "ok waiting=0", checked)
    later = checked + timedelta(seconds=5)
    await store.record_health(stable.id, status="unhealthy", last_health="503", checked_at=later)
    probed = await store.get_endpoint(stable.id)
    assert (probed.status, probed.last_health, probed.last_checked_at) == ("unhealthy", "503", later)

    await store.delete_endpoint(canary.id)
    assert [e.id for e in await store.list_endpoints(model.id)] == [stable.id]


async def test_endpoint_errors(store):
    model, endpoint = await _model_with_endpoint(store)
    with pytest.raises(Conflict, match="endpoint 'http://127.0.0.1:9001' already exists for model 'llama'") as dup:
        await store.add_endpoint(model.id, "http://127.0.0.1:9001/")
    assert dup.value.param == "url"
    with pytest.raises(NotFound, match="model 'mdl_nope' not found"):
        await store.add_endpoint("mdl_nope", "http://127.0.0.1:9003")
    with pytest.raises(NotFound, match="model 'mdl_nope' not found"):
        await store.list_endpoints("mdl_nope")
    with pytest.raises(NotFound, match="endpoint 'ep_nope' not found"):
        await store.update_endpoint("ep_nope", weight=5)
    with pytest.raises(NotFound, match="endpoint 'ep_nope' not found"):
        await store.record_health("ep_nope", status=None, last_health="ok", checked_at=datetime.now(UTC))
    with pytest.raises(NotFound, match="endpoint 'ep_nope' not found"):
        await store.delete_endpoint("ep_nope")
    with pytest.raises(InvalidRequest, match="weight must be between 0") as bad:
        await store.update_endpoint(endpoint.id, weight=-5)
    assert bad.value.param == "weight"
    with pytest.raises(InvalidRequest, match="status must be one of ready, disabled, draining, unhealthy"):
        await store.add_endpoint(model.id, "http://127.0.0.1:9004", status="up")
    with pytest.raises(InvalidRequest, match="url must be an http"):
        await store.add_endpoint(model.id, "127.0.0.1:9004")
    assert await store.list_endpoints(model.id) == [endpoint]


async def test_registry_shape_and_revision(store):
    before = await store.registry_revision()
    llama, llama_ep = await _model_with_endpoint(store)
    qwen = await store.create_model("qwen", "production")
    staged, staged_ep = await _model_with_endpoint(store, environment="staging")
    canary = await store.add_endpoint(llama.id, "http://127.0.0.1:9002", release="canary", weight=10)

    production = await store.registry("production")
    assert [(e.model.name, e.model.environment) for e in production] == [("llama", "production"), ("qwen", "production")]
    assert production[0].model == llama and production[0].endpoints == (llama_ep, canary)
    assert production[1].model == qwen and production[1].endpoints == ()
    everything = await store.registry()
    assert {e.model.id: e.endpoints for e in everything} == {
        llama.id: (llama_ep, canary), qwen.id: (), staged.id: (staged_ep,)}

    after_writes = await store.registry_revision()
    assert after_writes > before
    await store.record_health(llama_ep.id, status=None, last_health="ok", checked_at=datetime.now(UTC))
    assert await store.registry_revision() == after_writes  # a probe that changes nothing is not a change
    await store.update_endpoint(canary.id, weight=50)
    assert await store.registry_revision() == after_writes + 1


# budgets -----------------------------------------------------------------------------


async def test_budgets_set_replace_list_delete(store):
    acme = await store.create_org("acme")
    beta = await store.create_org("beta")
    key = await store.create_api_key(acme.id, name="ci", key_hash="h1", prefix="p")
    first = await store.set_budget("acme", limit_micros=5_000_000, period="daily")
    assert first.id.startswith("bud_") and first.key_id is None and first.soft_limit_pct == 80
    replaced = await store.set_budget(acme.id, limit_micros=9_000_000_000_000, period="monthly", soft_limit_pct=90)
    assert replaced.id == first.id and replaced.created_at == first.created_at
    assert (replaced.limit_micros, replaced.period, replaced.soft_limit_pct) == (9_000_000_000_000, "monthly", 90)
    per_key = await store.set_budget(acme.id, key_id=key.id, limit_micros=1_000, period="total")
    other = await store.set_budget(beta.id, limit_micros=1, period="daily")

    assert await store.list_budgets("acme") == [replaced, per_key]
    assert {b.id for b in await store.list_budgets()} == {replaced.id, per_key.id, other.id}
    await store.delete_budget(per_key.id)
    assert await store.list_budgets(acme.id) == [replaced]


async def test_budget_errors(store):
    acme = await store.create_org("acme")
    beta = await store.create_org("beta")
    beta_key = await store.create_api_key(beta.id, name="x", key_hash="h1", prefix="p")
    with pytest.raises(InvalidRequest, match="period must be one of daily, monthly, total") as bad:
        await store.set_budget(acme.id, limit_micros=1, period="weekly")
    assert bad.value.param == "period"
    with pytest.raises(InvalidRequest, match="limit_micros"):
        await store.set_budget(acme.id, limit_micros=-1, period="daily")
    with pytest.raises(InvalidRequest, match="soft_limit_pct"):
        await store.set_budget(acme.id, limit_micros=1, period="daily", soft_limit_pct=101)
    with pytest.raises(NotFound, match=f"API key '{beta_key.id}' not found in organization 'acme'"):
        await store.set_budget(acme.id, key_id=beta_key.id, limit_micros=1, period="daily")
    with pytest.raises(NotFound, match="organization 'ghost' not found"):
        await store.set_budget("ghost", limit_micros=1, period="daily")
    with pytest.raises(NotFound, match="budget 'bud_nope' not found"):
        await store.delete_budget("bud_nope")
    assert await store.list_budgets() == []


# audit -------------------------------------------------------------------------------


async def test_audit_newest_first(store):
    for i in range(5):
        await store.add_audit("admin", f"action-{i}", f"org_{i}", {"n": i})
    await store.add_audit("operator", "rollout.start", "llama")
    entries = await store.list_audit(limit=3)
    assert [e.action for e in entries] == ["rollout.start", "action-4", "action-3"]
    assert entries[0].detail == {} and entries[1].detail == {"n": 4} and entries[1].actor == "admin"
    assert entries[0].id > entries[1].id > entries[2].id
    assert len(await store.list_audit()) == 6
    with pytest.raises(InvalidRequest, match="limit must be between 1") as bad:
        await store.list_audit(limit=0)
    assert bad.value.param == "limit"
    with pytest.raises(InvalidRequest, match="detail must be JSON-serialisable"):
        await store.add_audit("admin", "x", "y", {"when": object()})


# migrations and lifecycle ------------------------------------------------------------


async def test_reopen_is_idempotent_and_keeps_data(database_url):
    first = open_store(database_url)
    await first.open()
    await first.create_org("acme")
    version = await first.schema_version()
    await first.close()
    assert version == latest_version() >= 1

    second = open_store(database_url)
    await second.open()
    try:
        assert await second.schema_version() == version
        assert [o.name for o in await second.list_orgs()] == ["acme"]
        await second.ping()
    finally:
        await second.close()


async def test_concurrent_openers_both_succeed(database_url):
    stores = [open_store(database_url) for _ in range(3)]
    await asyncio.gather(*(s.open() for s in stores))
    try:
        assert [await s.schema_version() for s in stores] == [latest_version()] * 3
        await stores[0].create_org("acme")
        assert [o.name for o in await stores[2].list_orgs()] == ["acme"]
    finally:
        await asyncio.gather(*(s.close() for s in stores))
    db = open_database(database_url)
    await db.open()
    try:
        rows = await db.fetchall("SELECT version FROM schema_migrations ORDER BY version")
        assert [r["version"] for r in rows] == [m.version for m in MIGRATIONS]
    finally:
        await db.close()


async def test_pending_migrations_apply_once_and_newer_schema_is_refused(database_url):
    extra = Migration(latest_version() + 1, "test: a later column", ("ALTER TABLE organizations ADD COLUMN note TEXT",))
    db = open_database(database_url)
    await db.open()
    try:
        assert await apply_migrations(db, now=NOW) == [m.version for m in MIGRATIONS]
        assert await apply_migrations(db, now=NOW, migrations=(*MIGRATIONS, extra)) == [extra.version]
        assert await apply_migrations(db, now=NOW, migrations=(*MIGRATIONS, extra)) == []
        assert await current_version(db) == extra.version
        await db.execute("UPDATE organizations SET note = ? WHERE id = ?", ("x", "none"))
    finally:
        await db.close()
    older = open_store(database_url)
    with pytest.raises(ConfigError, match=f"schema version {extra.version} is newer"):
        await older.open()
    with pytest.raises(StoreUnavailable, match="not open"):
        await older.ping()


async def test_transaction_rolls_back_when_the_block_raises(database_url):
    db = open_database(database_url)
    await db.open()
    try:
        await apply_migrations(db, now=NOW)
        insert = "INSERT INTO organizations (id, name, created_at) VALUES (?, ?, ?)"
        with pytest.raises(Conflict):
            async with db.transaction() as tx:
                await tx.execute(insert, ("org_a", "acme", NOW))
                await tx.execute(insert, ("org_b", "acme", NOW))  # unique name: the whole block rolls back
        assert await db.fetchall("SELECT id FROM organizations") == []
        async with db.transaction() as tx:
            await tx.execute(insert, ("org_a", "acme", NOW))
        assert await db.fetchall("SELECT id FROM organizations") == [{"id": "org_a"}]
    finally:
        await db.close()


# backend specifics and bad input -----------------------------------------------------


async def test_sqlite_file_settings_and_relative_path(tmp_path):
    store = open_store("sqlite:///nested/dir/fleetgate.db")  # relative to the cwd (tmp_path)
    await store.open()
    await store.create_org("acme")
    await store.close()
    path = tmp_path / "nested" / "dir" / "fleetgate.db"

    def journal_mode() -> str:
        with sqlite3.connect(path) as conn:
            return conn.execute("PRAGMA journal_mode").fetchone()[0]

    assert await asyncio.to_thread(journal_mode) == "wal"


async def test_sqlite_in_memory():
    store = open_store("sqlite:///:memory:")
    await store.open()
    try:
        assert store.backend == "sqlite"
        model, endpoint = await _model_with_endpoint(store)
        assert (await store.registry())[0].endpoints == (endpoint,)
    finally:
        await store.close()


@pytest.mark.parametrize("url", ["mysql://db/fleetgate", "sqlite:///", "fleetgate.db"])
def test_unsupported_database_url(url):
    with pytest.raises(ConfigError, match="database_url"):
        open_store(url)


async def test_unreachable_postgres_fails_fast_without_leaking_password():
    store = open_store(f"postgresql://fleet:s3cret-pw@127.0.0.1:{free_port()}/fleetgate", connect_timeout_s=0.3)
    with pytest.raises(StoreUnavailable) as failed:
        await store.open()
    assert "127.0.0.1" in failed.value.message and "s3cret-pw" not in failed.value.message
    assert failed.value.status == 503


def test_sql_store_implements_the_store_protocol():
    methods = {name: fn for name, fn in vars(Store).items() if inspect.iscoroutinefunction(fn)}
    assert len(methods) > 25
    for name, fn in methods.items():
        ours = getattr(SqlStore, name)
        assert inspect.iscoroutinefunction(ours), name
        assert list(inspect.signature(ours).parameters) == list(inspect.signature(fn).parameters), name
