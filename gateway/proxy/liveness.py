"""Telling a hung pod from a busy one when an answer is late.

A vLLM pod can answer `/health` and still hang on every completion (vLLM #36960), and a
non-streamed answer legitimately takes as long as its generation. So a late first byte is
not a verdict: when a request has waited its model's first-byte timeout, the pod is asked
for a one-token answer of the same kind; a pod that cannot give one within the timeout is
hung — the request is abandoned and retried elsewhere and the pod is counted as failed —
while a pod that answers is only busy and the request keeps waiting. One check per endpoint
runs at a time and its verdict is shared by every late request for a moment.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from types import TracebackType

import orjson

from gateway.errors import FleetgateError
from gateway.routing.balancer import EndpointState
from gateway.upstream import UpstreamPool

VERDICT_TTL_S = 2.0  # a verdict answers later checks of the same endpoint for this long


def probe_body(path: str, served_model: str, stream: bool) -> bytes:
    """The smallest request of the same kind as `path`: one token, or one short input."""
    if path.endswith("/embeddings"):
        return orjson.dumps({"model": served_model, "input": "ping"})
    body: dict = {"model": served_model, "max_tokens": 1, "stream": stream}
    if path.endswith("/chat/completions"):
        body["messages"] = [{"role": "user", "content": "ping"}]
    else:
        body["prompt"] = "ping"
    return orjson.dumps(body)


class Liveness:
    """Per-process liveness checks of endpoints (see module docstring)."""

    def __init__(self, pool: UpstreamPool) -> None:
        self._pool = pool
        self._running: dict[tuple[str, bool], asyncio.Task[bool]] = {}
        self._verdicts: dict[tuple[str, bool], tuple[float, bool]] = {}
        self.checks = 0  # probes sent (for tests and metrics)

    def check(self, state: EndpointState, path: str, served_model: str, stream: bool,
              timeout_s: float) -> asyncio.Future[bool]:
        """A future that becomes True when the endpoint produces a first byte (streams: a first
        event) within `timeout_s`, False otherwise; shared by concurrent callers."""
        key = (state.endpoint.id, stream)
        verdict = self._verdicts.get(key)
        if verdict is not None and time.monotonic() - verdict[0] < VERDICT_TTL_S:
            done = asyncio.get_running_loop().create_future()
            done.set_result(verdict[1])
            return done
        task = self._running.get(key)
        if task is None:
            task = asyncio.ensure_future(self._probe(state.endpoint.url, path, served_model, stream, timeout_s))
            self._running[key] = task
            task.add_done_callback(lambda t: self._settled(key, t))
        return task

    def _settled(self, key: tuple[str, bool], task: asyncio.Task[bool]) -> None:
        self._running.pop(key, None)
        if not task.cancelled() and task.exception() is None:
            self._verdicts[key] = (time.monotonic(), task.result())

    async def _probe(self, url: str, path: str, served_model: str, stream: bool, timeout_s: float) -> bool:
        self.checks += 1
        resp = None
        try:
            async with asyncio.timeout(timeout_s):
                resp = await self._pool.request(url, path, probe_body(path, served_model, stream))
                if resp.status >= 500:
                    return False
                if stream and resp.status == 200:
                    async for _ in resp.iter_chunks():
                        return True
                    return False
                await resp.read()
                return True  # any 2xx/4xx answer: the engine is there and responding
        except (TimeoutError, FleetgateError):
            return False
        finally:
            if resp is not None:
                resp.close()


class StallWatch:
    """Arms a liveness check after `first_byte_s`; cancels the watched task if the pod is hung.

    Use around the wait for an answer; afterwards `hung` says whether the watch cancelled it:

        with StallWatch(...) as watch:
            try:
                await answer()
            except asyncio.CancelledError:
                if watch.hung: ...  # our doing: retry elsewhere (after task.uncancel())
                raise
    """

    __slots__ = ("_check", "_first_byte_s", "_timer", "_task", "_probe", "hung", "done")

    def __init__(self, check: Callable[[], asyncio.Future[bool]], first_byte_s: float) -> None:
        self._check = check
        self._first_byte_s = first_byte_s
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task | None = None
        self._probe: asyncio.Future[bool] | None = None
        self.hung = False
        self.done = False

    def __enter__(self) -> StallWatch:
        self._task = asyncio.current_task()
        self._timer = asyncio.get_running_loop().call_later(self._first_byte_s, self._late)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.done = True
        if self._timer is not None:
            self._timer.cancel()
        if self._probe is not None and not self._probe.done():
            self._probe.remove_done_callback(self._verdict)

    def _late(self) -> None:
        self._timer = None
        if self.done:
            return
        self._probe = self._check()
        self._probe.add_done_callback(self._verdict)

    def _verdict(self, probe: asyncio.Future[bool]) -> None:
        if self.done or probe.cancelled() or probe.exception() is not None or probe.result():
            return
        self.hung = True
        if self._task is not None:
            self._task.cancel()
