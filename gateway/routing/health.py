"""Endpoint health: passive ejection from live traffic and active probes of /health, /metrics, /v1/models.

Both only update `EndpointState`; the balancer reads it, the caller persists what it needs.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

import aiohttp
import orjson
from yarl import URL

from gateway.errors import ConfigError
from gateway.routing.balancer import EndpointState
from gateway.routing.vllm_metrics import parse_vllm_metrics

log = logging.getLogger(__name__)

StateCallback = Callable[[EndpointState], None]


class PassiveHealth:
    """Ejects an endpoint after consecutive failed requests, re-admits it after a good trial.

    Report connect errors, timeouts and 5xx answers with `record_failure`, everything else
    with `record_success`. After `failure_threshold` consecutive failures the endpoint is
    ejected for `cooldown_s`; then one trial request goes through (see `routing.Lease`): a
    success re-admits it, a failure ejects it again for twice the previous cool-down, up to
    `max_cooldown_s`.
    """

    __slots__ = ("failure_threshold", "cooldown_s", "max_cooldown_s", "on_eject", "on_readmit")

    def __init__(
        self,
        *,
        failure_threshold: int = 3,
        cooldown_s: float = 10.0,
        max_cooldown_s: float = 300.0,
        on_eject: StateCallback | None = None,
        on_readmit: StateCallback | None = None,
    ) -> None:
        if failure_threshold < 1:
            raise ConfigError(f"health failure_threshold must be >= 1, got {failure_threshold}")
        if cooldown_s <= 0:
            raise ConfigError(f"health cooldown_s must be > 0, got {cooldown_s}")
        if max_cooldown_s < cooldown_s:
            raise ConfigError(f"health max_cooldown_s ({max_cooldown_s}) must be >= cooldown_s ({cooldown_s})")
        self.failure_threshold = failure_threshold
        self.cooldown_s = cooldown_s
        self.max_cooldown_s = max_cooldown_s
        self.on_eject = on_eject
        self.on_readmit = on_readmit

    def record_success(self, state: EndpointState, now: float | None = None) -> bool:
        """Note a good response; returns True when this re-admitted an ejected endpoint.

        A success that arrives during the cool-down (a request sent before the ejection)
        does not cut the cool-down short.
        """
        if now is None:
            now = time.monotonic()
        state.consecutive_failures = 0
        if state.ejected_until <= 0.0 or now < state.ejected_until:
            return False
        state.ejected_until = 0.0
        state.cooldown_s = 0.0
        state.half_open = False
        if self.on_readmit is not None:
            self.on_readmit(state)
        return True

    def record_failure(self, state: EndpointState, now: float | None = None) -> bool:
        """Note a failed request; returns True when this ejected the endpoint."""
        if now is None:
            now = time.monotonic()
        state.consecutive_failures += 1
        if state.ejected_until > 0.0:
            if now < state.ejected_until:
                return False  # a request from before the ejection: already accounted for
            cooldown = min(state.cooldown_s * 2, self.max_cooldown_s)  # the trial failed
        elif state.consecutive_failures >= self.failure_threshold:
            cooldown = self.cooldown_s
        else:
            return False
        state.cooldown_s = cooldown
        state.ejected_until = now + cooldown
        state.half_open = False
        if self.on_eject is not None:
            self.on_eject(state)
        return True


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """One active check of an endpoint. `error` is a short reason, never a URL or credential."""

    healthy: bool
    status: int | None  # HTTP status of /health, None when it could not be reached
    error: str | None
    waiting: float | None
    running: float | None
    kv_usage: float | None
    latency_ms: float
    checked_at: datetime  # UTC wall clock, for the registry's last_checked_at
    served_model: str | None = None  # the name to send upstream as `model`; None: the registry's
    served_models: tuple[str, ...] | None = None  # what /v1/models listed; None: not read this time

    @property
    def summary(self) -> str:
        """Short text for the registry's `last_health` column."""
        return "healthy" if self.healthy else f"unhealthy: {self.error}"


