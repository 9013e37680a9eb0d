"""Shadow traffic's CPU cost: gateway CPU per request with mirroring at 0 % and at 100 %, same load.

Starts Redis, two simulator pods (stable, and a disabled shadow endpoint of the same model), one
gateway worker with auth, Redis limits and the usage spool on (as `benchmarks.gateway`), then drives
open-loop load at a fixed rate while switching the shadow endpoint's mirror_percent between 0 and
100 through the admin API. The difference of the gateway's CPU per request is what one mirrored
copy costs (the shadow pod's own CPU is not charged). Prints a markdown table and the command.

    python -m benchmarks.shadow [--rate 500] [--duration 10] [--rounds 3] [--quick]
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.gateway import ADMIN_TOKEN, MODEL, Bench, Options, Target  # noqa: E402
from benchmarks.services import Service, free_port, http_status  # noqa: E402
from opsctl.bench import BenchConfig  # noqa: E402

SHADOW_RELEASE = f"{MODEL}-shadow"


@dataclass
class Phase:
    """Totals of every measured run at one mirror share."""

    mirror: float
    requests: int = 0
    cpu_ms: float = 0.0
    errors: int = 0
    p50_ms: list[float] = field(default_factory=list)
    round_extra_ms: list[float] = field(default_factory=list)  # per round: CPU/req at 100 % minus at 0 %

    @property
    def cpu_ms_per_request(self) -> float:
        return self.cpu_ms / self.requests if self.requests else float("nan")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rate", type=float, default=500.0, help="open-loop req/s (default 500)")
    p.add_argument("--duration", type=float, help="measured seconds per run (default 10; --quick 3)")
    p.add_argument("--warmup", type=float, help="warm-up seconds per run (default 2; --quick 0.5)")
    p.add_argument("--rounds", type=int, default=3, help="0 %% / 100 %% run pairs, alternated (default 3)")
    p.add_argument("--quick", action="store_true", help="short runs, one round")
    a = p.parse_args(argv)
    if a.rate <= 0 or a.rounds < 1:
        p.error("--rate and --rounds must be positive")
    a.duration = a.duration if a.duration is not None else (3.0 if a.quick else 10.0)
    a.warmup = a.warmup if a.warmup is not None else (0.5 if a.quick else 2.0)
    if a.quick:
        a.rounds = 1
    return a


def _admin(url: str, method: str, path: str, body: dict | None = None) -> object:
    req = urllib.request.Request(url + path, method=method, data=json.dumps(body).encode() if body else None,
                                 headers={"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def _metric(url: str, name: str) -> float:
    """A counter of the gateway summed over its labels (e.g. every outcome of the shadow copies)."""
    with urllib.request.urlopen(url + "/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{"))


def run(args: argparse.Namespace) -> tuple[list[Phase], dict[str, float]]:
    opts = Options(duration=args.duration, warmup=args.warmup, concurrency=32, rate=args.rate, stream_rate=50.0,
                   workers=1, skip_litellm=True, limits=False, write_docs=False, pin_client=None, command="")
    bench = Bench(opts)
    phases = {0.0: Phase(0.0), 100.0: Phase(100.0)}
    try:
        redis_url = bench.start_redis()
        stable = bench.start_simulator()
        port = free_port()
        shadow = bench.start(Service("shadow-simulator", [sys.executable, "-m", "opsctl.sim", "--model", MODEL,
                                                          "--port", str(port)],
                                     env=bench.base_env, log_dir=bench.logs, cwd=REPO))
        shadow_url = f"http://127.0.0.1:{port}"
        shadow.wait_ready(lambda: http_status(shadow_url + "/health") == 200, timeout=30, what="healthy")
        gw = bench.start_gateway(bench.gateway_env(redis_url), 1)
        key = bench.bootstrap(gw, stable.url, "bench", limits=False)
        url = gw.env["FLEETGATE_GATEWAY_URL"]
        registered = _admin(url, "POST", "/admin/v1/models", {"name": MODEL, "endpoint": shadow_url,
                                                              "release": SHADOW_RELEASE, "weight": 0,
                                                              "status": "disabled", "mirror_percent": 0})
        endpoint_id = registered["endpoint"]["id"]  # type: ignore[index]
        target = Target("Fleetgate (1 worker)", url, key, gw)
        bench.smoke(target)
        cfg = BenchConfig(url=url, model=MODEL, api_key=key, rate=args.rate, max_in_flight=256,
                          duration_s=args.duration, warmup_s=args.warmup, max_tokens=16, timeout_s=30.0)
        copies = {"sent": 0.0, "skipped": 0.0, "expected": 0.0}
        for _ in range(args.rounds):
            round_cpu = {}
            for mirror in (0.0, 100.0):
                _admin(url, "PATCH", f"/admin/v1/endpoints/{endpoint_id}", {"mirror_percent": mirror})
                sent = _metric(url, "fleetgate_shadow_requests_total")
                skipped = _metric(url, "fleetgate_shadow_skipped_total")
                result = bench.run(cfg, target, charge_cpu=True)
                time.sleep(0.5)  # the last copies finish
                phase = phases[mirror]
                phase.requests += result.requests
                phase.cpu_ms += (target.cpu_ms_per_request or 0.0) * result.requests
                phase.errors += result.error_count + result.dropped
                phase.p50_ms.append((result.latency_ms or {}).get("p50", float("nan")))
                round_cpu[mirror] = target.cpu_ms_per_request or 0.0
                if mirror:
                    copies["sent"] += _metric(url, "fleetgate_shadow_requests_total") - sent
                    copies["skipped"] += _metric(url, "fleetgate_shadow_skipped_total") - skipped
                    copies["expected"] += result.total_requests
                print(f"  mirror {mirror:5.1f} %  {result.rps:7.1f} req/s  "
                      f"{target.cpu_ms_per_request:.3f} ms CPU/req  errors {result.error_count}", flush=True)
            phases[100.0].round_extra_ms.append(round_cpu[100.0] - round_cpu[0.0])
        return list(phases.values()), copies
    finally:
        bench.close()


def report(args: argparse.Namespace, phases: list[Phase], copies: dict[str, float], command: str) -> str:
    base, mirrored = phases
    extra = mirrored.cpu_ms_per_request - base.cpu_ms_per_request
    lines = [
        "## Shadow traffic",
        "",
        "```",
        command,
        "```",
        "",
        f"Open loop at {args.rate:g} req/s, {args.duration:g} s measured per run (after {args.warmup:g} s warm-up), "
        f"{args.rounds} round(s) of 0 % / 100 % alternated. CPU = user+system CPU of the gateway process during "
        "the measured window, per client request; the shadow pod's CPU is not charged.",
        "",
        "| mirror | requests | gateway CPU ms/req | client p50 ms | errors+drops |",
        "|---:|---:|---:|---:|---:|",
    ]
    for phase in phases:
        p50 = sum(phase.p50_ms) / len(phase.p50_ms) if phase.p50_ms else float("nan")
        lines.append(f"| {phase.mirror:g} % | {phase.requests} | {phase.cpu_ms_per_request:.3f} | {p50:.2f} | "
                     f"{phase.errors} |")
    share = extra / base.cpu_ms_per_request * 100
    rounds = mirrored.round_extra_ms
    lines += ["", f"- CPU per mirrored request: **{extra:.3f} ms** "
                  f"({share:.0f} % of a live request's {base.cpu_ms_per_request:.3f} ms); per round "
                  f"{min(rounds):.3f} .. {max(rounds):.3f} ms (the spread is the machine's noise).",
              f"- Copies at 100 %: {copies['sent']:.0f} sent, {copies['skipped']:.0f} skipped, of "
              f"{copies['expected']:.0f} requests (warm-up included)."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = "python -m benchmarks.shadow " + shlex.join(sys.argv[1:] if argv is None else argv)
    phases, copies = run(args)
    print()
    print(report(args, phases, copies, command.strip()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
