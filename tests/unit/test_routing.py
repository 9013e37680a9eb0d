"""Endpoint selection: weighted release split, power-of-two-choices, affinity, exclusions."""

from __future__ import annotations

import random
from collections import Counter
from datetime import UTC, datetime

import pytest

from gateway.routing.balancer import (
    Balancer,
    EndpointState,
    StateTable,
    acquire,
    release,
)
from gateway.store.models import Endpoint

NOW = 1000.0


def endpoint(eid: str, *, release_name: str = "stable", weight: int = 100, status: str = "ready",
             model_id: str = "m1", url: str | None = None) -> Endpoint:
    return Endpoint(
        id=eid, model_id=model_id, url=url or f"http://127.0.0.1:9/{eid}", release=release_name,
        weight=weight, status=status, last_health=None, last_checked_at=None,
        created_at=datetime(2026, 1, 1, tzinfo=UTC),
    )


def state(eid: str, **kw) -> EndpointState:
    return EndpointState(endpoint(eid, **kw))


def picks(balancer: Balancer, states: list[EndpointState], n: int, **kw) -> Counter:
    return Counter(balancer.pick(states, now=NOW, **kw).id for _ in range(n))


def test_weighted_split_90_10_holds_over_2000_picks():
    states = [state("stable", weight=90), state("canary", release_name="canary", weight=10)]
    counts = picks(Balancer(rng=random.Random(7)), states, 2000)
    assert 0.86 <= counts["stable"] / 2000 <= 0.94, counts


def test_release_split_holds_with_several_endpoints_per_release_and_uneven_load():
    stable = [state("s1", weight=45), state("s2", weight=45)]
    canary = state("c1", release_name="canary", weight=10)
    stable[0].in_flight, stable[1].in_flight = 7, 9  # busy stable, idle canary: p2c must not leak load
    counts = picks(Balancer(rng=random.Random(3)), [*stable, canary], 2000)
    assert 0.86 <= (counts["s1"] + counts["s2"]) / 2000 <= 0.94, counts


def test_power_of_two_prefers_the_less_loaded_endpoint():
    states = [state("a"), state("b")]
    states[0].in_flight = 5
    assert picks(Balancer(rng=random.Random(1)), states, 200) == Counter({"b": 200})


def test_power_of_two_never_picks_the_most_loaded_of_three():
    states = [state("idle"), state("mid"), state("busy")]
    states[1].in_flight, states[2].in_flight = 4, 9
    counts = picks(Balancer(rng=random.Random(2)), states, 3000)
    assert counts["busy"] == 0
    assert counts["idle"] > counts["mid"] > 0


def test_ties_on_in_flight_break_on_queue_depth_then_kv_usage():
    a, b = state("a"), state("b")
    a.waiting, b.waiting = 3.0, 0.0
    assert picks(Balancer(rng=random.Random(1)), [a, b], 50) == Counter({"b": 50})
    a.waiting = b.waiting = 1.0
    a.kv_usage, b.kv_usage = 0.2, 0.9
    assert picks(Balancer(rng=random.Random(1)), [a, b], 50) == Counter({"a": 50})


def test_equal_load_spreads_evenly_within_a_release():
    counts = picks(Balancer(rng=random.Random(5)), [state("a"), state("b")], 2000)
    assert 0.44 <= counts["a"] / 2000 <= 0.56, counts


@pytest.mark.parametrize("status", ["disabled", "draining", "unhealthy"])
def test_endpoints_not_ready_are_never_picked(status):
    states = [state("bad", status=status), state("good", weight=1)]
    assert picks(Balancer(rng=random.Random(1)), states, 300) == Counter({"good": 300})
    assert Balancer().pick([states[0]], now=NOW) is None


def test_zero_weight_and_failed_probe_endpoints_are_never_picked():
    zero, sick, good = state("zero", weight=0), state("sick"), state("good", weight=1)
    sick.healthy = False
    assert picks(Balancer(rng=random.Random(1)), [zero, sick, good], 300) == Counter({"good": 300})
    assert Balancer().pick([zero, sick], now=NOW) is None


def test_ejected_endpoint_is_skipped_until_its_cooldown_passes():
    ejected, other = state("ejected"), state("other")
    ejected.ejected_until = NOW + 5
    assert picks(Balancer(rng=random.Random(1)), [ejected, other], 100) == Counter({"other": 100})
    assert ejected.available(NOW + 5)  # half-open: one trial allowed


