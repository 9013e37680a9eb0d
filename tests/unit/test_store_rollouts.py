"""Endpoint mirror_percent, release histories and rollout state in the store, on SQLite and PostgreSQL.

The same assertions run against both backends: one schema, one set of rules (one deployed
revision per release, one active rollout per model and environment, compare-and-set writes).
"""

from __future__ import annotations

import asyncio

import pytest

from gateway.errors import Conflict, InvalidRequest, NotFound
from gateway.store.migrations import latest_version


def _release(**overrides) -> dict:
    values = dict(model="demo-chat", environment="production", deployer="local", track="stable", version="v1",
                  status="deployed", values={"replicaCount": 1})
    values.update(overrides)
    return values


async def _rollout(store, model: str = "demo-chat", environment: str = "production", **extra):
    return await store.create_rollout(model, environment, version=extra.pop("version", "v2"),
                                      kind=extra.pop("kind", "canary"), playbook="canary.yaml",
                                      spec={"steps": [{"deploy": {}}]}, owner={"host": "h", "pid": 1}, **extra)


# endpoints: mirror_percent ----------------------------------------------------------------


async def test_schema_is_at_the_latest_migration(store):
    assert await store.schema_version() == latest_version() >= 3


async def test_endpoint_mirror_percent_defaults_and_updates(store):
    model = await store.create_model("llama", "production")
    plain = await store.add_endpoint(model.id, "http://127.0.0.1:9001")
    shadow = await store.add_endpoint(model.id, "http://127.0.0.1:9002", release="canary", mirror_percent=12.5)
    assert plain.mirror_percent == 0.0 and shadow.mirror_percent == 12.5
    assert (await store.get_endpoint(shadow.id)).mirror_percent == 12.5

    revision = await store.registry_revision()
    updated = await store.update_endpoint(shadow.id, mirror_percent=100)
    assert updated.mirror_percent == 100.0 and updated.weight == shadow.weight
    assert await store.registry_revision() == revision + 1  # the data plane sees the change
    assert (await store.update_endpoint(shadow.id, weight=5)).mirror_percent == 100.0  # None keeps it
    [entry] = await store.registry("production")
    assert [e.mirror_percent for e in entry.endpoints] == [0.0, 100.0]


@pytest.mark.parametrize("bad", [-1, 100.5, float("nan"), float("inf"), "5", True])
async def test_endpoint_mirror_percent_is_bounded(store, bad):
    model = await store.create_model("llama", "production")
    endpoint = await store.add_endpoint(model.id, "http://127.0.0.1:9001")
    with pytest.raises(InvalidRequest, match="mirror_percent") as e:
        await store.update_endpoint(endpoint.id, mirror_percent=bad)
    assert e.value.param == "mirror_percent"
    with pytest.raises(InvalidRequest, match="mirror_percent"):
        await store.add_endpoint(model.id, "http://127.0.0.1:9002", mirror_percent=bad)


# releases ---------------------------------------------------------------------------------


async def test_release_revisions_number_up_and_deployed_supersedes(store):
    first = await store.add_release_revision("demo-chat-production", **_release(
        runtime={"pids": [1]}, endpoints=["http://127.0.0.1:9001/"], description="install"))
    assert (first.revision, first.status, first.endpoints) == (1, "deployed", ("http://127.0.0.1:9001",))
    second = await store.add_release_revision("demo-chat-production",
                                              **_release(version="v2", status="pending-upgrade"))
    assert second.revision == 2

    deployed = await store.update_release_revision("demo-chat-production", 2, status="deployed",
                                                   endpoints=["http://127.0.0.1:9002"], runtime={"pids": [2]})
    assert (deployed.status, deployed.runtime, deployed.endpoints) == ("deployed", {"pids": [2]},
                                                                       ("http://127.0.0.1:9002",))
    history = await store.release_history("demo-chat-production")
    assert [(r.revision, r.version, r.status) for r in history] == [(1, "v1", "superseded"), (2, "v2", "deployed")]

    # A rollback is a new revision with the old values; it supersedes revision 2 in the same transaction.
    third = await store.add_release_revision("demo-chat-production", **_release(description="rollback to 1"))
    assert third.revision == 3
    statuses = [r.status for r in await store.release_history("demo-chat-production")]
    assert statuses == ["superseded", "superseded", "deployed"]

    release = await store.get_release("demo-chat-production")
    assert (release.name, release.model, release.environment, release.deployer, release.track) == (
        "demo-chat-production", "demo-chat", "production", "local", "stable")
    assert (release.revision, release.version, release.description) == (3, "v1", "rollback to 1")
    assert release.values == {"replicaCount": 1} and release.created_at <= release.updated_at
    data = release.to_dict()
    assert data["endpoints"] == [] and data["created_at"].endswith("+00:00")


