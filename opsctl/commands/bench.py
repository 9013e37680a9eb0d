"""`opsctl bench URL --model M`: load-test any OpenAI-compatible endpoint from the terminal.

Thin shell: parse options into a `BenchConfig`, run `opsctl.bench`, render table or JSON.
Progress goes to stderr about once a second; a run where nothing succeeded exits 1.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from opsctl.bench.config import DEFAULT_MAX_IN_FLIGHT, DEFAULT_PROMPT, BenchConfig, Endpoint
from opsctl.common import (
    EXIT_FAILED,
    CliError,
    Output,
    OutputOpt,
    handle_errors,
    render,
)

if TYPE_CHECKING:
    from opsctl.bench.stats import Progress


@handle_errors
def bench_command(
    url: Annotated[str, typer.Argument(help="base URL of the target, e.g. http://127.0.0.1:8080")],
    model: Annotated[str, typer.Option("--model", "-m", help="model name to request")],
    concurrency: Annotated[
        int | None, typer.Option("--concurrency", "-c", help="closed loop: workers sending back to back (default 8)")
    ] = None,
    rate: Annotated[
        float | None, typer.Option("--rate", "-r", help="open loop: arrivals per second (excludes --concurrency)")
    ] = None,
    duration: Annotated[float, typer.Option("--duration", "-d", help="measured seconds")] = 10.0,
    warmup: Annotated[float, typer.Option("--warmup", help="seconds of load before measuring")] = 1.0,
    stream: Annotated[bool, typer.Option("--stream", help="stream responses and measure TTFT")] = False,
    max_tokens: Annotated[int, typer.Option("--max-tokens", help="max_tokens per request")] = 16,
    api_key: Annotated[
        str | None, typer.Option("--api-key", envvar="OPENAI_API_KEY", help="sent as Authorization: Bearer")
    ] = None,
    prompt: Annotated[str, typer.Option("--prompt", help="prompt text")] = DEFAULT_PROMPT,
    endpoint: Annotated[Endpoint, typer.Option("--endpoint", help="API to call")] = Endpoint.chat,
    timeout: Annotated[float, typer.Option("--timeout", help="per-request timeout, seconds")] = 60.0,
    max_in_flight: Annotated[
        int, typer.Option("--max-in-flight", help="open loop: arrivals beyond this many in flight are dropped")
    ] = DEFAULT_MAX_IN_FLIGHT,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress lines on stderr")] = False,
    output: OutputOpt = Output.table,
) -> None:
    """Load-test an OpenAI-compatible endpoint. Reports req/s, latency and TTFT percentiles."""
    from opsctl.bench.report import table_rows
    from opsctl.bench.runner import run_bench_sync  # aiohttp: loaded only when a run starts

    if rate is not None and concurrency is not None:
        raise CliError("--rate (open loop) and --concurrency (closed loop) are exclusive; pass one")
    config = BenchConfig(
        url=url,
        model=model,
        concurrency=concurrency if concurrency is not None else 8,
        duration_s=duration,
        warmup_s=warmup,
        rate=rate,
        stream=stream,
        max_tokens=max_tokens,
        api_key=api_key,
        prompt=prompt,
        endpoint=endpoint,
        timeout_s=timeout,
        max_in_flight=max_in_flight,
    )
    result = run_bench_sync(config.validate(), on_progress=None if quiet else _print_progress)
    if output is Output.json:
        render(result.to_dict(), output)  # scripts get the error counts even when all failed
    elif result.successes:
        render(table_rows(result), output, columns=("metric", "value"))
    if result.successes == 0:
        # No throughput or latency to report: a req/s of failures would read like a result.
        errors = ", ".join(f"{k}={v}" for k, v in sorted(result.errors.items())) or "no request completed"
        raise CliError(f"no request succeeded against {result.url}: {result.requests} requests, all failed "
                       f"({errors})", EXIT_FAILED)


def _print_progress(progress: Progress) -> None:
    typer.echo(progress.line(), err=True)
