"""How long `opsctl` takes to answer, hyperfine-style: N runs per command, median and p95 wall time.

Runs the installed console script as a user does; with `--gateway URL` (or `--start-gateway`) also
an admin command against a live gateway. `--out-md docs/benchmarks.md` writes the "CLI start-up" section.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.gateway import replace_section  # noqa: E402
from benchmarks.services import Service, ServiceFailed, free_port, http_status  # noqa: E402

SECTION = "## CLI start-up"
TARGET_S = 0.3  # DESIGN.md: `opsctl --help` and admin commands answer in <= 0.3 s
ADMIN_TOKEN = "fg-bench-cli-token"
NOTES = """\
Before the lazy imports (commit 201cea4, same machine and script, load 1.5, 10 runs): `opsctl --help`
556 ms, `opsctl org list --help` 576 ms, `opsctl org list -o json` 578 ms (median wall), because every
invocation imported aiohttp, DuckDB, pyarrow, redis, httpx and rich. What is left: Python itself
(~18 ms), Typer (~40 ms), and, for any sub-command, Typer's option coercion, which builds a pydantic
`TypeAdapter` per option (~60 ms; `opsctl --help` does not pay it). On a loaded machine wall time
grows with the load while the CPU column stays put (at load 4.8: 0.4-0.5 s wall, 0.17 s CPU).
"""


def percentile(ordered: list[float], pct: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    rank = (len(ordered) - 1) * pct / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure(cmd: list[str], runs: int, env: dict[str, str]) -> dict[str, float]:
    """Wall seconds of `runs` runs after one warm-up run (page cache, .pyc files), and the median
    CPU seconds of one run (user + system: what the command itself costs, whatever the load)."""
    def once() -> tuple[float, float]:
        cpu0, start = _children_cpu_s(), time.perf_counter()
        done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, text=True)
        elapsed, cpu = time.perf_counter() - start, _children_cpu_s() - cpu0
        if done.returncode != 0:
            raise SystemExit(f"{shlex.join(cmd)} failed ({done.returncode}): {done.stderr.strip()}")
        return elapsed, cpu

    once()
    samples = [once() for _ in range(runs)]
    times = sorted(wall for wall, _ in samples)
    return {"median": statistics.median(times), "p95": percentile(times, 95), "min": times[0], "max": times[-1],
            "cpu": statistics.median(cpu for _, cpu in samples)}


def start_gateway(state_dir: Path) -> tuple[Service, str]:
    port = free_port()
    env = {**os.environ, "FLEETGATE_STATE_DIR": str(state_dir), "FLEETGATE_PORT": str(port),
           "FLEETGATE_ADMIN_TOKEN": ADMIN_TOKEN, "FLEETGATE_USAGE_SINK": "none", "FLEETGATE_LOG_LEVEL": "warning"}
    service = Service("gateway", [sys.executable, "-m", "opsctl", "gateway", "serve"], env=env,
                      log_dir=state_dir).start()
    url = f"http://127.0.0.1:{port}"
    service.wait_ready(lambda: http_status(url + "/v1/status/readyz") == 200, timeout=60, what="ready")
    return service, url


def run(opts: argparse.Namespace, gateway: str | None, token: str | None) -> list[tuple[str, dict[str, float]]]:
    opsctl = str(Path(sys.executable).parent / "opsctl")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETGATE_")}
    cases = [
        ("python -c pass (interpreter floor)", [sys.executable, "-c", "pass"]),
        ("opsctl --help", [opsctl, "--help"]),
        ("opsctl org list --help", [opsctl, "org", "list", "--help"]),
        ("opsctl usage report --help", [opsctl, "usage", "report", "--help"]),
    ]
    if gateway:
        env.update(FLEETGATE_GATEWAY_URL=gateway, FLEETGATE_ADMIN_TOKEN=token or "")
        cases.append(("opsctl org list -o json (live gateway)", [opsctl, "org", "list", "-o", "json"]))
        cases.append(("opsctl registry list (live gateway)", [opsctl, "registry", "list"]))
    results = []
    for name, cmd in cases:
        t = measure(cmd, opts.runs, env)
        results.append((name, t))
        print(f"{name:42s} median {t['median'] * 1000:6.0f} ms  p95 {t['p95'] * 1000:6.0f} ms  "
              f"cpu {t['cpu'] * 1000:5.0f} ms", file=sys.stderr)
    return results


def render_markdown(results: list[tuple[str, dict[str, float]]], opts: argparse.Namespace, command: str) -> str:
    load = os.getloadavg()[0]
    lines = [
        SECTION, "",
        f"`{command}` on {os.cpu_count()} cores ({platform.python_implementation()} {platform.python_version()}, "
        f"load average before the run: {load:.1f}); {opts.runs} runs per command after one warm-up, "
        f"wall time of the whole process, and its CPU time (user + system, insensitive to the load). "
        f"Target: ≤ {TARGET_S} s wall (lazy imports: see "
        "`tests/unit/test_cli_startup.py` for the modules `--help` and admin commands must not load).",
        "",
        "| command | median | p95 | min | max | CPU (median) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, t in results:
        lines.append(f"| `{name}` | {t['median'] * 1000:.0f} ms | {t['p95'] * 1000:.0f} ms | "
                     f"{t['min'] * 1000:.0f} ms | {t['max'] * 1000:.0f} ms | {t['cpu'] * 1000:.0f} ms |")
    lines += ["", NOTES]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="runs per command (default 20)")
    parser.add_argument("--gateway", help="also time admin commands against this gateway URL")
    parser.add_argument("--admin-token", help="admin token for --gateway (default $FLEETGATE_ADMIN_TOKEN)")
    parser.add_argument("--start-gateway", action="store_true", help="start a throwaway gateway to time against")
    parser.add_argument("--out-md", type=Path, help="write the '## CLI start-up' section into this Markdown file")
    opts = parser.parse_args(argv)
    if opts.runs < 3:
        parser.error("--runs must be >= 3")
    command = "python -m benchmarks.cli_startup " + shlex.join(argv if argv is not None else sys.argv[1:])
    service = None
    gateway, token = opts.gateway, opts.admin_token or os.environ.get("FLEETGATE_ADMIN_TOKEN")
    with tempfile.TemporaryDirectory(prefix="fg-cli-bench-") as tmp:
        try:
            if opts.start_gateway and not gateway:
                service, gateway = start_gateway(Path(tmp))
                token = ADMIN_TOKEN
            results = run(opts, gateway, token)
        except ServiceFailed as e:
            print(f"bench failed: {e}", file=sys.stderr)
            return 1
        finally:
            if service is not None:
                service.stop()
    markdown = render_markdown(results, opts, command.strip())
    print("\n" + markdown)
    if opts.out_md:
        text = opts.out_md.read_text() if opts.out_md.exists() else ""
        opts.out_md.write_text(replace_section(text, markdown))
    return 0


if __name__ == "__main__":
    sys.exit(main())
