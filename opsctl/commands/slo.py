"""`opsctl slo report|rules|targets`: SLOs from the lake, and the alert rules generated from the same targets.

The targets come from one TOML file (--slo-file, else the `slo_file` setting / FLEETGATE_SLO_FILE, else the
built-in ones, which equal helm/observability/slo.toml). DuckDB and the lake load inside the commands.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from opsctl.commands.lake import lake_errors
from opsctl.common import (
    EXIT_FAILED,
    CliError,
    ConfigOpt,
    Output,
    OutputOpt,
    load_cli_settings,
    new_app,
    render,
)

if TYPE_CHECKING:
    from analytics_lake.slo import SloBook

slo_app = new_app("Service level objectives: report, error budgets, burn rates, alert rules.")

SloFileOpt = Annotated[str | None, typer.Option(
    "--slo-file", help="SLO targets (TOML; default: the slo_file setting, else the built-in targets = "
                       "helm/observability/slo.toml)")]
ModelOpt = Annotated[str | None, typer.Option("--model", help="only this model")]
EnvOpt = Annotated[str | None, typer.Option("--env", help="only this environment")]
REPORT_COLUMNS = ("model", "environment", "status", "window", "availability", "avail_budget", "avail_burn",
                  "latency", "latency_budget", "latency_burn")


def slo_book(config: str | None = None, slo_file: str | None = None) -> SloBook:
    """The SLO targets the CLI uses: --slo-file, else the settings' slo_file, else the built-in ones.

    Raises:
        CliError: the file is missing or invalid (exit 2; the message names the file and the key).
    """
    from analytics_lake.slo import SloError, load_slos
    from opsctl.deploy import ENVIRONMENTS

    path = slo_file if slo_file is not None else load_cli_settings(config).slo_file
    try:
        return load_slos(path or None, environments=ENVIRONMENTS)
    except SloError as e:
        raise CliError(str(e)) from e


def _check_filters(model: str | None, env: str | None) -> None:
    from analytics_lake.slo import check_name
    from opsctl.deploy import check_environment

    if model is not None:
        check_name(model, "model")
    if env is not None:
        check_environment(env)


@slo_app.command("report")
@lake_errors
def report_command(
    model: ModelOpt = None,
    env: EnvOpt = None,
    window: Annotated[str | None, typer.Option("--window", help="every SLO over this window (e.g. 7d) instead "
                                                                "of its own (default 30d)")] = None,
    fail_on_breach: Annotated[bool, typer.Option("--fail-on-breach", help="exit 1 when an SLO's budget is "
                                                                          "overspent (for CI)")] = False,
    slo_file: SloFileOpt = None,
    config: ConfigOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """Availability and latency SLOs per model × environment from the lake: SLI, error budget left, burn rates
    over 1h / 6h / 3d, status (ok, warning: burning too fast, breach: budget overspent, no data)."""
    from analytics_lake.query import LakeQuery
    from analytics_lake.slo import check_window
    from analytics_lake.slo_report import slo_report
    from gateway.usage import lake_config

    _check_filters(model, env)
    if window is not None:
        check_window(window)
    book = slo_book(config, slo_file)
    with LakeQuery(lake_config(load_cli_settings(config))) as lake:
        rows = slo_report(lake, book, model=model, environment=env, window=window)
    if output is Output.json:
        render(rows, output)
    else:
        render([_table_row(r) for r in rows], output, columns=REPORT_COLUMNS)
    if fail_on_breach and any(r["status"] == "breach" for r in rows):
        breached = ", ".join(f"{r['model']} ({r['environment']})" for r in rows if r["status"] == "breach")
        raise CliError(f"SLO breached: {breached}", EXIT_FAILED)


@slo_app.command("rules")
@lake_errors
def rules_command(
    out: Annotated[Path | None, typer.Option("--out", help="write the rule file here (default: print it)")] = None,
    slo_file: SloFileOpt = None,
    config: ConfigOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """The Prometheus rule file of the SLOs (recording rules and multi-window burn-rate alerts), as
    helm/observability/rules/slo.yaml ships it: `opsctl slo rules --slo-file helm/observability/slo.toml
    --out helm/observability/rules/slo.yaml`."""
    from gateway.observability.metrics import LATENCY_BUCKETS
    from opsctl.slo_rules import render_rules

    text = render_rules(slo_book(config, slo_file), latency_bounds_s=LATENCY_BUCKETS)
    if out is None:
        typer.echo(text, nl=False)
        return
    try:
        out.write_text(text, encoding="utf-8")
    except OSError as e:
        raise CliError(f"cannot write {out}: {e.strerror}", EXIT_FAILED) from e
    render({"out": str(out), "records": text.count("- record: "), "alerts": text.count("- alert: ")}, output)


@slo_app.command("targets")
@lake_errors
def targets_command(
    model: ModelOpt = None,
    env: EnvOpt = None,
    slo_file: SloFileOpt = None,
    config: ConfigOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """The SLO targets: the defaults and every override, or (--model and --env) the one that applies."""
    _check_filters(model, env)
    book = slo_book(config, slo_file)
    if model is not None and env is not None:
        scope = book.scope_of(model, env)
        rows = [{"model": model, "environment": env, "slo": scope.name if scope else "defaults",
                 **book.slo_for(model, env).to_dict(), "source": book.origin}]
    else:
        rows = [{"model": "*", "environment": "*", "slo": "defaults", **book.defaults.to_dict(),
                 "source": book.origin}]
        rows += [{"model": o.model, "environment": o.environment, "slo": o.name, **book.slo_of(o).to_dict(),
                  "source": book.origin} for o in book.overrides if o.matches(model, env)]
    render(rows, output)


# --- table formatting ---------------------------------------------------------------------------------------------

def _table_row(row: dict[str, Any]) -> dict[str, str]:
    availability, latency = row["availability"], row["latency"]
    threshold = _duration(latency["threshold_ms"])
    return {"model": row["model"], "environment": row["environment"] or "-", "status": row["status"],
            "window": row["window"],
            "availability": f"{_pct(availability['sli'])} (SLO {_pct(availability['target'])})",
            "avail_budget": _left(availability["budget_remaining"]), "avail_burn": _burns(availability),
            "latency": f"{_pct(latency['sli'])} ≤ {threshold} (SLO {_pct(latency['target'])})",
            "latency_budget": _left(latency["budget_remaining"]), "latency_burn": _burns(latency)}


def _pct(share: float | None) -> str:
    if share is None:
        return "no data"
    text = f"{share * 100:.3f}".rstrip("0").rstrip(".")
    return f"{text}%"


def _left(remaining: float | None) -> str:
    if remaining is None:
        return "no data"
    text = f"{remaining * 100:.1f}%".replace(".0%", "%")
    return f"{text} left" if remaining >= 0 else f"{text} (overspent)"


def _burns(objective: dict[str, Any]) -> str:
    return " ".join(f"{name} {'-' if rate is None else f'{rate:.2f}'.rstrip('0').rstrip('.') + 'x'}"
                    for name, rate in objective["burn_rate"].items())


def _duration(ms: float) -> str:
    return f"{ms / 1000:g} s" if ms >= 1000 else f"{ms:g} ms"