async def test_list_releases_filters_and_orders_by_name(store):
    await store.add_release_revision("demo-chat-production-canary", **_release(track="canary", version="v2"))
    await store.add_release_revision("demo-chat-production", **_release())
    await store.add_release_revision("demo-chat-production", **_release(version="v3", status="failed"))
    await store.add_release_revision("other-staging", **_release(model="other", environment="staging",
                                                                 deployer="helm"))
    names = [r.name for r in await store.list_releases()]
    assert names == ["demo-chat-production", "demo-chat-production-canary", "other-staging"]
    [stable, canary] = await store.list_releases(model="demo-chat", environment="production")
    assert (stable.revision, stable.version, stable.status) == (2, "v3", "failed")  # the latest revision
    assert canary.track == "canary"
    assert [r.name for r in await store.list_releases(deployer="helm")] == ["other-staging"]
    assert await store.list_releases(environment="nowhere") == []


async def test_release_errors(store):
    await store.add_release_revision("demo-chat-production", **_release())
    with pytest.raises(Conflict, match="belongs to model 'demo-chat'") as e:
        await store.add_release_revision("demo-chat-production", **_release(track="canary"))
    assert (e.value.code, e.value.param) == ("release_mismatch", "track")
    assert len(await store.release_history("demo-chat-production")) == 1  # the refused revision left nothing
    with pytest.raises(NotFound) as e:
        await store.get_release("nope")
    assert e.value.code == "release_not_found"
    with pytest.raises(NotFound) as e:
        await store.update_release_revision("nope", 1, status="failed")
    assert e.value.code == "release_not_found"
    with pytest.raises(NotFound) as e:
        await store.update_release_revision("demo-chat-production", 9, status="failed")
    assert e.value.code == "revision_not_found"
    with pytest.raises(NotFound):
        await store.release_history("nope")
    with pytest.raises(InvalidRequest, match="status must be one of") as e:
        await store.add_release_revision("x", **_release(status="done"))
    with pytest.raises(InvalidRequest, match="deployer"):
        await store.add_release_revision("x", **_release(deployer="kubectl"))
    with pytest.raises(InvalidRequest, match="endpoints"):
        await store.add_release_revision("x", **_release(endpoints=["ftp://host"]))
    with pytest.raises(InvalidRequest, match="description"):
        await store.add_release_revision("x", **_release(description="a\x00b"))


async def test_delete_release_removes_its_history(store):
    await store.add_release_revision("demo-chat-production", **_release())
    await store.add_release_revision("demo-chat-production", **_release(version="v2"))
    await store.delete_release("demo-chat-production")
    with pytest.raises(NotFound):
        await store.get_release("demo-chat-production")
    with pytest.raises(NotFound) as e:
        await store.delete_release("demo-chat-production")
    assert e.value.code == "release_not_found"
    # The name is free again, and numbering restarts as after `helm uninstall`.
    assert (await store.add_release_revision("demo-chat-production", **_release())).revision == 1


async def test_concurrent_revisions_get_distinct_numbers(store):
    results = await asyncio.gather(*(store.add_release_revision("demo-chat-production", **_release(version=f"v{i}"))
                                     for i in range(8)))
    assert sorted(r.revision for r in results) == list(range(1, 9))
    deployed = [r for r in await store.release_history("demo-chat-production") if r.status == "deployed"]
    assert len(deployed) == 1


# rollouts ---------------------------------------------------------------------------------


async def test_rollout_lifecycle_with_compare_and_set(store):
    rollout = await _rollout(store)
    assert rollout.id.startswith("ro_") and rollout.active
    assert (rollout.status, rollout.step, rollout.phase, rollout.state, rollout.version_no) == (
        "running", 0, "pending", {}, 1)
    assert await store.get_rollout(rollout.id) == rollout

    moved = await store.update_rollout(rollout.id, expected_version_no=1, step=2, phase="started",
                                       state={"canary_weight": 10, "stable_weights": {"ep_a": 100}})
    assert (moved.step, moved.phase, moved.version_no) == (2, "started", 2)
    assert moved.state["stable_weights"] == {"ep_a": 100} and moved.updated_at >= rollout.updated_at

    with pytest.raises(Conflict, match="version_no 2, not 1") as e:
        await store.update_rollout(rollout.id, expected_version_no=1, step=3)
    assert (e.value.code, e.value.param) == ("rollout_changed", "expected_version_no")

    taken = await store.update_rollout(rollout.id, expected_version_no=2, owner={"host": "other", "pid": 7})
    assert taken.owner == {"host": "other", "pid": 7}
    done = await store.update_rollout(rollout.id, expected_version_no=3, status="failed", reason="gate p95 failed")
    assert (done.status, done.reason, done.active) == ("failed", "gate p95 failed", False)
    with pytest.raises(Conflict, match="cannot change any more") as e:
        await store.update_rollout(rollout.id, expected_version_no=4, status="running")
    assert e.value.code == "rollout_finished"


