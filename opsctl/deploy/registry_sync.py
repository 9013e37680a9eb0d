"""Keeping the gateway's registry in step with a deployer release: the caller's job, done the same way by the
rollout engine, `opsctl rollback` and `opsctl up`.

Endpoints carry the deployer release name as their `release` label. Removing endpoints never cuts a
request short: they are set draining first (no new requests), then deleted once nothing is in flight.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from gateway.errors import FleetgateError
from opsctl.client import AdminClient, path_part

# A registry change reaches every gateway replica within a second (pub/sub); until then a replica that has
# not seen "draining" may still start a request on the endpoint.
PROPAGATION_S = 1.0
# Without the gateway's in-flight figures (an older gateway, or the model just vanished), wait this long.
DRAIN_GRACE_S = 5.0
POLL_S = 0.25


def _normalized(url: str) -> str:
    return url.rstrip("/")  # as the registry stores it


def model_endpoints(client: AdminClient, model: str, env: str) -> list[dict[str, Any]]:
    """Every endpoint of `model` in `env` (empty when the model is not registered)."""
    try:
        entry = client.get(f"/admin/v1/models/{path_part(env)}/{path_part(model)}")
    except FleetgateError as e:
        if e.status == 404:
            return []
        raise
    return list(entry.get("endpoints") or ())


def release_endpoints(client: AdminClient, model: str, env: str, release: str) -> list[dict[str, Any]]:
    """The endpoints labelled with `release`."""
    return [e for e in model_endpoints(client, model, env) if e.get("release") == release]


def sync_endpoints(client: AdminClient, model: str, env: str, release: str, urls: Sequence[str], *,
                   status: str = "ready", weight: int = 100) -> list[dict[str, Any]]:
    """Register each of `urls` that the model does not have yet, labelled `release`, with `status` and `weight`.

    URLs already registered keep their status and weight (the caller may have shifted them); the model is
    created when missing (without prices). Endpoints of the release whose URL is not in `urls` stay too:
    remove them with `drain_and_remove` (see `stale_endpoints`).

    Returns:
        The endpoints JSON labelled `release`, after the change (those of `urls` and any stale ones).
    """
    known = {_normalized(e["url"]) for e in model_endpoints(client, model, env)}
    for url in urls:
        if _normalized(url) not in known:
            client.post("/admin/v1/models", {"name": model, "environment": env, "endpoint": url,
                                             "release": release, "status": status, "weight": weight})
            known.add(_normalized(url))
    return release_endpoints(client, model, env, release)


def stale_endpoints(endpoints: Sequence[dict[str, Any]], urls: Sequence[str]) -> list[dict[str, Any]]:
    """Those of `endpoints` whose URL is not among `urls` (e.g. a superseded revision's processes)."""
    wanted = {_normalized(u) for u in urls}
    return [e for e in endpoints if _normalized(e["url"]) not in wanted]


@dataclass(frozen=True)
class DrainResult:
    """What drain_and_remove did: `drained` False means it gave up waiting (timeout, or no in-flight
    figures from the gateway) and removed the endpoints anyway."""

    removed: tuple[str, ...]
    drained: bool
    in_flight_left: int
    waited_s: float

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "removed": list(self.removed)}


def _in_flight(client: AdminClient, model: str, env: str, ids: set[str]) -> int | None:
    """Requests in flight on these endpoints as the gateway counts them; None when it cannot say."""
    try:
        analysis = client.get("/admin/v1/analysis", model=model, env=env)
    except FleetgateError as e:
        if e.status == 404:
            return None
        raise
    return sum(int(e.get("in_flight") or 0) for e in analysis.get("endpoints") or () if e.get("id") in ids)


def _ignore_missing(call: Callable[[], Any]) -> bool:
    """Run an endpoint change; False when the endpoint is already gone (404)."""
    try:
        call()
    except FleetgateError as e:
        if e.status == 404:
            return False
        raise
    return True


def drain_and_remove(client: AdminClient, model: str, env: str, endpoint_ids: Sequence[str], *,
                     timeout_s: float = 60, sleep: Callable[[float], None] = time.sleep,
                     clock: Callable[[], float] = time.monotonic) -> DrainResult:
    """Set the endpoints draining, wait until the gateway has none of their requests in flight (or
    `timeout_s`), then delete them. Endpoints already gone are skipped.

    Raises:
        FleetgateError: the gateway refused a change or cannot be reached.
    """
    started = clock()
    ids = [i for i in endpoint_ids if _ignore_missing(
        lambda i=i: client.patch(f"/admin/v1/endpoints/{path_part(i)}", {"status": "draining"}))]
    deadline = started + timeout_s
    drained, left = True, 0
    if ids:
        sleep(min(PROPAGATION_S, timeout_s))
        while True:
            count = _in_flight(client, model, env, set(ids))
            if count is None:  # no figures: a fixed grace instead
                sleep(max(0.0, min(DRAIN_GRACE_S - PROPAGATION_S, deadline - clock())))
                drained, left = False, 0
                break
            left = count
            if count == 0:
                break
            if clock() >= deadline:
                drained = False
                break
            sleep(POLL_S)
    removed = tuple(i for i in ids if _ignore_missing(
        lambda i=i: client.delete(f"/admin/v1/endpoints/{path_part(i)}")))
    return DrainResult(removed=removed, drained=drained, in_flight_left=left, waited_s=round(clock() - started, 3))
