"""How the registry screen turns admin API answers into table rows and the details pane.

Pure functions over the JSON the gateway returns (`/admin/v1/models`, `/admin/v1/analysis`,
`/admin/v1/endpoints/{id}/health`), so the screen stays about widgets and keys, and these are
testable without an app. Nothing is computed beyond counting and picking fields to show.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual.widgets import DataTable

ModelKey = tuple[str, str]  # (name, environment)

MODEL_COLUMNS = ("model", "env", "status", "ready/total")
ENDPOINT_COLUMNS = ("id", "url", "release", "status", "weight", "mirror %", "probe", "in flight")
STATUS_STYLE = {"ready": "green", "active": "green", "disabled": "red", "draining": "yellow", "unhealthy": "bold red"}


def model_key(model: dict[str, Any]) -> ModelKey:
    return (str(model["name"]), str(model["environment"]))


def row_key(key: ModelKey) -> str:
    """A DataTable row key for a model (names may hold '/', environments may not)."""
    return f"{key[1]}/{key[0]}"


def _styled(status: str) -> Text:
    return Text(status, style=STATUS_STYLE.get(status, ""))


def _matches(needle: str, *values: Any) -> bool:
    return any(needle in str(v).lower() for v in values if v is not None)


def model_matches(model: dict[str, Any], needle: str) -> bool:
    """A model passes the filter by its name or environment, or by any endpoint's URL or release."""
    if not needle or _matches(needle, model["name"], model["environment"]):
        return True
    return any(endpoint_matches(model, e, needle) for e in model.get("endpoints") or ())


def endpoint_matches(model: dict[str, Any], endpoint: dict[str, Any], needle: str) -> bool:
    """Every endpoint of a model matched by name or environment; otherwise those whose URL or release match."""
    if not needle or _matches(needle, model["name"], model["environment"]):
        return True
    return _matches(needle, endpoint.get("url"), endpoint.get("release"))


def visible_models(models: Iterable[dict[str, Any]], needle: str) -> list[dict[str, Any]]:
    needle = needle.strip().lower()
    return [m for m in models if model_matches(m, needle)]


def visible_endpoints(model: dict[str, Any] | None, needle: str) -> list[dict[str, Any]]:
    if model is None:
        return []
    needle = needle.strip().lower()
    return [e for e in model.get("endpoints") or () if endpoint_matches(model, e, needle)]


def model_row(model: dict[str, Any]) -> tuple[Any, ...]:
    endpoints = model.get("endpoints") or ()
    ready = sum(1 for e in endpoints if e.get("status") == "ready")
    return (model["name"], model["environment"], _styled(str(model.get("status", ""))), f"{ready}/{len(endpoints)}")


def probe_cell(live: dict[str, Any] | None) -> Text:
    """This gateway worker's live verdict: healthy, UNHEALTHY, ejected (passive), or ? before it is known."""
    if live is None or not live.get("routed", True):
        return Text("?", style="dim")
    if live.get("ejected"):
        return Text("ejected", style="bold yellow")
    if live.get("healthy") is False:
        return Text("UNHEALTHY", style="bold red")
    return Text("healthy", style="green")


def endpoint_row(endpoint: dict[str, Any], live: dict[str, Any] | None) -> tuple[Any, ...]:
    in_flight = live.get("in_flight") if live else None
    return (endpoint["id"], endpoint["url"], endpoint.get("release", ""), _styled(str(endpoint.get("status", ""))),
            str(endpoint.get("weight", "")), f"{float(endpoint.get('mirror_percent') or 0):g}", probe_cell(live),
            "" if in_flight is None else str(in_flight))


def sync_table(table: DataTable, rows: Sequence[tuple[str, tuple[Any, ...]]], selected: str | None) -> str | None:
    """Show `rows` (key, cells), keeping the cursor on `selected` when it is still there.

    Rows are updated in place when the keys are unchanged (no flicker, no cursor jump); otherwise
    the table is rebuilt. Returns the key under the cursor afterwards (None: the table is empty).
    """
    keys = [key for key, _ in rows]
    current = [str(k.value) for k in table.rows]
    if keys == current:
        columns = list(table.columns)
        for key, cells in rows:
            for column, cell in zip(columns, cells, strict=True):
                table.update_cell(key, column, cell, update_width=True)
    else:
        table.clear()
        for key, cells in rows:
            table.add_row(*cells, key=key)
    if not keys:
        return None
    index = keys.index(selected) if selected in keys else 0
    if table.cursor_row != index:
        table.move_cursor(row=index, animate=False)
    return keys[index]


def _clock(value: str | None) -> str:
    """An ISO time as HH:MM:SS in the zone the gateway gave (UTC), or '-'."""
    if not value:
        return "-"
    try:
        return datetime.fromisoformat(value).strftime("%H:%M:%S")
    except ValueError:
        return value[:19]


def _figure(value: Any, fmt: str = "{:g}") -> str:
    return "-" if value is None else fmt.format(value)


def details(endpoint: dict[str, Any] | None, health: dict[str, Any] | None, error: str | None = None) -> Any:
    """The details pane: the endpoint's record, this worker's prober view, and its health history."""
    if endpoint is None:
        return Text("No endpoint selected.", style="dim")
    head = Text.assemble((endpoint["id"], "bold"), "  ", endpoint["url"], "  release ", endpoint.get("release", ""),
                         "  weight ", str(endpoint.get("weight", "")), "  status ",
                         _styled(str(endpoint.get("status", ""))))
    last = Text(f"last probe {_clock(endpoint.get('last_checked_at'))}: {endpoint.get('last_health') or '-'}",
                style="dim")
    if error:
        return Group(head, last, Text(f"health history unavailable: {error}", style="yellow"))
    if health is None:
        return Group(head, last, Text("loading health history…", style="dim"))
    current = health.get("current") or {}
    view = Text.assemble("prober (worker ", str(health.get("worker", "?")), "): ", probe_cell(current),
                         f"  in flight {_figure(current.get('in_flight'))}",
                         f"  probe failures {_figure(current.get('probe_failures'))}",
                         f"  waiting {_figure(current.get('waiting'))}",
                         f"  running {_figure(current.get('running'))}",
                         f"  kv {_figure(current.get('kv_usage'), '{:.0%}')}",
                         f"  serves {current.get('served_model') or '-'}")
    return Group(head, last, view, history_table(health.get("history") or ()))


def history_table(history: Sequence[dict[str, Any]]) -> Table | Text:
    if not history:
        return Text("no health transitions seen by this worker yet", style="dim")
    table = Table(box=None, padding=(0, 1), show_edge=False, header_style="bold", expand=True)
    for name in ("time", "source", "status", "probe", "detail"):
        table.add_column(name, no_wrap=name != "detail", ratio=4 if name == "detail" else None)
    for entry in history:
        probe = probe_cell({"healthy": entry.get("healthy"), "ejected": entry.get("ejected")})
        detail = entry.get("detail") or ""
        if entry.get("latency_ms") is not None:
            detail = f"{detail} ({entry['latency_ms']:.0f} ms)".strip()
        table.add_row(_clock(entry.get("at")), str(entry.get("source", "")), _styled(str(entry.get("status", ""))),
                      probe, detail)
    return table
