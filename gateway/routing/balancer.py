"""Endpoint selection for the data plane: weighted release split, least-loaded of two, session affinity.

Per-endpoint live state (in-flight count, ejection, probed load) lives here; health.py decides it.
"""

from __future__ import annotations

import hashlib
import math
import random
import time
import zlib
from collections.abc import Collection, Iterable, Sequence
from types import TracebackType

from gateway.store.models import Endpoint

_MASK64 = (1 << 64) - 1
_TWO_M52 = 2.0**-52


def _hash64(text: str) -> int:
    """A stable 64-bit hash (same in every process, unlike `hash()`): endpoints' rendezvous seeds."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


class EndpointState:
    """What one gateway process knows about one endpoint, beyond its registry record.

    `ejected_until` is a `time.monotonic()` deadline set by passive ejection (0.0 = not ejected);
    once it has passed the endpoint is half-open and `half_open` is True while its single
    trial request is in flight. `healthy` is the last active probe's verdict (optimistic
    until the first probe); `waiting`, `running` and `kv_usage` come from the pod's metrics.
    `served_model` is the name the pod serves the model under, read from its /v1/models by the
    prober: send it upstream as `model` (None: unknown, send the registry name).
    Assigning `endpoint` (a new registry record) refreshes the cached `id`, `weight`,
    `release`, `routable` and `mirror` (its mirror_percent) that the hot path reads;
    `mirror_credit` is the shadow accumulator (gateway/proxy/shadow.py).
    """

    __slots__ = (
        "_endpoint", "id", "weight", "release", "routable", "hrw_seed", "model_name", "in_flight",
        "consecutive_failures", "ejected_until", "cooldown_s", "half_open", "healthy", "probe_failures",
        "waiting", "running", "kv_usage", "served_model", "mirror", "mirror_credit",
    )

    def __init__(self, endpoint: Endpoint, model_name: str | None = None) -> None:
        self.mirror_credit = 0.0
        self.endpoint = endpoint
        self.model_name = model_name  # the registry's model name: what the prober expects the pod to serve
        self.served_model: str | None = None
        self.in_flight = 0
        self.consecutive_failures = 0
        self.ejected_until = 0.0
        self.cooldown_s = 0.0  # cool-down of the current/last ejection, doubled on a failed trial
        self.half_open = False
        self.healthy = True
        self.probe_failures = 0
        self.waiting: float | None = None
        self.running: float | None = None
        self.kv_usage: float | None = None

    @property
    def endpoint(self) -> Endpoint:
        return self._endpoint

    @endpoint.setter
    def endpoint(self, endpoint: Endpoint) -> None:
        self._endpoint = endpoint
        if getattr(self, "id", None) != endpoint.id:
            self.id = endpoint.id
            self.hrw_seed = _hash64(endpoint.id)
        self.weight = endpoint.weight
        self.release = endpoint.release
        self.routable = endpoint.status == "ready" and endpoint.weight > 0
        self.mirror = endpoint.mirror_percent

    @property
    def ejected(self) -> bool:
        return self.ejected_until > 0.0

    def available(self, now: float) -> bool:
        """True when a new request may be sent here at monotonic time `now`."""
        if not (self.routable and self.healthy):
            return False
        if self.ejected_until > 0.0:
            return now >= self.ejected_until and not self.half_open
        return True

    def __repr__(self) -> str:
        return (
            f"EndpointState(id={self.id!r}, release={self.release!r}, weight={self.weight}, "
            f"routable={self.routable}, healthy={self.healthy}, in_flight={self.in_flight}, "
            f"ejected_until={self.ejected_until}, half_open={self.half_open})"
        )


class Lease:
    """One request's claim on an endpoint; release it exactly once (idempotent, or use `with`)."""

    __slots__ = ("state", "trial", "_open")

    def __init__(self, state: EndpointState) -> None:
        self.state = state
        # A request sent to an ejected endpoint is its half-open trial: block others until it ends.
        self.trial = state.ejected_until > 0.0
        self._open = True
        state.in_flight += 1
        if self.trial:
            state.half_open = True

    def release(self) -> None:
        if not self._open:
            return
        self._open = False
        state = self.state
        state.in_flight -= 1
        if self.trial:
            state.half_open = False

    def __enter__(self) -> Lease:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


def acquire(state: EndpointState) -> Lease:
    """Count a request against `state` (call right after `Balancer.pick`, with no await between)."""
    return Lease(state)


def release(lease: Lease) -> None:
    """Release a lease taken with `acquire`; releasing twice is harmless."""
    lease.release()


def _load(state: EndpointState) -> tuple[int, float, float]:
    return (state.in_flight, state.waiting or 0.0, state.kv_usage or 0.0)


