"""TUI: start-up to the first rendered frame, and the CPU that live refresh costs with 50 models.

A real gateway (`opsctl gateway serve`: auth, usage spool, health prober) with N models in
`production`, each with one endpoint on one of a few simulator pods, and a light open-loop client
load across the models so every overview row has figures. `opsctl tui` runs in a real
pseudo-terminal (120×40, xterm-256color) whose output is drained as a terminal would:

- start-up: wall time from spawning `opsctl tui` to the first frame (the header's title on the
  terminal), and to the first frame with data (the first model's row in the overview table);
- refresh: user+system CPU of the TUI process over a measured window at the default 2 s refresh,
  on the Overview (one `/admin/v1/fleet` call per refresh), as a share of one core; and the gateway's
  extra CPU for serving those calls (same load with and without the TUI).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import platform
import select
import shlex
import statistics
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time
import urllib.request
from pathlib import Path

from benchmarks.gateway import replace_section
from benchmarks.services import Service, ServiceFailed, cpu_seconds, free_port, http_status

ADMIN_TOKEN = "fg-bench-tui-token"
ROWS, COLUMNS = 40, 120


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=50, help="models in the registry (default 50)")
    parser.add_argument("--pods", type=int, default=5, help="simulator pods the endpoints share (default 5)")
    parser.add_argument("--rate", type=float, default=20.0, help="client requests per second (default 20)")
    parser.add_argument("--starts", type=int, default=5, help="start-up runs (default 5)")
    parser.add_argument("--window", type=float, default=60.0, help="seconds of refresh measured (default 60)")
    parser.add_argument("--refresh", type=float, default=2.0, help="the TUI's refresh interval (default 2)")
    parser.add_argument("--out-md", type=Path, help="write the '## TUI' section into this Markdown file")
    args = parser.parse_args(argv)
    if args.models < 1 or args.pods < 1 or args.starts < 1 or args.window < 10:
        parser.error("--models, --pods and --starts must be >= 1, --window >= 10")
    return args


def _admin(url: str, method: str, path: str, body: dict | None = None) -> object:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url + path, data=data, method=method, headers={
        "Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read() or b"null")


class Stack:
    """The gateway, the pods and the registry of `models` models."""

    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.work = work
        self.services: list[Service] = []
        self.url = ""
        self.key = ""

    def start(self) -> Stack:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETGATE_")}
        pods = []
        for i in range(self.args.pods):
            port = free_port()
            # Each pod serves the registry names of its models, as a vLLM started with --served-model-name does.
            names = [arg for m in range(i, self.args.models, self.args.pods)
                     for arg in ("--served-model-name", f"bench-model-{m:02d}")]
            pod = Service(f"pod-{i}", [sys.executable, "-m", "opsctl", "sim", "serve", "--model", f"sim-{i}",
                                       "--port", str(port), "--ttft-ms", "20", "--tokens-per-s", "400", *names],
                          env=env, log_dir=self.work).start()
            self.services.append(pod)
            pods.append(f"http://127.0.0.1:{port}")
        for pod, url in zip(self.services, pods, strict=True):
            pod.wait_ready(lambda url=url: http_status(url + "/health") == 200, timeout=30, what="ready")
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        gateway_env = {**env, "FLEETGATE_STATE_DIR": str(self.work / "state"), "FLEETGATE_PORT": str(port),
                       "FLEETGATE_ADMIN_TOKEN": ADMIN_TOKEN, "FLEETGATE_LOG_LEVEL": "warning",
                       "FLEETGATE_ACCESS_LOG": "false"}
        self.gateway = Service("gateway", [sys.executable, "-m", "opsctl", "gateway", "serve"], env=gateway_env,
                               log_dir=self.work).start()
        self.services.append(self.gateway)
        self.gateway.wait_ready(lambda: http_status(self.url + "/v1/status/readyz") == 200, timeout=60,
                                what="ready")
        for i in range(self.args.models):
            _admin(self.url, "POST", "/admin/v1/models", {
                "name": f"bench-model-{i:02d}", "environment": "production", "endpoint": pods[i % len(pods)],
                "input_price": 0.5, "output_price": 1.5})
        org = _admin(self.url, "POST", "/admin/v1/organizations", {"name": "bench-tui"})
        self.key = _admin(self.url, "POST", "/admin/v1/api-keys", {"org": org["id"], "name": "bench"})["key"]
        return self

    def stop(self) -> None:
        for service in reversed(self.services):
            service.stop()


class Load(threading.Thread):
    """Open-loop chat requests at `rate` per second, spread over the models."""

    def __init__(self, url: str, key: str, models: int, rate: float) -> None:
        super().__init__(daemon=True)
        self.url, self.key, self.models, self.rate = url, key, models, rate
        self.stopping = threading.Event()
        self.sent = self.failed = 0
        self.failures: dict[str, int] = {}  # status (or error) → count

    def run(self) -> None:
        import http.client

        conn = http.client.HTTPConnection("127.0.0.1", int(self.url.rsplit(":", 1)[1]), timeout=30)
        start = time.monotonic()
        while not self.stopping.is_set():
            due = start + self.sent / self.rate
            if (delay := due - time.monotonic()) > 0:
                self.stopping.wait(delay)
            body = json.dumps({"model": f"bench-model-{self.sent % self.models:02d}", "max_tokens": 8,
                               "messages": [{"role": "user", "content": "hi"}]})
            try:
                conn.request("POST", "/v1/chat/completions", body=body, headers={
                    "Authorization": f"Bearer {self.key}", "Content-Type": "application/json"})
                response = conn.getresponse()
                response.read()
                if response.status != 200:
                    self._fail(str(response.status))
            except OSError as e:
                self._fail(type(e).__name__)
                conn.close()
            self.sent += 1


    def _fail(self, why: str) -> None:
        self.failed += 1
        self.failures[why] = self.failures.get(why, 0) + 1


class Terminal:
    """`opsctl tui` in a pseudo-terminal; a thread drains its output like a terminal emulator."""

    def __init__(self, url: str, refresh: float, work: Path) -> None:
        self.master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLUMNS, 0, 0))
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETGATE_")}
        env.update(TERM="xterm-256color", COLORTERM="truecolor", FLEETGATE_STATE_DIR=str(work / "tui-state"))
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "opsctl", "tui", "--gateway", url, "--admin-token", ADMIN_TOKEN,
             "--refresh", str(refresh)], stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True)
        os.close(slave)
        self.output = bytearray()
        self.seen: dict[bytes, float] = {}
        self.lock = threading.Lock()
        self.reader = threading.Thread(target=self._drain, daemon=True)
        self.reader.start()

    def _drain(self) -> None:
        while True:
            ready, _, _ = select.select([self.master], [], [], 0.2)
            if not ready:
                if self.proc.poll() is not None:
                    return
                continue
            try:
                chunk = os.read(self.master, 1 << 16)
            except OSError:
                return
            if not chunk:
                return
            with self.lock:
                self.output += chunk
                del self.output[:-200_000]  # keep the tail: markers are searched as they arrive

    def wait_for(self, marker: bytes, timeout: float) -> float:
        """Seconds from spawn until `marker` was on the terminal."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if marker in self.output:
                    return time.monotonic() - self.started
            if self.proc.poll() is not None:
                raise ServiceFailed(f"opsctl tui exited {self.proc.returncode}: {bytes(self.output[-2000:])!r}")
            time.sleep(0.005)
        raise ServiceFailed(f"{marker!r} not on the terminal after {timeout:.0f}s: {bytes(self.output[-2000:])!r}")

    def quit(self) -> None:
        """`q`, as a user would; killed if it does not exit. Safe to call twice."""
        if self.master < 0:
            return
        try:
            os.write(self.master, b"q")
            self.proc.wait(15)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
        finally:
            os.close(self.master)
            self.master = -1

    def __enter__(self) -> Terminal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.quit()


