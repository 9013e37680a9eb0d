"""`opsctl slo` as a process: real traffic through a real gateway (a simulator failing some requests) lands in the
lake, and the SLO report counts exactly what the clients saw; --fail-on-breach for CI; bad input exits 2."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.fleet import sim_pod

MODEL = "slo-chat"


def opsctl(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith("FLEETGATE_")}
    return subprocess.run([sys.executable, "-m", "opsctl", "slo", *args], capture_output=True, text=True, timeout=60,
                          env={**base, **env}, cwd=cwd)


def one_line_error(done: subprocess.CompletedProcess, code: int) -> str:
    assert done.returncode == code, done.stdout + done.stderr
    assert "Traceback" not in done.stderr and done.stderr.startswith("error: ") and done.stderr.count("\n") == 1
    return done.stderr


def _traffic(url: str, keys: dict[str, str]) -> list[int]:
    """120 chat requests with the open key, then 8 with the key limited to 3 a minute; the statuses seen."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": "slo"}], "max_tokens": 2}
    statuses = []
    with httpx.Client(base_url=url, timeout=30) as client:
        for name, n in (("open", 120), ("limited", 8)):
            for _ in range(n):
                r = client.post("/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {keys[name]}"})
                statuses.append(r.status_code)
    return statuses


@pytest.fixture
def served(gateway_factory, tmp_path) -> list[int]:
    """The statuses clients got from a gateway whose one pod fails ~15 % of requests (seeded), once all of it is
    in the lake (a stopped gateway has flushed its spool)."""
    async def run() -> list[int]:
        async with sim_pod(MODEL, error_rate=0.15, seed=13) as pod:
            gw = await asyncio.to_thread(gateway_factory, FLEETGATE_USAGE_SINK="spool", FLEETGATE_LAKE_FLUSH_S="0.5")
            with gw.admin() as admin:
                admin.post("/admin/v1/organizations", json={"name": "acme"}).raise_for_status()
                admin.post("/admin/v1/models", json={"name": MODEL, "endpoint": pod}).raise_for_status()
                keys = {"open": admin.post("/admin/v1/api-keys", json={"org": "acme"}).json()["key"],
                        "limited": admin.post("/admin/v1/api-keys", json={"org": "acme", "rpm_limit": 3}).json()["key"]}
            statuses = await asyncio.to_thread(_traffic, gw.url, keys)
            gw.stop()
            return statuses

    return asyncio.run(run())


def test_report_counts_what_clients_saw(served, cli, tmp_path, monkeypatch):
    env = {"FLEETGATE_STATE_DIR": str(tmp_path / "state")}
    errors = sum(s >= 500 for s in served)
    limited = sum(s == 429 for s in served)
    assert errors >= 5 and limited == 5 and set(served) <= {200, 429, 500, 502}, served

    done = opsctl("report", "--output", "json", env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    [row] = json.loads(done.stdout)
    availability, latency = row["availability"], row["latency"]
    assert (row["model"], row["environment"], row["window"]) == (MODEL, "production", "30d")
    # the 429s are in the lake (today without an environment: no endpoint served them) and spend no budget
    assert (availability["eligible"], availability["bad"]) == (128 - limited, errors)
    assert availability["sli"] == pytest.approx(1 - errors / (128 - limited))
    assert availability["budget_remaining"] == pytest.approx(1 - errors / (128 - limited) / 0.001)
    assert availability["burn_rate"]["1h"] == pytest.approx(errors / (128 - limited) / 0.001)
    assert (availability["status"], row["status"]) == ("breach", "breach")  # ~15 % errors against 99.9 %
    assert (latency["eligible"], latency["bad"], latency["status"]) == (128 - limited - errors, 0, "ok")

    breached = opsctl("report", "--fail-on-breach", env=env, cwd=tmp_path)
    assert one_line_error(breached, 1) == f"error: SLO breached: {MODEL} (production)\n"
    header, line = breached.stdout.splitlines()  # the table is printed before the verdict
    assert header.split()[:4] == ["MODEL", "ENVIRONMENT", "STATUS", "WINDOW"]
    assert line.split()[:4] == [MODEL, "production", "breach", "30d"] and "(overspent)" in line

    # the same traffic against a looser SLO, named by the setting: within budget, so CI passes
    (tmp_path / "slo.toml").write_text(f'[[override]]\nmodel = "{MODEL}"\nenvironment = "*"\n'
                                       'availability_target = 0.5\n')
    monkeypatch.setenv("FLEETGATE_SLO_FILE", str(tmp_path / "slo.toml"))
    code, out, err = cli("report", "--fail-on-breach", "--model", MODEL, "-o", "json")
    assert code == 0, err
    assert [(r["slo"], r["status"]) for r in json.loads(out)] == [("override[0]", "ok")]


@pytest.fixture
def cli(tmp_path, monkeypatch):
    """opsctl in this process (bad input and targets need no traffic): (exit code, stdout, stderr)."""
    from typer.testing import CliRunner

    from opsctl.cli import app

    monkeypatch.setenv("FLEETGATE_STATE_DIR", str(tmp_path / "state"))
    runner = CliRunner()

    def run(*args: str) -> tuple[int, str, str]:
        result = runner.invoke(app, ["slo", *args])
        return result.exit_code, result.stdout, result.stderr

    return run


@pytest.mark.parametrize(("args", "message"), [
    (["report", "--window", "5x"], "--window '5x' is invalid"),
    (["report", "--window", "10m"], "an error budget needs at least 1h"),
    (["report", "--env", "prod"], "unknown environment 'prod'"),
    (["report", "--model", "llama*"], "--model 'llama*' is invalid"),
    (["report", "--slo-file", "missing.toml"], "missing.toml: no such SLO file"),
    (["rules", "--slo-file", "bad.toml"], "bad.toml: defaults.availability_target: expected a share"),
    (["targets", "--model", "a b"], "--model 'a b' is invalid"),
])
def test_bad_input_exits_2(cli, tmp_path, args, message):
    (tmp_path / "bad.toml").write_text("[defaults]\navailability_target = 99.9\n")
    code, out, err = cli(*args)
    assert code == 2 and out == "" and err.startswith("error: ") and err.count("\n") == 1, err
    assert message in err


def test_targets_and_an_empty_lake(cli, tmp_path, monkeypatch):
    (tmp_path / "slo.toml").write_text('[[override]]\nmodel = "embed-*"\nenvironment = "*"\n'
                                       'latency_threshold_ms = 1000\n')
    monkeypatch.setenv("FLEETGATE_SLO_FILE", str(tmp_path / "slo.toml"))
    code, out, err = cli("targets", "--model", "embed-small", "--env", "staging", "-o", "json")
    assert code == 0, err
    assert json.loads(out) == [{"model": "embed-small", "environment": "staging", "slo": "override[0]",
                                "availability_target": 0.999, "latency_threshold_ms": 1000.0,
                                "latency_target": 0.99, "window": "30d", "source": str(tmp_path / "slo.toml")}]
    listed = json.loads(cli("targets", "-o", "json")[1])
    assert [(t["model"], t["slo"]) for t in listed] == [("*", "defaults"), ("embed-*", "override[0]")]
    assert cli("report", "-o", "json")[:2] == (0, "[]\n")
    assert cli("report")[1] == "(none)\n"
