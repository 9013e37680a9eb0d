"""The --dry-run plan of a playbook in words: what each step will do and which gates it must pass.

Kept apart from the loader so its wording can grow without crowding the format's rules.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from opsctl.rollout.playbook import Gates, Playbook, Step


def summary_line(playbook: Playbook) -> str:
    """One line saying what the playbook does, e.g. "canary of demo-chat to version 2 in production (local)"."""
    p = playbook.params
    where = f"via the {playbook.deployer} deployer" + (f", chart {playbook.chart}" if playbook.chart else "")
    if playbook.kind == "rollback":
        target = f"revision {p['to_revision']}" if p.get("to_revision") else "the previous revision"
        return f"rollback of {p['model']} in {p['env']} to {target} ({where})"
    if playbook.kind == "promote":
        return f"promotion of {p['model']} from {p['from']} to {p['to']} ({where})"
    return f"{playbook.kind} of {p['model']} to version {p['version']} in {p['env']} ({where})"


def describe_gates(gates: Gates) -> str:
    """The gates in words, e.g. "error rate ≤ 2%, p95 latency ≤ 1.5× stable + 50 ms"; a gate taken from the SLO
    says so: "p95 latency ≤ 10000 ms (from slo.toml: latency 99 % ≤ 10000 ms)"."""
    sources = gates.sources
    parts = [f"error rate ≤ {_pct(gates.max_error_rate)}"]
    if gates.max_error_rate_increase is not None:
        parts[0] += f" and ≤ stable + {_pct(gates.max_error_rate_increase)}"
    if gates.tolerated_errors:
        parts[0] += f", {gates.tolerated_errors} error{'s' if gates.tolerated_errors > 1 else ''} tolerated"
    if "max_error_rate" in sources:
        parts[0] += f" (from {sources['max_error_rate']})"
    latency = []
    if gates.max_p95_latency_ratio is not None:
        latency.append(f"≤ {gates.max_p95_latency_ratio:g}× stable + {gates.latency_slack_ms:g} ms")
    if gates.max_p95_latency_ms is not None:
        latency.append(f"≤ {gates.max_p95_latency_ms:g} ms"
                       + (f" (from {sources['max_p95_latency_ms']})" if "max_p95_latency_ms" in sources else ""))
    if latency:
        parts.append("p95 latency " + " and ".join(latency))
    if gates.max_p95_ttft_ratio is not None:
        parts.append(f"p95 TTFT ≤ {gates.max_p95_ttft_ratio:g}× stable + {gates.latency_slack_ms:g} ms")
    return ", ".join(parts)


def _pct(fraction: float) -> str:
    return f"{fraction * 100:g}%"


def _window(gates: Gates, what: str) -> str:
    return (f"analysis every {gates.interval_s:g} s until {gates.min_requests} {what} (at most "
            f"{gates.timeout_s:g} s)")


def _step_line(step: Step, playbook: Playbook) -> str:
    a, p = step.args, playbook.params
    new = "the new release"
    if step.kind == "deploy":
        if playbook.kind == "promote":
            return (f"deploy {p['model']} at the version that serves {p['from']} as a canary release in {p['to']}, "
                    f"beside stable")
        color = "green release" if playbook.kind == "blue-green" else "canary release"
        return f"deploy {p['model']} version {p['version']} as the {color} beside stable"
    if step.kind == "wait_ready":
        return f"wait until every pod of {new} answers /health (timeout {playbook.readiness_timeout_s} s)"
    if step.kind == "register":
        return f"register {new}'s endpoints in the registry, disabled, weight 0 (clients see nothing yet)"
    if step.kind == "smoke":
        kind = f"{a['kind']} requests" if a["kind"] else "requests (of the model's kind)"
        return f"smoke: {a['requests']} {kind} through the gateway to {new} (must all succeed)"
    if step.kind == "shadow":
        assert step.gates is not None
        return (f"shadow: mirror {a['percent']:g}% of live requests to {new} (replies discarded); "
                f"{_window(step.gates, 'shadow requests')}: {describe_gates(step.gates)}")
    if step.kind == "weight":
        assert step.gates is not None
        return (f"weight: {a['percent']}% of live traffic to {new}, {100 - a['percent']}% to stable; "
                f"{_window(step.gates, 'requests')}: {describe_gates(step.gates)}")
    if step.kind == "pause":
        return f"pause {a['seconds']:g} s"
    if step.kind == "finalize":
        version = f"version {p['version']}" if p.get("version") else "the new version"
        return (f"finalize: upgrade the stable release to {version}, move its endpoints, drain the old ones "
                f"(up to {a['drain_timeout_s']} s) and remove the canary release")
    if step.kind == "rollback":
        target = f"revision {a['to_revision']}" if a["to_revision"] else "its previous revision"
        return (f"rollback: return the stable release of {p['model']} in {p['env']} to {target}, sync the "
                f"registry and drain the old endpoints")
    return step.kind


def plan_lines(playbook: Playbook) -> list[str]:
    """The --dry-run plan: one numbered line per step, with its gates."""
    return [f"{i}. {_step_line(step, playbook)}" for i, step in enumerate(playbook.steps, 1)]
