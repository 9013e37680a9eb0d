"""The alert rules and Alertmanager routes of helm/observability, checked by the real tools.

promtool checks and unit-tests the rule files, amtool checks the Alertmanager configuration and
resolves its routes, and the chart is rendered with the real Helm engine to prove it ships those
very files (no drift between what is tested and what Prometheus loads).
"""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python
import pytest
import yaml

from tests.helm.support import HELM_DIR, REPO_ROOT, find, lint, of_kind, render, validate
from tests.support import unavailable

CHART = HELM_DIR / "observability"
RULE_FILES = sorted((CHART / "rules").glob("*.yaml"))
RULE_TESTS = sorted((CHART / "rules" / "tests").glob("*_test.yaml"))
ALERTMANAGER_CONFIG = CHART / "alertmanager" / "alertmanager.yaml"
RUNBOOKS = REPO_ROOT / "docs" / "runbooks.md"
SEVERITIES = {"critical", "high", "medium"}
DEBIAN_PACKAGES = {"promtool": "prometheus", "amtool": "prometheus-alertmanager"}


def tool(name: str) -> str:
    """Path of promtool or amtool; skips (fails under FLEETGATE_REQUIRE_SERVICES=1) when it is missing."""
    path = shutil.which(name)
    if path is None:
        unavailable(f"{name} is not on PATH (Debian: apt-get install {DEBIAN_PACKAGES[name]})")
    return path


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=60)


def rule_groups() -> list[dict[str, Any]]:
    """Every group of every rule file, in file order (the order the chart's template reads them in)."""
    return [group for path in RULE_FILES for group in yaml.safe_load(path.read_text())["groups"]]


def alert_rules() -> Iterator[dict[str, Any]]:
    for group in rule_groups():
        yield from (rule for rule in group["rules"] if "alert" in rule)


def test_rule_files_pass_promtool_check():
    assert {p.name for p in RULE_FILES} >= {"gateway.yaml", "slo.yaml", "vllm.yaml"}
    result = run(tool("promtool"), "check", "rules", *RULE_FILES)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(RULE_FILES), result.stdout