ResultCallback = Callable[[EndpointState, ProbeResult], Awaitable[None] | None]


def _base_url(url: str) -> URL:
    """The server root: registry URLs may carry the OpenAI `/v1` prefix, vLLM's probes do not."""
    parsed = URL(url)
    path = parsed.path.rstrip("/")
    if path.endswith("/v1"):
        path = path[: -len("/v1")]
    return parsed.with_path(path + "/", encoded=False).with_query(None).with_fragment(None)


_MAX_MODELS = 64  # names read from one /v1/models answer; a pod serves a handful


def served_model(expected: str | None, listed: tuple[str, ...]) -> tuple[str | None, str | None]:
    """Which name to send to a pod that lists `listed` in /v1/models, when the registry expects `expected`.

    Returns:
        (served name or None, reason the pod cannot serve the model or None). The registry
        name when listed; the only listed name when there is one; none of several: a reason.
    """
    if expected is not None and expected in listed:
        return expected, None
    if len(listed) == 1:
        return listed[0], None
    if not listed or expected is None:
        return None, None  # no listing (404, empty) or nothing to compare with: the registry name, as before
    shown = ", ".join(name[:64] for name in listed[:5]) + (", ..." if len(listed) > 5 else "")
    return None, f"serves {shown}; not {expected}"


