"""`opsctl sim`: run the vLLM-compatible simulator that stands in for a GPU pod.

A thin shell: parse flags, build a SimConfig (which validates), serve until SIGTERM.
"""

from __future__ import annotations

from typing import Annotated

import typer

from opsctl.common import handle_errors, listen_error, new_app

app = new_app("Run the vLLM-compatible simulator (a stand-in for a GPU pod).")


@app.callback()
def sim() -> None:
    """Run the vLLM-compatible simulator (a stand-in for a GPU pod)."""


@app.command()
@handle_errors
def serve(
    model: Annotated[str, typer.Option("--model", help="model to load; also the served name by default")],
    host: Annotated[str, typer.Option("--host", help="address to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="TCP port")] = 8000,
    ttft_ms: Annotated[float, typer.Option("--ttft-ms", help="time to first token, ms")] = 0.0,
    tokens_per_s: Annotated[float, typer.Option("--tokens-per-s", help="decode speed; 0 = instant")] = 0.0,
    error_rate: Annotated[float, typer.Option("--error-rate", help="fraction of requests answered 500")] = 0.0,
    hang_rate: Annotated[float, typer.Option("--hang-rate", help="fraction of requests never answered")] = 0.0,
    slow_start: Annotated[float, typer.Option("--slow-start", help="seconds of 503 after start")] = 0.0,
    crash_after: Annotated[int | None, typer.Option("--crash-after", help="exit after N requests")] = None,
    max_num_seqs: Annotated[int, typer.Option("--max-num-seqs", help="running requests; more wait")] = 256,
    max_model_len: Annotated[int, typer.Option("--max-model-len", help="context length in tokens")] = 8192,
    seed: Annotated[int | None, typer.Option("--seed", help="seed of the fault RNG")] = None,
    served_model_name: Annotated[list[str] | None, typer.Option(
        "--served-model-name", metavar="NAME", help="name the model is served under (repeatable; default: --model); "
        "requests naming any other model get vLLM's 404")] = None,
    garbage_rate: Annotated[float, typer.Option(
        "--garbage-rate", help="fraction of requests answered 200 with a body that is not JSON "
        "(an HTML page; streams: a line that is no SSE event)")] = 0.0,
    usage_lie: Annotated[str | None, typer.Option(
        "--usage-lie", metavar="MODE", help="report bad usage in every answer and stream usage chunk: "
        "huge (1e9), string, list, negative, float or missing")] = None,
    hang_after_headers: Annotated[bool, typer.Option(
        "--hang-after-headers", help="streams get 200 + headers, then never an event; "
        "other requests never get a byte")] = False,
) -> None:
    """Serve one model on HOST:PORT until SIGTERM or SIGINT."""
    from opsctl.sim import SimConfig, run_sim  # aiohttp: loaded only when serving

    config = SimConfig(
        model=model, host=host, port=port, ttft_ms=ttft_ms, tokens_per_s=tokens_per_s,
        error_rate=error_rate, hang_rate=hang_rate, slow_start_s=slow_start, crash_after=crash_after,
        max_num_seqs=max_num_seqs, max_model_len=max_model_len, seed=seed, served_model_name=served_model_name,
        garbage_rate=garbage_rate, usage_lie=usage_lie, hang_after_headers=hang_after_headers,
    )
    try:
        run_sim(config)
    except OSError as e:
        error = listen_error(e, host, port)
        if error is None:
            raise
        raise error from e
