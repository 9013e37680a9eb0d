"""The simulated vLLM engine: admission (running/waiting), the latency model, streaming, hung answers.

Token k of an admitted request is due at admit + ttft + k / tokens_per_s (every sequence of
a request decodes in parallel); all tokens due are written in one go, not one write per token.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import time
from collections.abc import Callable

from aiohttp import web

from gateway.errors import ServiceUnavailable
from opsctl.sim.config import SimConfig
from opsctl.sim.faults import FaultInjector
from opsctl.sim.metrics import SimMetrics
from opsctl.sim.protocol import Generation
from opsctl.sim.responses import DONE, GARBAGE_EVENT, GARBAGE_PAGE, ChunkFormat
from opsctl.sim.tokens import TokenText

HANG_POLL_S = 0.25  # how often a hung request checks whether its client gave up
SSE_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}


class SimEngine:
    """Everything one simulated pod holds: config, metrics, faults, and the scheduler slots."""

    def __init__(self, config: SimConfig, *, on_crash: Callable[[], None] | None = None) -> None:
        self.config = config
        self.metrics = SimMetrics(config.served_names[0], config.max_num_seqs)  # vLLM labels the first name
        self.faults = FaultInjector(config)
        self.text = TokenText(config.max_model_len)
        self.created = int(time.time())
        self._on_crash = on_crash
        self._ttft_s = config.ttft_ms / 1000.0
        self._token_s = 1.0 / config.tokens_per_s if config.tokens_per_s > 0 else 0.0
        self._slots = asyncio.Semaphore(config.max_num_seqs)
        self._stopping = asyncio.Event()
        self._ids = itertools.count()
        self._id_base = os.urandom(6).hex()

    def request_id(self, prefix: str) -> str:
        """vLLM-style ids: prefix + 32 hex digits, unique per process."""
        return f"{prefix}-{self._id_base}{next(self._ids):020x}"

    def stopping(self) -> None:
        """The server is shutting down: release hung requests."""
        self._stopping.set()

    def crash(self) -> None:
        """The crash-after-N request has been answered: the engine is dead from now on."""
        self.faults.crashed = True
        if self._on_crash is not None:
            self._on_crash()

    async def hang(self, request: web.Request) -> None:
        """Never answer: wait until the client gives up (or the server stops); counts as running."""
        self.metrics.running += 1
        try:
            while not self._stopping.is_set():
                transport = request.transport
                if transport is None or transport.is_closing():
                    raise ConnectionResetError("client gave up on a hung request")
                with contextlib.suppress(TimeoutError):  # a poll tick, not an error
                    await asyncio.wait_for(self._stopping.wait(), HANG_POLL_S)
        finally:
            self.metrics.running -= 1
        raise ServiceUnavailable("simulator is shutting down", code="shutting_down")

    async def hang_after_headers(self, request: web.Request) -> web.StreamResponse:
        """A stream that never starts: 200 and SSE headers, then silence until the client leaves."""
        response = web.StreamResponse(headers=SSE_HEADERS)
        await response.prepare(request)
        with contextlib.suppress(ServiceUnavailable):  # shutting down: the headers are out, just end
            await self.hang(request)
        return response

    async def garbage(self, request: web.Request, *, stream: bool) -> web.StreamResponse:
        """A 200 that is not what vLLM sends: an HTML page, or on a stream one line that is no SSE event."""
        if not stream:
            return web.Response(body=GARBAGE_PAGE, content_type="text/html")
        response = web.StreamResponse(headers=SSE_HEADERS)
        await response.prepare(request)
        await response.write(GARBAGE_EVENT)
        return response

    async def _admit(self) -> None:
        metrics = self.metrics
        metrics.waiting += 1
        try:
            await self._slots.acquire()
        finally:
            metrics.waiting -= 1
        metrics.running += 1

    def _release(self) -> None:
        self.metrics.running -= 1
        self._slots.release()

    async def complete(self, gen: Generation) -> list[str]:
        """Run a non-streaming generation through the latency model; returns each choice's text."""
        loop = asyncio.get_running_loop()
        arrival = loop.time()
        await self._admit()
        reason, produced = "abort", 0
        try:
            if self._ttft_s:
                await asyncio.sleep(self._ttft_s)
            self.metrics.ttft.observe(loop.time() - arrival)
            if self._token_s and gen.longest > 1:
                await asyncio.sleep(self._token_s * (gen.longest - 1))
            reason, produced = gen.finish_reason, gen.generated_tokens
            return [self.text.text(choice.completion_tokens) for choice in gen.choices]
        finally:
            self._release()
            self.metrics.finished(reason, gen.prompt_tokens, produced, loop.time() - arrival)

    async def stream(self, request: web.Request, gen: Generation, fmt: ChunkFormat) -> web.StreamResponse:
        """Stream a generation as SSE, vLLM style: roles, tokens (choices interleaved), finishes, [usage], [DONE]."""
        loop = asyncio.get_running_loop()
        arrival = loop.time()
        response = web.StreamResponse(headers=SSE_HEADERS)
        await response.prepare(request)
        await self._admit()
        choices, n, step, pieces = gen.choices, gen.longest, self._token_s, self.text.pieces
        first_at = loop.time() + self._ttft_s
        reason, sent = "abort", 0
        try:
            while sent < n:
                due_at = first_at + sent * step
                now = loop.time()
                if now < due_at:
                    await asyncio.sleep(due_at - now)
                    now = loop.time()
                due = n if step == 0.0 else min(n, max(sent + 1, int((now - first_at) / step) + 1))
                parts = [fmt.role(c.index) for c in choices] if sent == 0 else []
                for k in range(sent, due):
                    for choice in choices:
                        if k < choice.completion_tokens:
                            parts.append(fmt.token(pieces[k], choice.index))
                            if k == choice.completion_tokens - 1:
                                parts.append(fmt.finish(choice.finish_reason, choice.index))
                if due == n:
                    if gen.include_usage:
                        parts.append(fmt.usage(gen.prompt_tokens, gen.generated_tokens))
                    parts.append(DONE)
                await response.write(b"".join(parts))
                if sent == 0:
                    self.metrics.ttft.observe(now - arrival)
                sent = due
            reason = gen.finish_reason
        finally:
            self._release()
            produced = sum(min(sent, c.completion_tokens) for c in choices)  # streams: best_of == n
            self.metrics.finished(reason, gen.prompt_tokens, produced, loop.time() - arrival)
        await response.write_eof()
        return response
