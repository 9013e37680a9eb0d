"""The Prometheus rule file of the SLOs (helm/observability/rules/slo.yaml), generated from the SLO targets.

Recording rules per model and environment for both SLIs over every window the alerts read, and the multi-window
multi-burn-rate alerts of analytics_lake.slo.BURN_ALERTS. Overrides become label matchers: each alert (and each
latency SLI whose threshold differs) covers the pairs its scope matches, `unless` an earlier override took them,
so every series is judged by exactly the SLO the report gives it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from analytics_lake.slo import AVAILABILITY, BURN_ALERTS, LATENCY, BurnAlert, Override, Slo, SloBook, SloError

WINDOWS = ("5m", "30m", "1h", "6h", "3d")  # every window a burn tier reads, shortest first
ERRORS = "fleetgate:request_errors:ratio_rate"
SLOW = "fleetgate:request_slow:ratio_rate"
REQUESTS = "fleetgate_requests_total"
DURATION = "fleetgate_request_duration_seconds"
ALERT_NAMES = {AVAILABILITY: "FleetgateAvailabilityBudgetBurn", LATENCY: "FleetgateLatencyBudgetBurn"}
_WORDS = {"5m": "5 minutes", "30m": "30 minutes", "1h": "hour", "6h": "6 hours", "3d": "3 days"}


@dataclass(frozen=True)
class _Scope:
    """The pairs one SLO applies to: those `matchers` select, minus those an earlier scope took (`excluded`)."""

    name: str
    slo: Slo
    matchers: str  # 'model=~"embed-.*"' (empty: every pair)
    excluded: tuple[str, ...]  # matchers of the earlier overrides

    def select(self, metric: str, extra: str = "") -> str:
        inner = ", ".join(m for m in (extra, self.matchers) if m)
        return f"{metric}{{{inner}}}" if inner else metric

    def unless(self, metric: str) -> str:
        return "".join(f"\nunless on (model, environment) {metric}{{{m}}}" if m else
                       f"\nunless on (model, environment) {metric}" for m in self.excluded)


def render_rules(book: SloBook, *, latency_bounds_s: Sequence[float]) -> str:
    """The rule file's text for `book`.

    Args:
        book: the SLO targets.
        latency_bounds_s: the bucket bounds of fleetgate_request_duration_seconds (gateway LATENCY_BUCKETS):
            every latency threshold must be one, or Prometheus cannot count the requests above it.

    Raises:
        SloError: a latency threshold that is not a bucket bound (naming the file and the key).
    """
    scopes = _scopes(book)
    les = {scope.name: _le(scope, book.origin, latency_bounds_s) for scope in scopes}
    lines = _header(book, scopes, les)
    lines += ["groups:", "  - name: fleetgate-slo", "    rules:",
              "      # SLI: fraction of eligible requests (4xx, 429 and 499 spend no budget) answered with a 5xx.",
              "      # The `or 0 *` branch gives a pair with eligible traffic but no error yet an explicit 0."]
    for window in WINDOWS:
        lines += _rule("record", f"{ERRORS}{window}", _errors_expr(window))
    lines += ["", "      # SLI: fraction of requests slower than the latency threshold (end to end, as the client saw "
                  "them)."]
    if len({les[s.name] for s in scopes}) == 1:
        everything = _Scope("all", scopes[-1].slo, "", ())
        for window in WINDOWS:
            lines += _rule("record", f"{SLOW}{window}", _slow_expr(everything, les[scopes[-1].name], window))
    else:  # thresholds differ: one rule per scope, on the pairs it covers (their series never overlap)
        for scope in scopes:
            for window in WINDOWS:
                lines += _rule("record", f"{SLOW}{window}", _slow_expr(scope, les[scope.name], window))
    for kind in (AVAILABILITY, LATENCY):
        alert_scopes = _alert_scopes(scopes, kind)
        for tier in BURN_ALERTS:
            lines.append("")
            for scope in alert_scopes:
                lines += _alert(kind, tier, scope)
    return "\n".join(lines) + "\n"


# --- scopes -------------------------------------------------------------------------------------------------------

def _scopes(book: SloBook) -> list[_Scope]:
    """One scope per override, in file order, then the defaults (every pair no override took)."""
    scopes, earlier = [], []
    for override, slo in book.scopes():
        matchers = "" if override is None else _matchers(override)
        name = "defaults" if override is None else override.name
        scopes.append(_Scope(name, slo, matchers, tuple(earlier)))
        if override is not None:
            earlier.append(matchers)
    return scopes


def _alert_scopes(scopes: list[_Scope], kind: str) -> list[_Scope]:
    """The scopes whose alerts differ: all of them, or one covering every pair when they agree on `kind`."""
    def key(scope: _Scope) -> tuple:
        slo = scope.slo
        return (slo.window, slo.target(kind), slo.latency_threshold_ms if kind == LATENCY else None)

    if len({key(s) for s in scopes}) == 1:
        return [_Scope("all", scopes[-1].slo, "", ())]
    return scopes


def _matchers(override: Override) -> str:
    parts = []
    for label, pattern in (("model", override.model), ("environment", override.environment)):
        if pattern == "*":
            continue
        if "*" not in pattern:
            parts.append(f"{label}={json.dumps(pattern)}")
        else:  # a glob as an RE2 regex (Prometheus anchors it): "*" → ".*", "." and others literal
            regex = "".join(".*" if c == "*" else f"[{c}]" if c in ".+" else c for c in pattern)
            parts.append(f"{label}=~{json.dumps(regex)}")
    return ", ".join(parts)


def _le(scope: _Scope, origin: str, bounds_s: Sequence[float]) -> str:
    from prometheus_client.utils import floatToGoString

    seconds = scope.slo.latency_threshold_ms / 1000
    for bound in bounds_s:
        if abs(bound - seconds) <= 1e-9 * max(bound, seconds):
            return floatToGoString(bound)
    shown = ", ".join(_duration_text(b * 1000) for b in bounds_s)
    raise SloError(f"{origin}: {scope.name}.latency_threshold_ms: {scope.slo.latency_threshold_ms:g} ms is not a "
                   f"bucket bound of {DURATION} ({shown}): the alerts could not count the requests above it")


# --- expressions --------------------------------------------------------------------------------------------------

def _errors_expr(window: str) -> str:
    eligible = f'sum by (model, environment) (rate({REQUESTS}{{status!~"4.."}}[{window}]))'
    return (f"(\n  sum by (model, environment) (rate({REQUESTS}{{status=~\"5..\"}}[{window}]))\n"
            f"  or 0 * {eligible}\n)\n/ {eligible}")


def _slow_expr(scope: _Scope, le: str, window: str) -> str:
    fast = f"sum by (model, environment) (rate({scope.select(DURATION + '_bucket', f'le={json.dumps(le)}')}[{window}]))"
    total = f"sum by (model, environment) (rate({scope.select(DURATION + '_count')}[{window}]))"
    return f"1 - (\n  {fast}\n  / {total}\n){scope.unless(DURATION + '_count')}"


def _alert(kind: str, tier: BurnAlert, scope: _Scope) -> list[str]:
    slo, sli = scope.slo, ERRORS if kind == AVAILABILITY else SLOW
    budget = slo.availability_budget if kind == AVAILABILITY else slo.latency_budget
    limit = f"({tier.factor:g} * {float(budget)!r})"
    burn = (f"{scope.select(sli + tier.long)} > {limit}\n"
            f"and {scope.select(sli + tier.short)} > {limit}")
    expr = f"(\n{_indent(burn)}\n){scope.unless(sli + tier.long)}" if scope.excluded else burn
    lines = _rule("alert", ALERT_NAMES[kind], expr)
    lines += [f"        for: {tier.for_}", "        labels:", f"          severity: {tier.severity}",
              f"          slo: {kind}", "        annotations:"]
    for key, text in (("summary", _summary(kind, tier)), ("description", _description(kind, tier, slo)),
                      ("runbook_url", f"docs/runbooks.md#{ALERT_NAMES[kind].lower()}")):
        lines.append(f"          {key}: {json.dumps(text, ensure_ascii=False)}")
    return lines


def _rule(field: str, name: str, expr: str) -> list[str]:
    return [f"      - {field}: {name}", "        expr: |", *(f"          {line}" for line in expr.splitlines())]


def _indent(text: str) -> str:
    return "\n".join(f"  {line}" for line in text.splitlines())


# --- words ----------------------------------------------------------------------------------------------------------

def _summary(kind: str, tier: BurnAlert) -> str:
    who = "{{ $labels.model }}{{ with $labels.environment }} ({{ . }}){{ end }}"
    if tier.factor == 1:
        return f"{who} is on course to overspend its {kind} budget"
    return f"{who} burns its {kind} budget {tier.factor:g}x too fast"


def _description(kind: str, tier: BurnAlert, slo: Slo) -> str:
    span = slo.window_delta
    hours_left = span.total_seconds() / 3600 / tier.factor
    days = f"{span.days}-day" if span.total_seconds() % 86400 == 0 else f"{span.total_seconds() / 3600:g}-hour"
    if kind == AVAILABILITY:
        what, objective, budget = "failed with a 5xx", f"SLO {_percent(slo.availability_target)} %", "error budget"
    else:
        threshold = _duration_text(slo.latency_threshold_ms)
        what, budget = f"took longer than {threshold}", "budget"
        objective = f"SLO {_percent(slo.latency_target)} % within {threshold}"
    if tier.factor == 1:
        outlook = f"at this rate the {days} {budget} is all spent before the window ends"
    else:
        gone = f"{round(hours_left / 24)} days" if hours_left >= 48 else f"{round(hours_left)} hours"
        outlook = f"at this rate the {days} {budget} is gone in {gone}"
    return (f"{{{{ $value | humanizePercentage }}}} of requests {what} over the last {_WORDS[tier.long]}, and still "
            f"do over the last {_WORDS[tier.short]} ({objective}): {outlook}.")


def _percent(share: float) -> str:
    return format((Decimal(repr(share)) * 100).normalize(), "f")


def _duration_text(ms: float) -> str:
    return f"{ms / 1000:g} s" if ms >= 1000 else f"{ms:g} ms"


def _header(book: SloBook, scopes: list[_Scope], les: dict[str, str]) -> list[str]:
    source = f"the targets in {Path(book.origin).name}" if book.origin != "built-in SLO targets" else \
        "the built-in SLO targets"
    lines = [f"# GENERATED by `opsctl slo rules` from {source}: edit those and regenerate, not this file",
             "# (docs/slo.md; tests/helm/test_slo_rules.py checks that the two agree).",
             "#",
             "# Fleetgate SLOs, per model and environment, with multi-window multi-burn-rate alerts",
             "# (Google SRE workbook, \"Alerting on SLOs\", recipe 6).",
             "#"]
    for scope in [scopes[-1], *scopes[:-1]]:  # the defaults first, then the overrides in file order
        slo = scope.slo
        title = "defaults" if scope.name == "defaults" else f"{scope.name} ({scope.matchers or 'every pair'})"
        lines += [f"# {title}, over {slo.window}:",
                  f"#   availability: {_percent(slo.availability_target)} % of eligible requests end without a "
                  f"5xx  -> error budget {float(slo.availability_budget)!r}",
                  f"#   latency:      {_percent(slo.latency_target)} % of requests complete within "
                  f"{_duration_text(slo.latency_threshold_ms)}  -> error budget {float(slo.latency_budget)!r}",
                  f"#                 (a bucket bound of {DURATION}: le=\"{les[scope.name]}\")"]
    if len(scopes) > 1:
        lines.append("# The first override that matches a pair applies to it; the defaults to the rest.")
    lines += ["#"]
    for tier in BURN_ALERTS:
        lines.append(f"# {tier.severity}: the error ratio over {tier.long} and over {tier.short} both exceed "
                     f"{tier.factor:g} x the budget (for {tier.for_}).")
    lines += ["# The short window makes an alert stop soon after the burn stops.",
              "#",
              "# `environment` is the registry environment the gateway labels fleetgate_requests_total and",
              "# fleetgate_request_duration_seconds with, or a target label (added by the ServiceMonitor's",
              "# relabeling) on series that lack one (requests no route matched). Without either, the SLIs",
              "# aggregate per model with an empty environment.",
              "# 4xx answers (bad keys, rate limits, budgets) and 499 (client went away) spend no availability budget.",
              "# The latency SLI counts every answered request: the histogram has no status label (the lake's",
              "# report counts successful requests only; docs/slo.md)."]
    return lines
