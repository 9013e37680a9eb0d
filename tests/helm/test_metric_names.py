"""Every metric an alert rule or a dashboard queries exists in what Fleetgate exports: no silent drift.

A real gateway and a simulator pod (vLLM's metric names) serve a little traffic; their `/metrics` are
scraped and every PromQL expression of helm/observability/rules/*.yaml and dashboards/*.json is parsed
(promql_parser) and walked: each metric must be exported, a recording rule, or on the external allow-list,
and each label it is filtered or grouped by must exist on it (checked for what the gateway and the
simulator export; recording rules and external metrics are checked by name only).
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import promql_parser
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.fleet import gateway_settings, running_gateway, sim_pod
from tests.helm.support import GATEWAY_CHART, HELM_DIR, VLLM_CHART, of_kind, render

OBSERVABILITY = HELM_DIR / "observability"
DASHBOARD_FILES = sorted((OBSERVABILITY / "dashboards").glob("*.json"))
RULE_FILES = sorted((OBSERVABILITY / "rules").glob("*.yaml"))

# Metrics other exporters provide, the only names neither Fleetgate nor vLLM export. Keep it this short:
# each entry is a dependency of the observability stack on that exporter.
EXTERNAL_METRICS = {
    "up": "Prometheus itself: 1 when the target's last scrape succeeded",
    "kube_pod_status_ready": "kube-state-metrics: pod Ready condition",
    "kube_pod_container_status_restarts_total": "kube-state-metrics: container restarts",
}
# Labels Prometheus attaches at scrape time, so no exporter shows them: a query may filter or group any metric
# by them. The first ones come with every ServiceMonitor target; `environment` is added by the relabeling of
# the charts' ServiceMonitors (test_service_monitors_add_the_environment_label_and_keep_the_exporters_own).
SERVICE_MONITOR_LABELS = frozenset({"job", "instance", "namespace", "service", "pod", "container", "endpoint"})
TARGET_LABELS = SERVICE_MONITOR_LABELS | {"environment"}
# Functions that invent labels: a grouping over their result is not a grouping over the metric.
LABEL_MAKERS = frozenset({"label_replace", "label_join"})

SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum", "_created"),
            "summary": ("", "_count", "_sum", "_created"), "gaugehistogram": ("_bucket", "_gcount", "_gsum")}
GRAFANA_INTERVAL = re.compile(r"\$\{?__(?:rate_interval|interval|range)\}?")
GRAFANA_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")
LABEL_VALUES = re.compile(r"^\s*label_values\((?:(?P<selector>.*),\s*)?(?P<label>\w+)\s*\)\s*$", re.S)
QUERY_RESULT = re.compile(r"^\s*query_result\((?P<expr>.*)\)\s*$", re.S)


@dataclass(frozen=True)
class Query:
    """One PromQL expression and where it lives, for messages: `file: panel "Title"`."""

    where: str
    expr: str


@dataclass(frozen=True)
class Exported:
    """What the scrapes showed: series name → label names of its samples (None: family had no samples)."""

    labels: dict[str, frozenset[str] | None]

    @classmethod
    def from_scrapes(cls, *texts: str) -> Exported:
        labels: dict[str, frozenset[str] | None] = {}
        for text in texts:
            for family in text_string_to_metric_families(text):
                for suffix in SUFFIXES.get(family.type, ("",)):
                    labels.setdefault(family.name + suffix, None)
                for sample in family.samples:
                    labels[sample.name] = (labels.get(sample.name) or frozenset()) | frozenset(sample.labels)
        return cls(labels)


# --- the queries -----------------------------------------------------------------------------------------

def grafana_to_promql(expr: str, constants: dict[str, str]) -> str:
    """Interpolate Grafana's variables as a dashboard would: intervals become 5m, constants their value,
    any other variable (they stand in label values) the value `x`."""
    def value(m: re.Match[str]) -> str:
        return constants.get(next(g for g in m.groups() if g), "x")

    return GRAFANA_VARIABLE.sub(value, GRAFANA_INTERVAL.sub("5m", expr))


def _panels(panels: Iterable[dict]) -> Iterator[dict]:
    for p in panels:
        yield p
        yield from _panels(p.get("panels", ()))  # collapsed rows keep their panels inside


def dashboard_queries(path: Path) -> list[Query]:
    """Every panel target and every query variable (label_values / query_result) of a dashboard."""
    board = json.loads(path.read_text())
    variables = board.get("templating", {}).get("list", ())
    constants = {v["name"]: v["query"] for v in variables if v.get("type") == "constant"}
    queries = [Query(f'{path.name}: panel "{p["title"]}"', grafana_to_promql(t["expr"], constants))
               for p in _panels(board.get("panels", ())) for t in p.get("targets", ()) if t.get("expr")]
    for var in variables:
        if var.get("type") != "query":
            continue
        text = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        found = LABEL_VALUES.match(text) or QUERY_RESULT.match(text)
        assert found, f'{path.name}: variable "{var["name"]}": unsupported query {text!r}'
        expr = found.groupdict().get("expr") or found.groupdict().get("selector")
        if expr:
            where, expr = f'{path.name}: variable "{var["name"]}"', grafana_to_promql(expr, constants)
            queries.append(Query(where, expr))
            if found.groupdict().get("label"):  # label_values(sel, label): the label must be on sel
                queries.append(Query(where, f'count by ({found["label"]}) ({expr})'))
    return queries


def _rules(path: Path) -> Iterator[dict]:
    for group in (yaml.safe_load(path.read_text()) or {}).get("groups", ()):
        yield from group.get("rules", ())


def rule_queries(path: Path) -> list[Query]:
    return [Query(f"rules/{path.name}: {'alert' if 'alert' in r else 'record'} {r.get('alert') or r.get('record')}",
                  r["expr"]) for r in _rules(path)]


def recording_rules() -> frozenset[str]:
    return frozenset(r["record"] for path in RULE_FILES for r in _rules(path) if "record" in r)


def all_queries() -> list[Query]:
    return [q for path in DASHBOARD_FILES for q in dashboard_queries(path)] + \
           [q for path in RULE_FILES for q in rule_queries(path)]


# --- the check -------------------------------------------------------------------------------------------

def _metric_name(selector: promql_parser.VectorSelector) -> str | None:
    if selector.name:
        return selector.name
    return next((m.value for m in selector.matchers.matchers
                 if m.name == "__name__" and m.op == promql_parser.MatchOp.Equal), None)


def _walk(expr: promql_parser.Expr) -> list[promql_parser.Expr]:
    nodes: list[promql_parser.Expr] = []
    promql_parser.walk(expr, nodes.append)
    return nodes


def _label_problem(where: str, metric: str, label: str, exported: Exported, how: str) -> str | None:
    """Why `label` cannot be used on `metric`, or None if it can (or the metric is not ours to know)."""
    if label in TARGET_LABELS or label == "__name__" or metric not in exported.labels:
        return None
    has = exported.labels[metric]
    if has is None:
        return (f"{where}: {how} label '{label}' of {metric}, which had no samples in the scrape: "
                "drive traffic that produces it in this test so its labels can be checked")
    if label not in has:
        return f"{where}: {how} label '{label}', which {metric} does not have (it has: {', '.join(sorted(has))})"
    return None


def query_problems(query: Query, exported: Exported, recorded: frozenset[str]) -> list[str]:
    """Unknown metric names and labels in one query, each naming the file, the panel or rule and the metric."""
    try:
        expr = promql_parser.parse(query.expr)
    except ValueError as e:
        return [f"{query.where}: not valid PromQL ({e}): {query.expr}"]
    problems: list[str | None] = []
    for node in _walk(expr):
        if isinstance(node, promql_parser.VectorSelector):
            metric = _metric_name(node)
            if metric is None or metric in EXTERNAL_METRICS or metric in recorded:
                continue
            if metric not in exported.labels:
                problems.append(f"{query.where}: metric {metric} is not exported by the gateway or the simulator, "
                                "not a recording rule and not on the external allow-list")
                continue
            problems.extend(_label_problem(query.where, metric, m.name, exported, "filters on")
                            for m in node.matchers.matchers)
        elif isinstance(node, promql_parser.AggregateExpr) and node.modifier is not None \
                and node.modifier.type == promql_parser.AggModifierType.By:
            problems.extend(_grouping_problems(query.where, node, exported))
    return list(dict.fromkeys(p for p in problems if p))  # a metric used twice in one query: say it once


def _grouping_problems(where: str, agg: promql_parser.AggregateExpr, exported: Exported) -> list[str | None]:
    """`sum by (l) (... one metric ...)`: each `l` must be a label of that metric (unknowable otherwise)."""
    inner = _walk(agg.expr)
    if any(isinstance(n, promql_parser.Call) and n.func.name in LABEL_MAKERS for n in inner):
        return []
    metrics = {_metric_name(n) for n in inner if isinstance(n, promql_parser.VectorSelector)}
    if len(metrics) != 1 or (metric := metrics.pop()) is None or exported.labels.get(metric) is None:
        return []  # several metrics, or none with samples: the labels of the mix are not the metric's
    return [_label_problem(where, metric, label, exported, "groups by") for label in agg.modifier.labels]


def drift(queries: Iterable[Query], exported: Exported, recorded: frozenset[str]) -> list[str]:
    return [p for q in queries for p in query_problems(q, exported, recorded)]


# --- a real fleet's metrics ------------------------------------------------------------------------------

async def _scrape_fleet(tmp: Path) -> tuple[str, str]:
    """Traffic that makes the labelled families appear: success, a stream, both kinds of 429, a soft limit."""
    chat = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    async with sim_pod("m") as pod, running_gateway(gateway_settings(tmp)) as gw:
        await gw.register("m", pod, input_price=1.0, output_price=2.0)
        await gw.create_org("acme")
        await gw.create_org("broke")
        # acme: 1000 micro-USD, soft limit at 1 %, which one request's reservation (~20 micros) crosses
        for org, usd, soft in (("acme", 0.001, 1), ("broke", 0, 80)):
            r = await gw.admin.put("/admin/v1/budgets", json={"org": org, "usd": usd, "period": "daily",
                                                              "soft_limit_pct": soft})
            assert r.status_code == 200, r.text
        keys = {"acme": (await gw.create_key("acme", rpm_limit=2))["key"],
                "broke": (await gw.create_key("broke"))["key"]}
        async with httpx.AsyncClient(base_url=gw.url, timeout=10) as client:
            async def call(org: str, **extra) -> int:
                r = await client.post("/v1/chat/completions", json={**chat, **extra},
                                      headers={"Authorization": f"Bearer {keys[org]}"})
                return r.status_code

            assert [await call("acme"), await call("acme", stream=True), await call("acme")] == [200, 200, 429]
            assert await call("broke") == 429
            gateway_text = (await gw.admin.get("/metrics")).text
            sim_text = (await client.get(f"{pod}/metrics")).text
    return gateway_text, sim_text


@pytest.fixture(scope="module")
def scrapes(tmp_path_factory) -> dict[str, str]:
    """The `/metrics` text of each exporter, by the chart that deploys it."""
    gateway_text, sim_text = asyncio.run(_scrape_fleet(tmp_path_factory.mktemp("fleet")))
    return {GATEWAY_CHART.name: gateway_text, VLLM_CHART.name: sim_text}


@pytest.fixture(scope="module")
def exported(scrapes) -> Exported:
    return Exported.from_scrapes(*scrapes.values())


# --- tests -----------------------------------------------------------------------------------------------

def test_the_dashboards_and_rules_are_found():
    """The drift check is only as good as what it reads: a moved folder must not make it pass vacuously."""
    assert len(DASHBOARD_FILES) >= 3, f"dashboards missing in {OBSERVABILITY / 'dashboards'}"
    assert RULE_FILES, f"no rule files in {OBSERVABILITY / 'rules'}"
    for path in DASHBOARD_FILES:
        assert len(dashboard_queries(path)) >= 5, f"{path.name}: too few queries found"
    for path in RULE_FILES:
        assert rule_queries(path), f"rules/{path.name}: no rules found"


def test_every_metric_and_label_in_rules_and_dashboards_exists(exported):
    problems = drift(all_queries(), exported, recording_rules())
    assert not problems, "metric drift:\n  " + "\n  ".join(problems)


def test_the_scrape_saw_the_families_the_dashboards_group_by(exported):
    """The traffic above produced labelled samples for both exporters (otherwise labels go unchecked)."""
    for series in ("fleetgate_requests_total", "fleetgate_limited_total", "fleetgate_budget_soft_limit_total",
                   "fleetgate_request_duration_seconds_bucket", "fleetgate_time_to_first_token_seconds_bucket",
                   "vllm:num_requests_waiting", "vllm:request_success_total"):
        assert exported.labels.get(series), f"{series}: no samples scraped"
    assert {"model", "status"} <= exported.labels["fleetgate_requests_total"]
    assert {"model_name", "finished_reason"} <= exported.labels["vllm:request_success_total"]


def test_the_external_allow_list_is_all_in_use():
    """An allow-list entry nothing queries any more is dead weight that could hide a future typo."""
    used = {_metric_name(n) for q in all_queries() for n in _walk(promql_parser.parse(q.expr))
            if isinstance(n, promql_parser.VectorSelector)}
    assert set(EXTERNAL_METRICS) <= used, f"unused allow-list entries: {sorted(set(EXTERNAL_METRICS) - used)}"


def test_drift_is_reported_with_file_panel_and_metric(exported):
    """The checker itself catches a renamed metric, a wrong label and a wrong grouping, and says where."""
    bad = [
        Query('x.json: panel "Typo"', "sum(rate(fleetgate_request_total[5m]))"),
        Query("rules/x.yaml: alert WrongLabel", 'vllm:num_requests_waiting{model="m"} > 5'),
        Query('x.json: panel "Grouping"', "sum by (model) (rate(vllm:request_success_total[5m]))"),
        Query("rules/x.yaml: alert Broken", "sum(rate(up[5m]"),
        Query('x.json: panel "Fine"', 'sum by (namespace) (rate(fleetgate_requests_total{status=~"5.."}[5m]))'),
    ]
    problems = drift(bad, exported, frozenset())
    assert len(problems) == 4, problems
    assert problems[0].startswith('x.json: panel "Typo": metric fleetgate_request_total is not exported')
    assert problems[1].startswith("rules/x.yaml: alert WrongLabel: filters on label 'model', which "
                                  "vllm:num_requests_waiting does not have (it has: model_name)")
    assert problems[2].startswith('x.json: panel "Grouping": groups by label \'model\'')
    assert "not valid PromQL" in problems[3]


@pytest.mark.parametrize("chart", [GATEWAY_CHART, VLLM_CHART], ids=lambda c: c.name)
def test_service_monitors_add_the_environment_label_and_keep_the_exporters_own(chart, scrapes):
    """The queries rely on an `environment` target label; an exporter label that a target label shadows
    (the gateway's `endpoint`, `environment`) survives only with honorLabels, else it becomes exported_*."""
    manifests = render(chart, "values-production.yaml",
                       set={"model.name": "m", "model.source.pvc.claimName": "weights"} if chart == VLLM_CHART else {})
    own_labels = frozenset().union(*(labels for labels in Exported.from_scrapes(scrapes[chart.name]).labels.values()
                                     if labels))
    monitors = of_kind(manifests, "ServiceMonitor")
    assert monitors, f"{chart.name}: no ServiceMonitor in production"
    for monitor in monitors:
        for endpoint in monitor["spec"]["endpoints"]:
            where = f"{chart.name}: ServiceMonitor {monitor['metadata']['name']} port {endpoint.get('port')}"
            added = {r["targetLabel"]: r.get("replacement") for r in endpoint.get("relabelings", ())
                     if "targetLabel" in r}
            assert added.get("environment") == "production", f"{where}: no relabeling sets environment=production"
            shadowed = own_labels & (SERVICE_MONITOR_LABELS | set(added))
            assert not shadowed or endpoint.get("honorLabels") is True, \
                f"{where}: target labels {sorted(shadowed)} would rename the exporter's own to exported_*: honorLabels"
