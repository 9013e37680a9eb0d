"""`make bench`: Fleetgate vs the simulator called directly vs LiteLLM proxy, same load, one run.

Starts Redis, the simulator, the gateway (and LiteLLM from ./.bench/litellm-venv), drives them
with `opsctl.bench`, and writes the "Gateway" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import shlex
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks import litellm_env  # noqa: E402
from benchmarks.services import Service, ServiceFailed, free_port, http_status, run_cli  # noqa: E402
from opsctl.bench import BenchConfig, BenchResult, run_bench  # noqa: E402

MODEL = "sim"
ADMIN_TOKEN = "fg-bench-admin-token"
BIN = Path(sys.executable).parent
DOCS = REPO / "docs" / "benchmarks.md"
SECTION = "## Gateway"


@dataclass(frozen=True)
class Options:
    duration: float
    warmup: float
    concurrency: int
    rate: float
    stream_rate: float
    workers: int
    skip_litellm: bool
    limits: bool
    write_docs: bool
    pin_client: int | None
    command: str


@dataclass
class Target:
    """Something to load: its base URL, the key it wants, the process whose CPU we charge."""

    name: str
    url: str
    api_key: str | None
    service: Service | None
    results: dict[str, BenchResult] = field(default_factory=dict)
    cpu_ms_per_request: float | None = None
    note: str = ""


def parse_args(argv: list[str] | None = None) -> Options:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="short smoke run (2 s per phase); does not write docs")
    p.add_argument("--duration", type=float, help="measured seconds per phase (default 10)")
    p.add_argument("--warmup", type=float, help="warm-up seconds per phase (default 2)")
    p.add_argument("--concurrency", type=int, default=32, help="closed-loop workers (default 32)")
    p.add_argument("--rate", type=float, default=200.0, help="open-loop req/s for latency (default 200)")
    p.add_argument("--stream-rate", type=float, default=50.0, help="open-loop req/s for streaming TTFT")
    p.add_argument("--workers", type=int, default=1, help="also measure the gateway with N workers (N > 1)")
    p.add_argument("--skip-litellm", action="store_true", help="do not install or run LiteLLM")
    p.add_argument("--limits", action="store_true", help="also measure a key with org budget + rpm/tpm limits")
    p.add_argument("--no-docs", action="store_true", help="do not write docs/benchmarks.md")
    p.add_argument("--pin-client", type=int, metavar="CPU", help="pin the load generator to one CPU")
    a = p.parse_args(argv)
    if a.workers < 1 or a.concurrency < 1 or a.rate <= 0 or a.stream_rate <= 0:
        p.error("--workers, --concurrency, --rate and --stream-rate must be positive")
    duration = a.duration if a.duration is not None else (2.0 if a.quick else 10.0)
    warmup = a.warmup if a.warmup is not None else (0.5 if a.quick else 2.0)
    if duration <= 0 or warmup < 0:
        p.error("--duration must be > 0 and --warmup >= 0")
    cmd = "python benchmarks/gateway.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    return Options(duration=duration, warmup=warmup, concurrency=a.concurrency, rate=a.rate,
                   stream_rate=a.stream_rate, workers=a.workers, skip_litellm=a.skip_litellm, limits=a.limits,
                   write_docs=not (a.no_docs or a.quick), pin_client=a.pin_client, command=cmd.strip())


class Bench:
    """Owns every child process of one benchmark run; `close()` stops them all."""

    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.tmp = Path(tempfile.mkdtemp(prefix="fg-bench-"))
        self.logs = self.tmp / "logs"
        self.logs.mkdir()
        self.services: list[Service] = []
        self.base_env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETGATE_")}
        self.runner = _event_loop_runner()

    def close(self) -> None:
        for svc in reversed(self.services):
            svc.stop()
        self.runner.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def start(self, svc: Service) -> Service:
        self.services.append(svc.start())
        return svc

    def stop(self, svc: Service) -> None:
        svc.stop()
        self.services.remove(svc)

    # --- components -------------------------------------------------------------------

    def start_redis(self) -> str:
        binary = shutil.which("redis-server")
        if not binary:
            raise ServiceFailed("redis-server is not on PATH (apt-get install redis-server)")
        port = free_port()
        svc = self.start(Service("redis", [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                           "--appendonly", "no", "--dir", str(self.tmp)],
                                 env=self.base_env, log_dir=self.logs))
        svc.wait_ready(lambda: _port_open(port), timeout=10, what="listening")
        return f"redis://127.0.0.1:{port}/0"

    def start_simulator(self) -> Target:
        port = free_port()
        svc = self.start(Service("simulator", [sys.executable, "-m", "opsctl.sim", "--model", MODEL,
                                               "--port", str(port)], env=self.base_env, log_dir=self.logs, cwd=REPO))
        url = f"http://127.0.0.1:{port}"
        svc.wait_ready(lambda: http_status(url + "/health") == 200, timeout=30, what="healthy")
        return Target("direct (simulator)", url, None, svc)

    def gateway_env(self, redis_url: str) -> dict[str, str]:
        env = dict(self.base_env)
        env.update({
            "FLEETGATE_STATE_DIR": str(self.tmp / "state"),
            "FLEETGATE_REDIS_URL": redis_url,
            "FLEETGATE_ADMIN_TOKEN": ADMIN_TOKEN,
            "FLEETGATE_USAGE_SINK": "spool",
        })
        return env

    def start_gateway(self, env: dict[str, str], workers: int) -> Service:
        port = free_port()
        env = dict(env, FLEETGATE_GATEWAY_URL=f"http://127.0.0.1:{port}")
        svc = self.start(Service(f"fleetgate-w{workers}", [str(BIN / "opsctl"), "gateway", "serve", "--host",
                                                           "127.0.0.1", "--port", str(port), "--workers", str(workers)],
                                 env=env, log_dir=self.logs, cwd=self.tmp))
        svc.env = env
        url = f"http://127.0.0.1:{port}"
        svc.wait_ready(lambda: http_status(url + "/v1/status/readyz") == 200, timeout=60, what="ready")
        return svc

    def bootstrap(self, gw: Service, sim_url: str, org: str, *, limits: bool) -> str:
        """Create an org (with budget when `limits`), register the model once, return a new API key."""
        opsctl = [str(BIN / "opsctl")]
        env = gw.env
        run_cli([*opsctl, "org", "create", org, "-o", "json"], env=env)
        if limits:
            run_cli([*opsctl, "budget", "set", org, "1000000", "--period", "monthly", "-o", "json"], env=env)
        else:
            run_cli([*opsctl, "registry", "register", MODEL, "--endpoint", sim_url, "--input-price", "1",
                     "--output-price", "2", "-o", "json"], env=env)
        extra = ["--rpm", "10000000", "--tpm", "1000000000"] if limits else []
        out = run_cli([*opsctl, "key", "create", "--org", org, "--name", f"{org}-key", *extra, "-o", "json"], env=env)
        key = json.loads(out).get("key")
        if not key:
            raise ServiceFailed("`opsctl key create -o json` printed no `key` field")
        return key

    def start_litellm(self, sim_url: str) -> Target:
        print("litellm: ensuring ./.bench/litellm-venv (first install takes minutes) ...", flush=True)
        litellm_env.ensure_installed()
        config = litellm_env.write_config(self.tmp / "litellm.yaml", model=MODEL, upstream_base=sim_url)
        port = free_port()
        svc = self.start(Service("litellm", litellm_env.proxy_command(config, port),
                                 env=litellm_env.proxy_env(self.base_env), log_dir=self.logs, cwd=self.tmp))
        url = f"http://127.0.0.1:{port}"
        svc.wait_ready(lambda: http_status(url + "/health/liveliness") == 200, timeout=180, what="alive")
        return Target("LiteLLM proxy", url, litellm_env.MASTER_KEY, svc, note=_litellm_version())

    def smoke(self, target: Target) -> None:
        """One real completion through the target before measuring (routing may lag registration)."""
        body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}).encode()
        headers = {"Content-Type": "application/json"}
        if target.api_key:
            headers["Authorization"] = f"Bearer {target.api_key}"
        assert target.service is not None
        target.service.wait_ready(
            lambda: http_status(target.url + "/v1/chat/completions", method="POST", body=body, headers=headers,
                                timeout=10) == 200,
            timeout=30, what="serving chat completions")

    # --- load ---------------------------------------------------------------------------

    def run(self, cfg: BenchConfig, target: Target, *, charge_cpu: bool) -> BenchResult:
        cpu: list[float] = []
        hook = (lambda: cpu.append(target.service.cpu_seconds())) if charge_cpu and target.service else None
        result = self.runner.run(run_bench(cfg, on_measure_start=hook))
        if hook and cpu and result.requests:
            target.cpu_ms_per_request = (target.service.cpu_seconds() - cpu[0]) / result.requests * 1000.0
        return result

    def measure(self, target: Target, *, phases: tuple[str, ...] = ("closed", "open", "stream")) -> Target:
        o = self.opts
        common = dict(url=target.url, model=MODEL, api_key=target.api_key, duration_s=o.duration,
                      warmup_s=o.warmup, max_tokens=16, timeout_s=30.0)
        self.smoke(target)
        if "closed" in phases:
            target.results["closed"] = self.run(BenchConfig(concurrency=o.concurrency, **common), target,
                                                charge_cpu=True)
            _progress(target, "closed", target.results["closed"])
        if "open" in phases:
            target.results["open"] = self.run(BenchConfig(rate=o.rate, max_in_flight=256, **common), target,
                                              charge_cpu=False)
            _progress(target, "open", target.results["open"])
        if "stream" in phases:
            target.results["stream"] = self.run(BenchConfig(rate=o.stream_rate, stream=True, max_in_flight=256,
                                                            **common), target, charge_cpu=False)
            _progress(target, "stream", target.results["stream"])
        return target


def _event_loop_runner() -> asyncio.Runner:
    try:
        import uvloop
    except ImportError:  # optional: plain asyncio works, only slower
        return asyncio.Runner()
    return asyncio.Runner(loop_factory=uvloop.new_event_loop)


def _port_open(port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _litellm_version() -> str:
    py = litellm_env.VENV / "bin" / "python"
    out = run_cli([str(py), "-c", "import importlib.metadata as m; print(m.version('litellm'))"], env=dict(os.environ))
    return f"litellm {out.strip()}"


def _progress(target: Target, phase: str, r: BenchResult) -> None:
    lat = r.latency_ms or {}
    extra = f" ttft p50 {r.ttft_ms['p50']:.2f}" if r.ttft_ms else ""
    print(f"  {target.name:24} {phase:6} {r.rps:9.1f} req/s  p50 {lat.get('p50', 0):8.2f}  "
          f"p99 {lat.get('p99', 0):8.2f} ms{extra}  errors {r.error_count} dropped {r.dropped}", flush=True)


def run_all(opts: Options) -> tuple[list[Target], dict[str, str]]:
    """Start everything, measure every target, stop everything. Returns targets and skip notes."""
    bench = Bench(opts)
    targets: list[Target] = []
    skipped: dict[str, str] = {}
    try:
        redis_url = bench.start_redis()
        direct = bench.start_simulator()
        targets.append(bench.measure(direct))
        env = bench.gateway_env(redis_url)
        gw = bench.start_gateway(env, 1)
        key = bench.bootstrap(gw, direct.url, "bench", limits=False)
        fg = Target("Fleetgate (1 worker)", gw.env["FLEETGATE_GATEWAY_URL"], key, gw)
        targets.append(bench.measure(fg))
        limit_key = None
        if opts.limits:
            try:
                limit_key = bench.bootstrap(gw, direct.url, "bench-limits", limits=True)
            except ServiceFailed as e:
                skipped["Fleetgate + budget/limits"] = str(e).splitlines()[0]
            if limit_key:
                targets.append(bench.measure(Target("Fleetgate + budget/limits", fg.url, limit_key, gw)))
        if opts.workers > 1:
            bench.stop(gw)
            gw_n = bench.start_gateway(env, opts.workers)
            name = f"Fleetgate ({opts.workers} workers)"
            targets.append(bench.measure(Target(name, gw_n.env["FLEETGATE_GATEWAY_URL"], key, gw_n),
                                         phases=("closed",)))
        if not opts.skip_litellm:
            try:
                targets.append(bench.measure(bench.start_litellm(direct.url)))
            except (ServiceFailed, RuntimeError) as e:
                skipped["LiteLLM proxy"] = str(e)
                print(f"LiteLLM skipped: {e}", file=sys.stderr)
    finally:
        bench.close()
    return targets, skipped


# --- report ---------------------------------------------------------------------------------


def _num(value: float | None, fmt: str = "{:.2f}") -> str:
    return "–" if value is None else fmt.format(value)


def _pct(r: BenchResult | None, kind: str, key: str) -> float | None:
    if r is None:
        return None
    summary = r.latency_ms if kind == "lat" else r.ttft_ms
    return summary[key] if summary else None


def render_markdown(targets: list[Target], skipped: dict[str, str], opts: Options) -> str:
    direct = targets[0]
    d_open, d_stream = direct.results.get("open"), direct.results.get("stream")
    by_name = {t.name: t for t in targets}
    fg = by_name.get("Fleetgate (1 worker)")
    lite = by_name.get("LiteLLM proxy")
    rows = []
    for t in targets:
        closed, opn, stream = (t.results.get(k) for k in ("closed", "open", "stream"))
        added = [None if t is direct or _pct(opn, "lat", k) is None or _pct(d_open, "lat", k) is None
                 else _pct(opn, "lat", k) - _pct(d_open, "lat", k) for k in ("p50", "p99")]
        ttft_added = (None if t is direct or _pct(stream, "ttft", "p50") is None
                      else _pct(stream, "ttft", "p50") - _pct(d_stream, "ttft", "p50"))
        errors = sum(r.error_count + r.dropped for r in t.results.values())
        rows.append("| " + " | ".join([
            t.name + (f" ({t.note})" if t.note else ""),
            _num(closed.rps if closed else None, "{:.0f}"),
            _num(t.cpu_ms_per_request, "{:.3f}"),
            _num(_pct(opn, "lat", "p50")), _num(_pct(opn, "lat", "p99")),
            _num(added[0], "{:+.2f}"), _num(added[1], "{:+.2f}"),
            _num(_pct(stream, "ttft", "p50")), _num(_pct(stream, "ttft", "p99")), _num(ttft_added, "{:+.2f}"),
            str(errors),
        ]) + " |")
    cpu_model = _cpu_model()
    lines = [
        SECTION, "",
        f"Measured {dt.date.today().isoformat()} on {os.cpu_count()} × {cpu_model}, Python "
        f"{platform.python_version()}, with:", "",
        "```", opts.command, "```", "",
        f"Every target fronts the same zero-latency simulator (`python -m opsctl.sim --model {MODEL}`). "
        f"Closed loop: {opts.concurrency} connections back to back for {opts.duration:g} s "
        f"(after {opts.warmup:g} s warm-up). Latency: open loop at {opts.rate:g} req/s, measured from each "
        f"request's intended send time. TTFT: streaming, open loop at {opts.stream_rate:g} req/s. "
        "Fleetgate runs with auth (API key), Redis (rate-limit/budget state) and the usage spool on. "
        "CPU = user+system CPU of the proxy's process tree during the measured closed-loop window, "
        "divided by requests served. Added = proxy minus direct. The load generator runs on the same "
        "2 cores and takes CPU too (see its cost below).", "",
        "| target | req/s (closed) | CPU ms/req | p50 ms | p99 ms | added p50 | added p99 | TTFT p50 | "
        "TTFT p99 | added TTFT p50 | errors+drops |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        *rows, "",
    ]
    lines += _summary(direct, fg, lite, by_name, opts)
    for name, why in skipped.items():
        lines.append(f"- {name}: not measured ({why.splitlines()[0]})")
    return "\n".join(lines).rstrip() + "\n"


def _summary(direct: Target, fg: Target | None, lite: Target | None, by_name: dict[str, Target],
             opts: Options) -> list[str]:
    out = []
    d_closed = direct.results.get("closed")
    if d_closed and d_closed.total_requests:
        out.append(f"- Load generator cost: {d_closed.client_cpu_s / d_closed.total_requests * 1000:.3f} ms CPU "
                   "per request (aiohttp client).")
    if fg and fg.results.get("closed") and d_closed:
        out.append(f"- Fleetgate throughput = {fg.results['closed'].rps / d_closed.rps:.2f}× direct.")
    if fg and lite and fg.results.get("closed") and lite.results.get("closed") and lite.results["closed"].rps:
        ratio = fg.results["closed"].rps / lite.results["closed"].rps
        cpu = (f", CPU per request {lite.cpu_ms_per_request / fg.cpu_ms_per_request:.0f}× lower"
               if lite.cpu_ms_per_request and fg.cpu_ms_per_request else "")
        out.append(f"- Fleetgate vs LiteLLM: {ratio:.1f}× the throughput{cpu}.")
    multi = by_name.get(f"Fleetgate ({opts.workers} workers)")
    if multi and fg and multi.results.get("closed") and fg.results.get("closed"):
        out.append(f"- {opts.workers} workers: {multi.results['closed'].rps / fg.results['closed'].rps:.2f}× "
                   "the 1-worker throughput (the simulator and the load generator share the same cores).")
    return out


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def replace_section(text: str, section: str) -> str:
    """Replace the `## Gateway` section (up to the next `## ` heading) or append it."""
    heading = section.splitlines()[0]
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() == heading), None)
    if start is None:
        body = text.rstrip()
        prefix = (body + "\n\n") if body else "# Benchmarks\n\n"
        return prefix + section
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    before = "\n".join(lines[:start]).rstrip()
    after = "\n".join(lines[end:]).strip()
    return (before + "\n\n" if before else "") + section + ("\n" + after + "\n" if after else "")


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    if opts.pin_client is not None:
        os.sched_setaffinity(0, {opts.pin_client})
    try:
        targets, skipped = run_all(opts)
    except ServiceFailed as e:
        print(f"bench failed: {e}", file=sys.stderr)
        return 1
    markdown = render_markdown(targets, skipped, opts)
    print("\n" + markdown)
    results = {t.name: {"cpu_ms_per_request": t.cpu_ms_per_request,
                        **{k: r.to_dict() for k, r in t.results.items()}} for t in targets}
    out = REPO / ".bench" / "gateway-results.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    if opts.write_docs:
        DOCS.parent.mkdir(exist_ok=True)
        DOCS.write_text(replace_section(DOCS.read_text() if DOCS.exists() else "", markdown))
        print(f"wrote the Gateway section of {DOCS.relative_to(REPO)}; raw results in {out.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