def measure(args: argparse.Namespace, work: Path) -> dict[str, object]:
    stack = Stack(args, work).start()
    load = Load(stack.url, stack.key, args.models, args.rate)
    load.start()
    try:
        time.sleep(5)  # figures in every row
        first_model = b"bench-model-00"  # the first row: 50 rows do not fit in 40 lines
        first_frame, with_data = [], []
        for _ in range(args.starts):
            with Terminal(stack.url, args.refresh, work) as terminal:
                first_frame.append(terminal.wait_for(b"Overview", 30))  # the header shows the screen's title
                with_data.append(terminal.wait_for(first_model, 30))
        # The gateway's CPU without, then with, the console refreshing.
        before = cpu_seconds(stack.gateway.pid)
        time.sleep(args.window)
        gateway_idle = cpu_seconds(stack.gateway.pid) - before
        with Terminal(stack.url, args.refresh, work) as terminal:
            terminal.wait_for(first_model, 30)
            time.sleep(2 * args.refresh)  # past the first refreshes and the spend query
            tui_before, gateway_before = cpu_seconds(terminal.proc.pid), cpu_seconds(stack.gateway.pid)
            time.sleep(args.window)
            tui_cpu = cpu_seconds(terminal.proc.pid) - tui_before
            gateway_busy = cpu_seconds(stack.gateway.pid) - gateway_before
    finally:
        load.stopping.set()
        load.join(10)
        stack.stop()
    return {"first_frame": first_frame, "with_data": with_data, "tui_cpu": tui_cpu,
            "gateway_extra": gateway_busy - gateway_idle, "sent": load.sent, "failed": load.failed,
            "failures": dict(load.failures)}