def test_exclude_skips_endpoints_already_tried():
    states = [state("a"), state("b"), state("c")]
    balancer = Balancer(rng=random.Random(4))
    assert set(picks(balancer, states, 200, exclude={"a", "b"})) == {"c"}
    assert balancer.pick(states, exclude=("a", "b", "c"), now=NOW) is None
    assert set(picks(balancer, states, 200, exclude=["a"], affinity_key="s-1")) <= {"b", "c"}


def test_empty_or_unknown_input_gives_none_not_an_error():
    assert Balancer().pick([]) is None
    assert Balancer().pick([state("a")], exclude={"zzz"}, now=NOW).id == "a"


def test_affinity_keeps_a_session_on_one_endpoint_despite_load():
    states = [state(f"e{i}") for i in range(4)]
    balancer = Balancer(rng=random.Random(1))
    first = balancer.pick(states, affinity_key="session-42", now=NOW)
    for other in states:
        other.in_flight = 0 if other is first else 3
    first.in_flight = 50
    assert picks(balancer, states, 100, affinity_key="session-42") == Counter({first.id: 100})
    # Independent of candidate order, so every gateway replica agrees.
    assert balancer.pick(list(reversed(states)), affinity_key="session-42", now=NOW) is first


def test_affinity_moves_only_the_removed_endpoints_keys():
    states = [state(f"e{i}") for i in range(4)]
    balancer = Balancer()
    keys = [f"user-{i}" for i in range(2000)]
    before = {k: balancer.pick(states, affinity_key=k, now=NOW).id for k in keys}
    share = Counter(before.values())
    assert all(350 <= n <= 650 for n in share.values()), share  # ~500 each
    states[2].endpoint = endpoint("e2", status="draining")
    after = {k: balancer.pick(states, affinity_key=k, now=NOW).id for k in keys}
    moved = {k for k in keys if before[k] != after[k]}
    assert moved == {k for k in keys if before[k] == "e2"}
    assert 0.18 <= len(moved) / len(keys) <= 0.32  # ~1/n with n = 4
    # The endpoint coming back takes exactly its old sessions back.
    states[2].endpoint = endpoint("e2")
    assert {k: balancer.pick(states, affinity_key=k, now=NOW).id for k in keys} == before


def test_affinity_spreads_sessions_by_weight():
    states = [state("stable", weight=90), state("canary", release_name="canary", weight=10)]
    counts = Counter(Balancer().pick(states, affinity_key=f"k{i}", now=NOW).id for i in range(2000))
    assert 0.86 <= counts["stable"] / 2000 <= 0.94, counts


def test_affinity_falls_back_consistently_when_its_endpoint_is_excluded():
    states = [state(f"e{i}") for i in range(5)]
    balancer = Balancer()
    home = balancer.pick(states, affinity_key="s", now=NOW)
    fallback = {balancer.pick(states, affinity_key="s", exclude={home.id}, now=NOW).id for _ in range(20)}
    assert len(fallback) == 1 and home.id not in fallback


def test_lease_counts_in_flight_and_releases_once():
    s = state("a")
    lease = acquire(s)
    with acquire(s):
        assert s.in_flight == 2
    assert s.in_flight == 1
    release(lease)
    release(lease)
    assert s.in_flight == 0


def test_half_open_endpoint_admits_one_trial_at_a_time():
    s, other = state("a"), state("b")
    s.ejected_until = NOW - 1  # cool-down over
    trial = acquire(Balancer().pick([s], now=NOW))
    assert trial.trial and s.half_open
    assert Balancer().pick([s], now=NOW) is None
    assert picks(Balancer(rng=random.Random(1)), [s, other], 50) == Counter({"b": 50})
    trial.release()  # ended without a verdict (client went away): another trial may go
    assert not s.half_open and Balancer().pick([s], now=NOW) is s


def test_state_table_keeps_counters_across_snapshots():
    table = StateTable()
    table.sync([endpoint("a"), endpoint("b", model_id="m2")], model_names={"m1": "llama"})
    a = table.get("a")
    a.in_flight, a.consecutive_failures = 3, 2
    table.sync([endpoint("a", weight=50), endpoint("c")])
    assert table.get("a") is a and a.endpoint.weight == 50 and a.in_flight == 3 and a.model_name == "llama"
    assert table.get("b") is None and len(table) == 2
    assert [s.id for s in table.for_model("m1")] == ["a", "c"]
    assert table.for_model("m2") == ()
    table.sync([endpoint("a", url="http://10.0.0.9:8000")])  # moved: a new pod, fresh state
    assert table.get("a") is not a and table.get("a").in_flight == 0
