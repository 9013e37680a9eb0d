"""Grafana dashboards: built from code (dashboards/build.py), well formed, shipped by the observability chart.

Which metric names and labels they query is checked against a running fleet in test_metric_names.py.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from itertools import combinations
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml

from tests.helm.support import HELM_DIR, of_kind, render, validate

OBSERVABILITY = HELM_DIR / "observability"
DASHBOARDS_DIR = OBSERVABILITY / "dashboards"
BUILD = DASHBOARDS_DIR / "build.py"
DASHBOARD_FILES = sorted(DASHBOARDS_DIR.glob("*.json"))
# kubectl's client-side apply keeps the whole object in an annotation limited to 256 KiB.
MAX_CONFIGMAP_BYTES = 256 * 1024


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in board["panels"] if p["type"] != "row"]


def exprs(board: dict[str, Any]) -> str:
    return "\n".join(t["expr"] for p in panels(board) for t in p["targets"])


def build(*args: str) -> subprocess.CompletedProcess[str]:
    """build.py with no site-packages (-I -S): it must run on a bare Python."""
    return subprocess.run([sys.executable, "-I", "-S", str(BUILD), *args], capture_output=True, text=True, timeout=30)


def test_committed_dashboards_are_what_build_py_builds():
    result = build("--check")
    assert result.returncode == 0, result.stderr


def test_check_fails_on_a_stale_or_unknown_dashboard(tmp_path):
    for path in DASHBOARD_FILES:
        shutil.copy(path, tmp_path)
    stale = tmp_path / DASHBOARD_FILES[0].name
    stale.write_text(stale.read_text().replace('"schemaVersion": 39', '"schemaVersion": 38'))
    (tmp_path / "orphan.json").write_text("{}")
    result = build("--check", "--out", str(tmp_path))
    assert result.returncode == 1
    assert DASHBOARD_FILES[0].name in result.stderr and "orphan.json" in result.stderr
    assert build("--out", str(tmp_path)).returncode == 0  # a rebuild repairs the stale one
    assert stale.read_text() == DASHBOARD_FILES[0].read_text()


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=lambda p: p.stem)
def test_dashboard_is_well_formed(path):
    board = load(path)
    assert board["uid"] == path.stem and board["schemaVersion"] >= 39 and board["title"].startswith("Fleetgate / ")
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert {"model"} <= set(variables) and {"namespace", "environment"} & set(variables)
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for p in panels(board):
        where = f'{path.name}: panel "{p["title"]}"'
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, where
        assert p["fieldConfig"]["defaults"]["unit"], f"{where}: no unit"
        assert p["description"], f"{where}: no description"
        assert p["targets"] and len({t["refId"] for t in p["targets"]}) == len(p["targets"]), where
        for t in p["targets"]:
            assert t["datasource"] == p["datasource"], where
    for a, b in combinations(board["panels"], 2):
        assert not _overlap(a["gridPos"], b["gridPos"]), f'{path.name}: "{a["title"]}" overlaps "{b["title"]}"'
    assert all(0 <= p["gridPos"]["x"] and p["gridPos"]["x"] + p["gridPos"]["w"] <= 24 for p in board["panels"])


def _overlap(a: dict[str, int], b: dict[str, int]) -> bool:
    return (a["x"] < b["x"] + b["w"] and b["x"] < a["x"] + a["w"]
            and a["y"] < b["y"] + b["h"] and b["y"] < a["y"] + a["h"])


def test_dashboards_cover_what_operators_need():
    """vLLM: pods, latency, queue, KV cache; gateway: req/s, latency, errors, spend, limits; SLO: the budgets."""
    vllm, gateway, slo = (exprs(load(DASHBOARDS_DIR / f"fleetgate-{n}.json")) for n in ("vllm", "gateway", "slo"))
    for needle in ("up{", "kube_pod_status_ready", "kube_pod_container_status_restarts_total",
                   "vllm:time_to_first_token_seconds_bucket", "vllm:e2e_request_latency_seconds_bucket",
                   "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc"):
        assert needle in vllm, f"vLLM dashboard lacks {needle}"
    for needle in ("rate(fleetgate_requests_total", "fleetgate_request_duration_seconds_bucket", 'status=~"5.."',
                   "fleetgate_spend_usd_total", "sum by (reason) (rate(fleetgate_limited_total"):
        assert needle in gateway, f"gateway dashboard lacks {needle}"
    for needle in ("fleetgate:request_errors:ratio_rate", "fleetgate:request_slow:ratio_rate"):
        assert needle in slo, f"SLO dashboard lacks {needle}"


def _alert_budgets(rules: dict[str, Any]) -> dict[str, set[float]]:
    """The error budget each SLO's burn-rate alerts use: the smallest number in `ratio > (factor * budget)`."""
    budgets: dict[str, set[float]] = {}
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "alert" in rule and "slo" in rule.get("labels", {}):
                nodes: list[promql_parser.Expr] = []
                promql_parser.walk(promql_parser.parse(rule["expr"]), nodes.append)
                numbers = [n.val for n in nodes if isinstance(n, promql_parser.NumberLiteral)]
                budgets.setdefault(rule["labels"]["slo"], set()).add(min(numbers))
    return budgets


def test_slo_dashboard_budgets_are_those_of_the_alert_rules():
    constants = {v["name"]: float(v["query"]) for v in load(DASHBOARDS_DIR / "fleetgate-slo.json")["templating"]["list"]
                 if v["type"] == "constant"}
    budgets = _alert_budgets(yaml.safe_load((OBSERVABILITY / "rules" / "slo.yaml").read_text()))
    assert budgets == {"availability": {constants["availability_budget"]}, "latency": {constants["latency_budget"]}}


def test_chart_ships_every_dashboard_as_a_grafana_configmap():
    manifests = render(OBSERVABILITY, namespace="monitoring")
    validate(manifests)
    shipped = {key: (cm, json.loads(text)) for cm in of_kind(manifests, "ConfigMap")
               if cm["metadata"]["labels"].get("grafana_dashboard") == "1" for key, text in cm["data"].items()}
    assert set(shipped) == {p.name for p in DASHBOARD_FILES}
    for path in DASHBOARD_FILES:
        configmap, board = shipped[path.name]
        assert board == load(path), f"{path.name}: the ConfigMap differs from the file"
        assert len(json.dumps(configmap)) < MAX_CONFIGMAP_BYTES
        assert len(configmap["data"]) == 1 and configmap["metadata"]["name"].endswith(path.stem)


def test_dashboards_can_be_switched_off_labelled_and_put_in_a_folder():
    assert not of_kind(render(OBSERVABILITY, set={"dashboards.enabled": False}), "ConfigMap")
    configmaps = of_kind(render(OBSERVABILITY, set={"dashboards.labels": {"team": "ml-platform"},
                                                    "dashboards.annotations": {"grafana_folder": "Fleetgate"}}),
                         "ConfigMap")
    assert len(configmaps) == len(DASHBOARD_FILES)
    for cm in configmaps:
        labels = cm["metadata"]["labels"]
        assert labels["team"] == "ml-platform" and labels["grafana_dashboard"] == "1"
        assert cm["metadata"]["annotations"] == {"grafana_folder": "Fleetgate"}


def test_long_release_names_keep_configmap_names_distinct_and_valid():
    names = [cm["metadata"]["name"] for cm in of_kind(render(OBSERVABILITY, release="r" * 53), "ConfigMap")]
    assert len(set(names)) == len(DASHBOARD_FILES) and all(len(n) <= 63 for n in names)
