"""The SLO alert rules are generated from the SLO targets: the chart's rules/slo.yaml is exactly what
`opsctl slo rules` makes of helm/observability/slo.toml, and rules made from targets with overrides pass promtool's
check and judge each model and environment by its own SLO on synthetic series."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from opsctl.cli import app
from tests.helm.support import HELM_DIR
from tests.helm.test_alerts import run, tool

OBSERVABILITY = HELM_DIR / "observability"
REPO = HELM_DIR.parent

OVERRIDES = """\
[defaults]
availability_target = 0.999

[[override]]
model = "embed-*"
environment = "*"
latency_threshold_ms = 1000

[[override]]
model = "*"
environment = "development"
availability_target = 0.99
"""


def opsctl(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_the_chart_ships_the_rules_generated_from_slo_toml(monkeypatch):
    monkeypatch.chdir(REPO)
    code, out, err = opsctl("slo", "rules", "--slo-file", "helm/observability/slo.toml")
    assert code == 0, err
    assert out == (OBSERVABILITY / "rules" / "slo.yaml").read_text(), \
        "rules/slo.yaml is stale: opsctl slo rules --slo-file helm/observability/slo.toml " \
        "--out helm/observability/rules/slo.yaml"
    monkeypatch.delenv("FLEETGATE_SLO_FILE", raising=False)
    assert opsctl("slo", "rules")[1] == out.replace("the targets in slo.toml", "the built-in SLO targets")


@pytest.fixture
def override_rules(tmp_path: Path) -> Path:
    (tmp_path / "slo.toml").write_text(OVERRIDES)
    out = tmp_path / "slo.yaml"
    code, stdout, err = opsctl("slo", "rules", "--slo-file", str(tmp_path / "slo.toml"), "--out", str(out),
                               "-o", "json")
    assert code == 0, err
    # 5 error ratios + 5 slow ratios per scope (thresholds differ); 3 tiers × 2 SLOs per scope: 3 scopes
    assert '"records": 20' in stdout and '"alerts": 18' in stdout
    return out


def test_rules_with_overrides_pass_promtool_check(override_rules):
    result = run(tool("promtool"), "check", "rules", override_rules)
    assert result.returncode == 0, result.stdout + result.stderr
    rules = yaml.safe_load(override_rules.read_text())["groups"][0]["rules"]
    slow_5m = [r["expr"] for r in rules if r.get("record") == "fleetgate:request_slow:ratio_rate5m"]
    assert len(slow_5m) == 3 and 'le="1.0", model=~"embed-.*"' in slow_5m[0] and 'le="10.0"' in slow_5m[2]
    assert "unless on (model, environment) fleetgate_request_duration_seconds_count{model=~\"embed-.*\"}" \
        in slow_5m[1]


def _alert(severity: str, slo: str, model: str, summary: str, description: str) -> dict:
    return {"exp_labels": {"severity": severity, "slo": slo, "model": model, "environment": "production"},
            "exp_annotations": {"summary": f"{model} (production) {summary}", "description": description,
                                "runbook_url": f"docs/runbooks.md#fleetgate{slo}budgetburn"}}


def test_each_pair_is_judged_by_its_own_slo(override_rules, tmp_path):
    """Same traffic, different verdicts: 5 % errors page for production (99.9 %) but not for development (99 %:
    a 5x burn); 20 % of requests between 1 s and 10 s page for embed-small (1 s) but not for llama (10 s)."""
    series = []
    for env in ("production", "development"):
        series += [{"series": f'fleetgate_requests_total{{model="llama",environment="{env}",status="200"}}',
                    "values": "0+570x40"},
                   {"series": f'fleetgate_requests_total{{model="llama",environment="{env}",status="502"}}',
                    "values": "0+30x40"}]
    for model in ("llama", "embed-small"):
        labels = f'model="{model}",environment="production"'
        series += [{"series": f'fleetgate_request_duration_seconds_bucket{{{labels},le="1.0"}}', "values": "0+480x40"},
                   {"series": f'fleetgate_request_duration_seconds_bucket{{{labels},le="10.0"}}', "values": "0+600x40"},
                   {"series": f"fleetgate_request_duration_seconds_count{{{labels}}}", "values": "0+600x40"}]
    page, high = "over the last hour, and still do over the last 5 minutes", \
        "over the last 6 hours, and still do over the last 30 minutes"
    errors, slow = "5% of requests failed with a 5xx", "20% of requests took longer than 1 s"
    case = {
        "interval": "1m", "input_series": series,
        "promql_expr_test": [{"expr": "round(fleetgate:request_slow:ratio_rate30m, 0.0001)", "eval_time": "30m",
                              "exp_samples": [
                                  {"labels": '{environment="production",model="embed-small"}', "value": 0.2},
                                  {"labels": '{environment="production",model="llama"}', "value": 0}]}],
        "alert_rule_test": [
            {"eval_time": "30m", "alertname": "FleetgateAvailabilityBudgetBurn", "exp_alerts": [
                _alert("critical", "availability", "llama", "burns its availability budget 14.4x too fast",
                       f"{errors} {page} (SLO 99.9 %): at this rate the 30-day error budget is gone in 2 days."),
                _alert("high", "availability", "llama", "burns its availability budget 6x too fast",
                       f"{errors} {high} (SLO 99.9 %): at this rate the 30-day error budget is gone in 5 days.")]},
            {"eval_time": "30m", "alertname": "FleetgateLatencyBudgetBurn", "exp_alerts": [
                _alert("critical", "latency", "embed-small", "burns its latency budget 14.4x too fast",
                       f"{slow} {page} (SLO 99 % within 1 s): at this rate the 30-day budget is gone in 2 days."),
                _alert("high", "latency", "embed-small", "burns its latency budget 6x too fast",
                       f"{slow} {high} (SLO 99 % within 1 s): at this rate the 30-day budget is gone in 5 days.")]},
        ]}
    tests = tmp_path / "slo_test.yaml"
    tests.write_text(yaml.safe_dump({"rule_files": [str(override_rules)], "evaluation_interval": "1m",
                                     "tests": [case]}))
    result = run(tool("promtool"), "test", "rules", tests)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(("toml", "message"), [
    ("[defaults]\nlatency_threshold_ms = 7000\n",
     "defaults.latency_threshold_ms: 7000 ms is not a bucket bound of fleetgate_request_duration_seconds"),
    ("[[override]]\nmodel = \"m\"\nenvironment = \"*\"\nlatency_threshold_ms = 3000\n",
     "override[0].latency_threshold_ms: 3000 ms is not a bucket bound"),
    ("[[override]]\nmodel = \"m\"\nenvironment = \"prod\"\nlatency_target = 0.9\n",
     "override[0].environment: 'prod' matches no environment"),
    ("[defaults\n", "not valid TOML"),
])
def test_bad_targets_exit_2_naming_the_file_and_key(tmp_path, toml, message):
    path = tmp_path / "slo.toml"
    path.write_text(toml)
    code, out, err = opsctl("slo", "rules", "--slo-file", str(path))
    assert code == 2 and out == "" and err == f"error: {path}: {err.split(': ', 2)[2]}", err
    assert message in err and err.count("\n") == 1