def test_rule_unit_tests_pass():
    """Each alert fires on synthetic series that should page, and stays silent on those that should not."""
    assert RULE_TESTS
    result = run(tool("promtool"), "test", "rules", *RULE_TESTS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(RULE_TESTS), result.stdout


def test_every_alert_has_a_test_where_it_fires_and_one_where_it_stays_silent():
    fires: set[str] = set()
    silent: set[str] = set()
    for path in RULE_TESTS:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (fires if check.get("exp_alerts") else silent).add(check["alertname"])
    alerts = {rule["alert"] for rule in alert_rules()}
    assert alerts - fires == set(), "alerts never shown firing in rules/tests"
    assert alerts - silent == set(), "alerts never shown silent in rules/tests"


def test_every_alert_has_a_severity_and_documentation():
    anchors = {_github_anchor(line) for line in RUNBOOKS.read_text().splitlines() if line.startswith("## ")}
    problems = []
    for rule in alert_rules():
        name, annotations = rule["alert"], rule.get("annotations", {})
        if rule.get("labels", {}).get("severity") not in SEVERITIES:
            problems.append(f"{name}: severity {rule.get('labels', {}).get('severity')!r} not in {sorted(SEVERITIES)}")
        problems += [f"{name}: no {key} annotation" for key in ("summary", "description", "runbook_url")
                     if not annotations.get(key)]
        runbook = annotations.get("runbook_url", "")
        if runbook != f"docs/runbooks.md#{name.lower()}" or name.lower() not in anchors:
            problems.append(f"{name}: runbook_url {runbook!r} is not a section of docs/runbooks.md")
    assert not problems, "\n".join(problems)


def test_slo_alerts_burn_on_two_windows_of_recorded_slis():
    """Multi-window burn-rate alerts read `fleetgate:` recording rules, per model and environment: page (critical)
    on 1h & 5m, high on 6h & 30m, ticket (medium) on 3d & 6h (rules/slo.yaml is generated: docs/slo.md)."""
    recorded = {rule["record"] for group in rule_groups() for rule in group["rules"] if "record" in rule}
    for sli in ("fleetgate:request_errors", "fleetgate:request_slow"):
        assert {f"{sli}:ratio_rate{w}" for w in ("5m", "30m", "1h", "6h", "3d")} <= recorded
    burns = [rule for rule in alert_rules() if rule.get("labels", {}).get("slo")]
    windows_of = {"critical": ["1h", "5m"], "high": ["30m", "6h"], "medium": ["3d", "6h"]}
    assert {(r["alert"], r["labels"]["severity"]) for r in burns} == {
        (alert, severity) for alert in ("FleetgateAvailabilityBudgetBurn", "FleetgateLatencyBudgetBurn")
        for severity in windows_of}
    for rule in burns:
        windows = re.findall(r"fleetgate:request_(?:errors|slow):ratio_rate(\w+)", rule["expr"])
        assert sorted(windows) == windows_of[rule["labels"]["severity"]], rule


def test_alertmanager_config_passes_amtool():
    result = run(tool("amtool"), "check-config", ALERTMANAGER_CONFIG)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@pytest.mark.parametrize(("labels", "receivers"), [
    ({"severity": "critical"}, "pagerduty,slack-high"),
    ({"severity": "high"}, "slack-high"),
    ({"severity": "medium"}, "slack-medium"),
    ({}, "slack-medium"),
])
def test_alertmanager_routes_by_severity(labels, receivers):
    result = run(tool("amtool"), "config", "routes", "test", f"--config.file={ALERTMANAGER_CONFIG}",
                 f"--verify.receivers={receivers}", "alertname=FleetgateHighErrorRate",
                 *(f"{k}={v}" for k, v in labels.items()))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == receivers


def test_alertmanager_receivers_read_secrets_from_files():
    """Credentials are never inline: every receiver reads its key or webhook from a file mounted from a Secret."""
    config = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())
    assert not {k for k in config.get("global", {}) if k.endswith(("_api_url", "_url", "_key"))}
    channels = {}
    for receiver in config["receivers"]:
        for pagerduty in receiver.get("pagerduty_configs", []):
            assert set(pagerduty) & {"routing_key", "service_key", "url"} == set(), receiver["name"]
            assert pagerduty["routing_key_file"].startswith("/etc/alertmanager/secrets/"), receiver["name"]
        for slack in receiver.get("slack_configs", []):
            assert "api_url" not in slack, receiver["name"]
            assert slack["api_url_file"].startswith("/etc/alertmanager/secrets/"), receiver["name"]
            channels[receiver["name"]] = slack["channel"]
    assert channels == {"slack-high": "#vllm-alerts-high", "slack-medium": "#vllm-alerts"}


def test_chart_ships_the_rule_files_unchanged(tmp_path):
    manifests = render(CHART)
    validate(manifests)
    rule = find(manifests, "PrometheusRule")
    assert rule["spec"]["groups"] == rule_groups()
    # ... and what the chart ships is itself a valid rule file
    rendered = tmp_path / "prometheusrule.yaml"
    rendered.write_text(yaml.safe_dump(rule["spec"]))
    result = run(tool("promtool"), "check", "rules", rendered)
    assert result.returncode == 0, result.stdout + result.stderr


def test_chart_ships_the_alertmanager_config_byte_for_byte():
    secret = find(render(CHART), "Secret", "test-observability-alertmanager")
    assert base64.b64decode(secret["data"]["alertmanager.yaml"]) == ALERTMANAGER_CONFIG.read_bytes()


def test_chart_switches_and_operator_labels():
    manifests = render(CHART, set={"rules.labels": {"release": "kube-prometheus-stack"},
                                   "alertmanager.enabled": False})
    assert find(manifests, "PrometheusRule")["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert of_kind(manifests, "Secret") == []
    assert of_kind(render(CHART, set={"rules.enabled": False}), "PrometheusRule") == []


def test_chart_lints_clean():
    assert lint(CHART) == []


@pytest.mark.parametrize(("path", "value", "named"), [
    ("rules.enabled", "yes", "enabled"),
    ("rules.labels", {"release": 1}, "release"),
    ("alertmanager.receivers", {"pagerduty": "key"}, "receivers"),
    ("dashboards.labels", {"team": 1}, "team"),
    ("rulez", {"enabled": True}, "rulez"),
])
def test_bad_values_are_refused_naming_the_key(path, value, named):
    with pytest.raises(helm_python.HelmValuesError, match=named):
        render(CHART, set={path: value})


def _github_anchor(heading: str) -> str:
    """The fragment GitHub gives a Markdown heading (enough for alert names: letters only)."""
    return re.sub(r"[^a-z0-9 -]", "", heading.lstrip("#").strip().lower()).replace(" ", "-")
