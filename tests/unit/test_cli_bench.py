"""`opsctl bench` as a user runs it: progress while it runs, and no throughput figure for a run
where every request failed (exit 1 with the error summary instead)."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from tests.support import free_port, port_open, wait_for

PROGRESS = re.compile(r"^bench: \d+/\d+ s( warm-up)?  sent \d+  ok \d+  errors \d+  [\d.]+ req/s$")


@pytest.fixture(scope="module")
def sim_url():
    """A real simulator process (the stand-in for a GPU pod)."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "opsctl.sim", "--model", "m", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: port_open(port), timeout=20, what="simulator")
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def _bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "opsctl", "bench", *args], capture_output=True, text=True,
                          timeout=60)


def test_progress_lines_on_stderr_about_once_a_second(sim_url):
    out = _bench(sim_url, "--model", "m", "--rate", "40", "--duration", "1.5", "--warmup", "1.5")
    assert out.returncode == 0, out.stderr
    progress = out.stderr.splitlines()
    assert 2 <= len(progress) <= 4, out.stderr  # 3 s of run: one line per second
    assert all(PROGRESS.match(line) for line in progress), out.stderr
    assert "warm-up" in progress[0] and "warm-up" not in progress[-1]
    assert "req/s" in out.stdout and "latency ms" in out.stdout  # the table still goes to stdout


def test_quiet_and_json_keep_stdout_clean(sim_url):
    out = _bench(sim_url, "--model", "m", "--rate", "40", "--duration", "1.2", "--warmup", "0", "-o", "json", "-q")
    assert out.returncode == 0 and out.stderr == ""
    assert json.loads(out.stdout)["successes"] > 0


def test_all_failed_reports_no_throughput_and_exits_1():
    url = f"http://127.0.0.1:{free_port()}"
    out = _bench(url, "--model", "m", "--rate", "50", "--duration", "1.2", "--warmup", "0")
    assert out.returncode == 1
    assert out.stdout == ""  # no table: a req/s of failures would read like a result
    *progress, error = out.stderr.splitlines()
    assert progress and all(PROGRESS.match(line) for line in progress), out.stderr
    assert error.startswith(f"error: no request succeeded against {url}/v1/chat/completions: ")
    assert "all failed (connect_error=" in error


def test_http_errors_are_summarized_by_status(sim_url):
    out = _bench(sim_url, "--model", "other-model", "--rate", "20", "--duration", "0.5", "--warmup", "0", "-q")
    assert out.returncode == 1  # the simulator answers 404 for a model it does not serve
    assert "http_404=" in out.stderr and out.stdout == ""