class HealthProber:
    """Probes every endpoint's `/health`, `/metrics` and `/v1/models` on an interval and updates its state.

    `/health` decides health (200 healthy; anything else, a timeout or a connection error
    unhealthy); `/metrics` only feeds load figures and never marks an endpoint unhealthy.
    `/v1/models` tells the name the pod serves the model under (vLLM 404s any other): the
    registry name when listed, else the pod's only name (`EndpointState.served_model`); a pod
    listing several names, none of them the registry's, is unhealthy. A pod without the route
    (404) is probed as before; an unreadable listing (timeout, garbage) keeps what was known.
    Every probe reads all three: a pod restarted under another name is caught within one interval.
    An endpoint becomes unavailable after `failure_threshold` failed probes in a row and
    available again after one good probe. Passive ejections are left alone: a 200 from
    `/health` does not prove the engine serves (vLLM #36960), only a trial request does.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        interval_s: float = 5.0,
        timeout_s: float = 2.0,
        *,
        failure_threshold: int = 1,
        max_concurrency: int = 64,
    ) -> None:
        if interval_s <= 0:
            raise ConfigError(f"health probe interval_s must be > 0, got {interval_s}")
        if timeout_s <= 0:
            raise ConfigError(f"health probe timeout_s must be > 0, got {timeout_s}")
        if failure_threshold < 1:
            raise ConfigError(f"health probe failure_threshold must be >= 1, got {failure_threshold}")
        if max_concurrency < 1:
            raise ConfigError(f"health probe max_concurrency must be >= 1, got {max_concurrency}")
        self.session = session
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.failure_threshold = failure_threshold
        self._limit = asyncio.Semaphore(max_concurrency)
        self.callback_errors = 0  # on_result failures (e.g. store down), logged and counted

    async def probe(self, state: EndpointState) -> ProbeResult:
        """Check one endpoint without changing its state."""
        started = time.perf_counter()
        listed: tuple[str, ...] | None = None
        try:
            base = _base_url(state.endpoint.url)
        except ValueError:  # e.g. a port out of range: the registry let a bad URL through
            status, error, metrics = None, "invalid URL", None
        else:
            async with self._limit:
                (status, error), metrics, listed = await asyncio.gather(
                    self._health(base / "health"), self._metrics(base / "metrics"), self._models(base / "v1/models")
                )
        served, mismatch = (state.served_model, None) if listed is None else served_model(state.model_name, listed)
        if error is None:
            error = mismatch
        # vLLM labels its series with the served name; without one, the registry name (or all series).
        load = parse_vllm_metrics(metrics, served or state.model_name) if metrics is not None else None
        return ProbeResult(
            healthy=status == 200 and mismatch is None,
            status=status,
            error=error,
            waiting=load.waiting if load else None,
            running=load.running if load else None,
            kv_usage=load.kv_usage if load else None,
            latency_ms=(time.perf_counter() - started) * 1000.0,
            checked_at=datetime.now(UTC),
            served_model=served,
            served_models=listed,
        )

    def apply(self, state: EndpointState, result: ProbeResult) -> None:
        """Fold a probe result into `state` (load figures and served name always, health with the threshold)."""
        state.waiting = result.waiting
        state.running = result.running
        state.kv_usage = result.kv_usage
        state.served_model = result.served_model
        if result.healthy:
            state.probe_failures = 0
            state.healthy = True
        else:
            state.probe_failures += 1
            if state.probe_failures >= self.failure_threshold:
                state.healthy = False

    async def check(self, state: EndpointState, on_result: ResultCallback | None = None) -> ProbeResult:
        """Probe one endpoint, update its state, then report to `on_result`."""
        result = await self.probe(state)
        self.apply(state, result)
        if on_result is not None:
            await self._report(on_result, state, result)
        return result

    async def check_all(
        self, states: Iterable[EndpointState], on_result: ResultCallback | None = None
    ) -> list[ProbeResult]:
        """Probe all endpoints concurrently (one round)."""
        return list(await asyncio.gather(*(self.check(s, on_result) for s in states)))

    async def run(
        self, get_states: Callable[[], Iterable[EndpointState]], on_result: ResultCallback | None = None
    ) -> None:
        """Probe every `interval_s` until cancelled; `get_states` is re-read each round.

        Cancelling the task stops it between or during probes; a state is only ever
        updated from a complete probe, so cancellation leaves no half-written state.
        """
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            await self.check_all(list(get_states()), on_result)
            await asyncio.sleep(max(0.0, self.interval_s - (loop.time() - started)))

    async def _report(self, on_result: ResultCallback, state: EndpointState, result: ProbeResult) -> None:
        try:
            outcome = on_result(state, result)
            if inspect.isawaitable(outcome):
                await outcome
        except Exception:  # noqa: BLE001 - a failing sink (store down) must not stop probing
            self.callback_errors += 1
            log.warning("health: on_result failed for endpoint %s", state.endpoint.id, exc_info=True)

    async def _health(self, url: URL) -> tuple[int | None, str | None]:
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        try:
            async with self.session.get(url, timeout=timeout, allow_redirects=False) as response:
                await response.read()
                if response.status == 200:
                    return 200, None
                return response.status, f"HTTP {response.status}"
        except TimeoutError:
            return None, "timeout"
        except (aiohttp.ClientError, OSError) as e:
            return None, type(e).__name__

    async def _models(self, url: URL) -> tuple[str, ...] | None:
        """Model ids in /v1/models: () when the pod has no such route (404), None when unreadable now."""
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        try:
            async with self.session.get(url, timeout=timeout, allow_redirects=False) as response:
                if response.status in (404, 405):
                    return ()
                if response.status != 200:
                    return None
                body = await response.read()
        except (TimeoutError, aiohttp.ClientError, OSError):
            return None  # the /health probe reports the pod's reachability
        try:
            data = orjson.loads(body)["data"]
            names = tuple(entry["id"] for entry in data[:_MAX_MODELS])
        except (orjson.JSONDecodeError, KeyError, TypeError, IndexError):
            return None
        return names if all(isinstance(name, str) and name for name in names) else None

    async def _metrics(self, url: URL) -> str | None:
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        try:
            async with self.session.get(url, timeout=timeout, allow_redirects=False) as response:
                if response.status != 200:
                    return None
                return await response.text(errors="replace")
        except (TimeoutError, aiohttp.ClientError, OSError):
            return None  # metrics are optional: a pod without them is still healthy