class Balancer:
    """Picks an endpoint for one request.

    Traffic splits across releases exactly by weight (a 90/10 stable/canary split holds no
    matter the load), then power-of-two-choices on (in-flight, queue depth, KV use) among
    endpoints of the drawn release. With an affinity key, weighted rendezvous hashing sends a
    session to the same endpoint while it stays available; only sessions of an endpoint that
    goes away move (each to its next-ranked endpoint, which is just as stable).
    """

    __slots__ = ("_rng",)

    def __init__(self, *, rng: random.Random | None = None) -> None:
        self._rng = rng if rng is not None else random.Random()

    def pick(
        self,
        candidates: Sequence[EndpointState],
        *,
        affinity_key: str | None = None,
        exclude: Collection[str] = (),
        now: float | None = None,
        rng: random.Random | None = None,
    ) -> EndpointState | None:
        """Choose an endpoint among `candidates`, or None when none is available.

        Args:
            candidates: the model's endpoints.
            affinity_key: session id (`X-Session-ID` / the body's `user`) to stick to.
            exclude: endpoint ids already tried for this request (retries).
            now: monotonic time, for tests; defaults to `time.monotonic()`.
            rng: random source, for tests; defaults to the balancer's own.
        """
        if now is None:
            now = time.monotonic()
        pool: list[EndpointState] = []
        total = 0
        for s in candidates:
            # available() inlined for the common case: this loop is the router's hot path.
            if (
                s.routable
                and s.healthy
                and (s.ejected_until <= 0.0 or s.available(now))
                and (not exclude or s.id not in exclude)
            ):
                pool.append(s)
                total += s.weight
        if len(pool) < 2:
            return pool[0] if pool else None
        if affinity_key is not None:
            return _rendezvous(pool, affinity_key)
        rand = (rng if rng is not None else self._rng).random
        first = _weighted(pool, rand() * total)
        release_name = first.release
        peers = [s for s in pool if s is not first and s.release == release_name]
        if not peers:
            return first
        if len(peers) == 1:
            second = peers[0]
        else:
            second = _weighted(peers, rand() * sum(s.weight for s in peers))
        # `first` was drawn at random, so preferring it on a tie is a random tie-break.
        if second.in_flight != first.in_flight:
            return second if second.in_flight < first.in_flight else first
        return second if _load(second) < _load(first) else first


def _weighted(pool: list[EndpointState], target: float) -> EndpointState:
    """The endpoint at `target` (0..total weight) on the weight-proportional line over `pool`."""
    for state in pool:
        target -= state.weight
        if target < 0:
            return state
    return pool[-1]  # float rounding with target close to the total


def _rendezvous(pool: list[EndpointState], key: str) -> EndpointState:
    """Weighted highest-random-weight: score = weight / -ln(u), u a hash of (key, endpoint)."""
    key_hash = zlib.crc32(key.encode())
    best = pool[0]
    best_score = -1.0
    log = math.log
    for state in pool:
        # Two multiply/xor-shift rounds over (key hash ^ endpoint seed): crc32 is linear, so
        # without mixing the endpoints' scores would be correlated. u uses the top 52 bits
        # + 0.5, exact in a double, so 0 < u < 1 strictly and -ln(u) > 0.
        x = ((key_hash ^ state.hrw_seed) * 0x9E3779B97F4A7C15) & _MASK64
        x = ((x ^ (x >> 32)) * 0xBF58476D1CE4E5B9) & _MASK64
        score = state.weight / -log(((x >> 12) + 0.5) * _TWO_M52)
        if score > best_score:
            best, best_score = state, score
    return best


class StateTable:
    """Keeps one `EndpointState` per endpoint id across registry snapshots.

    Counters and ejections survive a snapshot refresh; an endpoint whose URL changed, or
    that left the registry, starts over.
    """

    __slots__ = ("_by_id", "_by_model")

    def __init__(self) -> None:
        self._by_id: dict[str, EndpointState] = {}
        self._by_model: dict[str, tuple[EndpointState, ...]] = {}

    def sync(self, endpoints: Iterable[Endpoint], model_names: dict[str, str] | None = None) -> None:
        """Replace the endpoint set with `endpoints` (all models).

        Args:
            endpoints: every endpoint of the new snapshot.
            model_names: model id → served model name, used to select metric series.
        """
        names = model_names or {}
        by_id: dict[str, EndpointState] = {}
        by_model: dict[str, list[EndpointState]] = {}
        for endpoint in endpoints:
            state = self._by_id.get(endpoint.id)
            if state is None or state.endpoint.url != endpoint.url:
                state = EndpointState(endpoint)
            else:
                state.endpoint = endpoint
            state.model_name = names.get(endpoint.model_id, state.model_name)
            by_id[endpoint.id] = state
            by_model.setdefault(endpoint.model_id, []).append(state)
        self._by_id = by_id
        self._by_model = {model_id: tuple(states) for model_id, states in by_model.items()}

    def for_model(self, model_id: str) -> tuple[EndpointState, ...]:
        return self._by_model.get(model_id, ())

    def get(self, endpoint_id: str) -> EndpointState | None:
        return self._by_id.get(endpoint_id)

    def states(self) -> list[EndpointState]:
        return list(self._by_id.values())

    def __len__(self) -> int:
        return len(self._by_id)