def _why(failures: dict[str, int]) -> str:
    return (": " + ", ".join(f"{n} × {why}" for why, n in sorted(failures.items()))) if failures else ""


def report(args: argparse.Namespace, result: dict, command: str) -> str:
    window = args.window
    first, data = sorted(result["first_frame"]), sorted(result["with_data"])
    refreshes = window / args.refresh
    tui_share = result["tui_cpu"] / window * 100
    extra = max(result["gateway_extra"], 0.0)
    return "\n".join([
        "## TUI",
        "",
        "```",
        command,
        "```",
        "",
        f"On {os.cpu_count()} cores (Python {platform.python_version()}): a real gateway (auth, usage spool, "
        f"health prober) with {args.models} models on {args.pods} simulator pods, {args.rate:g} req/s of client "
        f"load across them ({result['sent']} sent, {result['failed']} failed{_why(result['failures'])}); `opsctl tui` in a pseudo-terminal "
        f"of {COLUMNS}×{ROWS} (xterm-256color) whose output is drained as a terminal would.",
        "",
        "| measure | result | target |",
        "|---|---:|---:|",
        f"| start-up to the first frame (median of {len(first)}; min – max) | "
        f"{statistics.median(first) * 1000:.0f} ms ({first[0] * 1000:.0f} – {first[-1] * 1000:.0f}) | < 1 s |",
        f"| start-up to the overview showing the fleet's rows (median) | "
        f"{statistics.median(data) * 1000:.0f} ms | — |",
        f"| TUI CPU while refreshing every {args.refresh:g} s ({window:g} s window, {refreshes:.0f} refreshes) | "
        f"{tui_share:.1f} % of a core ({result['tui_cpu'] / refreshes * 1000:.1f} ms per refresh) | < 5 % |",
        f"| gateway CPU for those refreshes (same load with and without the TUI) | "
        f"{extra / window * 100:.2f} % of a core ({extra / refreshes * 1000:.1f} ms per refresh) | — |",
    ])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = "python -m benchmarks.tui " + shlex.join(sys.argv[1:] if argv is None else argv)
    with tempfile.TemporaryDirectory(prefix="fg-tui-bench-") as tmp:
        try:
            result = measure(args, Path(tmp))
        except ServiceFailed as e:
            print(f"bench failed: {e}", file=sys.stderr)
            return 1
    markdown = report(args, result, command.strip())
    print("\n" + markdown)
    if args.out_md:
        text = args.out_md.read_text() if args.out_md.exists() else ""
        args.out_md.write_text(replace_section(text, markdown))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