async def test_one_active_rollout_per_model_and_environment(store):
    first = await _rollout(store)
    with pytest.raises(Conflict, match=first.id) as e:
        await _rollout(store)
    assert e.value.code == "rollout_in_progress"
    aborting = await store.update_rollout(first.id, expected_version_no=1, status="aborting")
    with pytest.raises(Conflict, match="is aborting"):
        await _rollout(store)
    other_env = await _rollout(store, environment="staging")
    other_model = await _rollout(store, model="other")
    await store.update_rollout(first.id, expected_version_no=aborting.version_no, status="aborted")
    again = await _rollout(store, version="v3")

    listed = await store.list_rollouts()
    assert [r.id for r in listed] == [again.id, other_model.id, other_env.id, first.id]  # newest first
    assert [r.id for r in await store.list_rollouts(model="demo-chat", environment="production")] == [
        again.id, first.id]
    assert [r.id for r in await store.list_rollouts(model="demo-chat", active=False)] == [first.id]
    assert {r.id for r in await store.list_rollouts(active=True)} == {again.id, other_env.id, other_model.id}
    assert len(await store.list_rollouts(limit=2)) == 2


async def test_concurrent_starts_make_one_rollout(store):
    results = await asyncio.gather(*(_rollout(store) for _ in range(6)), return_exceptions=True)
    started = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, Conflict)]
    assert len(started) == 1 and len(refused) == 5
    assert all(r.code == "rollout_in_progress" for r in refused)


async def test_concurrent_drivers_one_write_wins(store):
    rollout = await _rollout(store)
    results = await asyncio.gather(*(store.update_rollout(rollout.id, expected_version_no=1, step=i)
                                     for i in range(1, 6)), return_exceptions=True)
    written = [r for r in results if not isinstance(r, BaseException)]
    assert len(written) == 1 and all(isinstance(r, Conflict) and r.code == "rollout_changed"
                                     for r in results if r not in written)
    assert (await store.get_rollout(rollout.id)).version_no == 2


async def test_rollout_events_timeline(store):
    rollout = await _rollout(store)
    first = await store.add_rollout_event(rollout.id, step=0, name="deploy", phase="started", message="deploying v2")
    second = await store.add_rollout_event(rollout.id, step=0, name="deploy", phase="passed",
                                           data={"revision": 1, "endpoints": ["http://127.0.0.1:9"]})
    assert first.id < second.id and first.ts <= second.ts and second.message == ""
    await store.update_rollout(rollout.id, expected_version_no=1, status="succeeded")
    # The timeline stays writable after the end (a late "info" line), while the state does not.
    await store.add_rollout_event(rollout.id, step=6, name="finalize", phase="info", message="done\nall good")
    events = await store.list_rollout_events(rollout.id)
    assert [(e.name, e.phase) for e in events] == [("deploy", "started"), ("deploy", "passed"), ("finalize", "info")]
    assert events[1].data == {"revision": 1, "endpoints": ["http://127.0.0.1:9"]}
    assert events[0].to_dict()["rollout_id"] == rollout.id


async def test_rollout_errors(store):
    with pytest.raises(NotFound) as e:
        await store.get_rollout("ro_nope")
    assert e.value.code == "rollout_not_found"
    with pytest.raises(NotFound) as e:
        await store.update_rollout("ro_nope", expected_version_no=1, step=1)
    assert e.value.code == "rollout_not_found"
    with pytest.raises(NotFound) as e:
        await store.add_rollout_event("ro_nope", step=0, name="deploy", phase="started")
    assert e.value.code == "rollout_not_found"
    with pytest.raises(NotFound):
        await store.list_rollout_events("ro_nope")
    with pytest.raises(InvalidRequest, match="kind must be one of"):
        await _rollout(store, kind="big-bang")
    rollout = await _rollout(store)
    with pytest.raises(InvalidRequest, match="Nothing to change"):
        await store.update_rollout(rollout.id, expected_version_no=1)
    with pytest.raises(InvalidRequest, match="status must be one of"):
        await store.update_rollout(rollout.id, expected_version_no=1, status="paused")
    with pytest.raises(InvalidRequest, match="step"):
        await store.update_rollout(rollout.id, expected_version_no=1, step=-1)
    with pytest.raises(InvalidRequest, match="phase must be one of"):
        await store.add_rollout_event(rollout.id, step=0, name="deploy", phase="done")
    with pytest.raises(InvalidRequest, match="limit"):
        await store.list_rollouts(limit=0)
    assert (await store.get_rollout(rollout.id)).version_no == 1  # nothing refused was written
