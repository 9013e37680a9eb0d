"""Registry screen: models and their endpoints, enable / disable / drain with a confirmation, health history.

k9s-like: a models table above the selected model's endpoints, and a details pane with the selected
endpoint's prober view and recent health transitions (`GET /admin/v1/endpoints/{id}/health`). `/`
filters by model, environment, URL or release. Live `registry` and `health` events update the rows
at once; the periodic refresh reads the registry, the selected model's live routing state
(`/admin/v1/analysis`) and the selected endpoint's health.
"""

from __future__ import annotations

from typing import Any, ClassVar
from urllib.parse import quote

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.widgets import DataTable, Footer, Header, Input, Static

from gateway.errors import FleetgateError
from tui.messages import FleetEvent
from tui.screens.base import FleetScreen, PaletteAction
from tui.widgets import registry_view as view
from tui.widgets.status import Freshness

# action → (endpoint status sent, verb shown)
STATUS_ACTIONS: dict[str, tuple[str, str]] = {
    "enable": ("ready", "Enable"),
    "disable": ("disabled", "Disable"),
    "drain": ("draining", "Drain"),
}


class RegistryScreen(FleetScreen):
    """Models × environments and their endpoints; the selection drives what the refresh reads."""

    TITLE = "Registry"
    MUTATING_ACTIONS: ClassVar[frozenset[str]] = frozenset(STATUS_ACTIONS)
    BINDINGS: ClassVar[list[Binding]] = [
        Binding("slash", "filter", "Filter"),
        Binding("escape", "clear_filter", "Clear filter", show=False),
        Binding("e", "enable", "Enable"),
        Binding("d", "disable", "Disable"),
        Binding("x", "drain", "Drain"),
    ]
    DEFAULT_CSS = """
    RegistryScreen #registry-filter { display: none; height: 3; }
    RegistryScreen #registry-filter.-active { display: block; }
    RegistryScreen DataTable { border: round $primary 50%; }
    RegistryScreen DataTable:focus { border: round $primary; }
    RegistryScreen #registry-models { height: auto; max-height: 12; }
    RegistryScreen #registry-endpoints { height: 1fr; min-height: 6; }
    RegistryScreen #registry-details { height: 14; border: round $secondary 50%; padding: 0 1; }
    """

    def __init__(self) -> None:
        super().__init__()
        self._data: dict[str, Any] | None = None
        self._model_key: view.ModelKey | None = None
        self._endpoint_id: str | None = None
        self._filter = ""

    def compose(self) -> ComposeResult:
        yield Header()
        yield Freshness()
        yield Input(placeholder="filter: model, environment, URL or release (escape clears)", id="registry-filter")
        models = DataTable(id="registry-models", cursor_type="row", zebra_stripes=True)
        models.border_title = "Models"
        models.add_columns(*view.MODEL_COLUMNS)
        yield models
        endpoints = DataTable(id="registry-endpoints", cursor_type="row", zebra_stripes=True)
        endpoints.border_title = "Endpoints"
        endpoints.add_columns(*view.ENDPOINT_COLUMNS)
        yield endpoints
        details = VerticalScroll(Static(id="registry-details-body"), id="registry-details")
        details.border_title = "Health"
        yield details
        yield Footer()

    def on_mount(self) -> None:
        super().on_mount()
        self.query_one("#registry-models", DataTable).focus()

    # -- data --------------------------------------------------------------------------------------

    def fetch(self) -> dict[str, Any]:
        """The registry, plus live routing state and health of what is selected (read in this thread)."""
        model_key, endpoint_id = self._model_key, self._endpoint_id
        data: dict[str, Any] = {"models": self.source.get("/admin/v1/models"), "model": model_key,
                                "analysis": None, "endpoint": endpoint_id, "health": None, "health_error": None}
        if model_key is not None:
            try:
                data["analysis"] = self.source.get("/admin/v1/analysis", model=model_key[0], env=model_key[1])
            except FleetgateError as e:  # e.g. the model was just deregistered: the next refresh moves on
                data["analysis_error"] = self.fleet_app.describe_error(e)
        if endpoint_id is not None:
            try:
                data["health"] = self.source.get(f"/admin/v1/endpoints/{quote(endpoint_id, safe='')}/health")
            except FleetgateError as e:
                data["health_error"] = self.fleet_app.describe_error(e)
        return data

    def show(self, data: dict[str, Any]) -> None:
        self._data = data
        self._redraw()

    def _redraw(self) -> None:
        """Draw the tables and the details from the last data; fetch again if the selection moved."""
        if self._data is None:
            return
        moved = self._render_models()
        moved = self._render_endpoints() or moved
        self._render_details()
        if moved:
            self.refresh_data()

    def _models_by_key(self) -> dict[str, dict[str, Any]]:
        models = view.visible_models(self._data["models"] if self._data else (), self._filter)
        return {view.row_key(view.model_key(m)): m for m in models}

    def _selected_model(self) -> dict[str, Any] | None:
        if self._model_key is None:
            return None
        return self._models_by_key().get(view.row_key(self._model_key))

    def _selected_endpoint(self) -> tuple[dict[str, Any], dict[str, Any]] | None:
        model = self._selected_model()
        if model is None or self._endpoint_id is None:
            return None
        endpoint = next((e for e in model.get("endpoints") or () if e["id"] == self._endpoint_id), None)
        return (model, endpoint) if endpoint is not None else None

    def _render_models(self) -> bool:
        by_key = self._models_by_key()
        table = self.query_one("#registry-models", DataTable)
        selected = view.row_key(self._model_key) if self._model_key else None
        key = view.sync_table(table, [(k, view.model_row(m)) for k, m in by_key.items()], selected)
        new = view.model_key(by_key[key]) if key is not None else None
        if new == self._model_key:
            return False
        self._model_key, self._endpoint_id = new, None
        return True

    def _render_endpoints(self) -> bool:
        model = self._selected_model()
        live: dict[str, dict[str, Any]] = {}
        analysis = self._data.get("analysis") if self._data else None
        if analysis and self._data and self._data.get("model") == self._model_key:
            live = {e["id"]: e for e in analysis.get("endpoints") or ()}
        rows = [(e["id"], view.endpoint_row(e, live.get(e["id"]))) for e in view.visible_endpoints(model, self._filter)]
        table = self.query_one("#registry-endpoints", DataTable)
        table.border_title = f"Endpoints of {model['name']} · {model['environment']}" if model else "Endpoints"
        key = view.sync_table(table, rows, self._endpoint_id)
        if key == self._endpoint_id:
            return False
        self._endpoint_id = key
        return True

    def _render_details(self) -> None:
        selected = self._selected_endpoint()
        endpoint = selected[1] if selected else None
        health = error = None
        if self._data is not None and self._data.get("endpoint") == self._endpoint_id:
            health, error = self._data.get("health"), self._data.get("health_error")
        self.query_one("#registry-details-body", Static).update(view.details(endpoint, health, error))

    # -- selection and filter ---------------------------------------------------------------------

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        """The operator moved a cursor (stale highlights from a table rebuild are ignored)."""
        table = event.data_table
        if event.cursor_row != table.cursor_row or event.row_key.value is None:
            return
        key = str(event.row_key.value)
        if table.id == "registry-models":
            model = self._models_by_key().get(key)
            if model is None or view.model_key(model) == self._model_key:
                return
            self._model_key, self._endpoint_id = view.model_key(model), None
        elif key != self._endpoint_id:
            self._endpoint_id = key
        else:
            return
        self._redraw()
        self.refresh_data()

    def action_filter(self) -> None:
        box = self.query_one("#registry-filter", Input)
        box.add_class("-active")
        box.focus()

    def action_clear_filter(self) -> None:
        box = self.query_one("#registry-filter", Input)
        box.remove_class("-active")
        box.value = ""  # Input.Changed re-renders
        self.query_one("#registry-models", DataTable).focus()

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id == "registry-filter":
            self._filter = event.value
            self._redraw()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id == "registry-filter":
            self.query_one("#registry-endpoints", DataTable).focus()

    # -- live events ------------------------------------------------------------------------------

    def on_fleet_event(self, event: FleetEvent) -> None:
        """`health`: patch the endpoint's status at once; `registry`: re-read now. Both then refresh."""
        if event.type not in ("registry", "health"):
            return
        if event.type == "health" and self._data is not None:
            for model in self._data["models"]:
                for endpoint in model.get("endpoints") or ():
                    if endpoint["id"] == event.data.get("endpoint_id"):
                        endpoint["status"] = event.data.get("status", endpoint["status"])
                        endpoint["last_health"] = event.data.get("detail", endpoint.get("last_health"))
            self._redraw()
        if self.is_current:  # a hidden screen re-reads when it is shown again
            self.refresh_data()

    # -- actions ----------------------------------------------------------------------------------

    def action_enable(self) -> None:
        self._change_status("enable")

    def action_disable(self) -> None:
        self._change_status("disable")

    def action_drain(self) -> None:
        self._change_status("drain")

    def _change_status(self, action: str) -> None:
        """Ask, naming the endpoint, then PATCH its status (a worker; errors become notifications)."""
        selected = self._selected_endpoint()
        if selected is None:
            self.notify("Select an endpoint first.", severity="warning")
            return
        model, endpoint = selected
        status, verb = STATUS_ACTIONS[action]
        endpoint_id, url = endpoint["id"], endpoint["url"]
        question = f"{verb} endpoint {endpoint_id}\n{url}\nof {model['name']} · {model['environment']}?"

        def run() -> None:
            self.run_action(f"{verb} {endpoint_id}", self.source.request, "PATCH",
                            f"/admin/v1/endpoints/{quote(endpoint_id, safe='')}", {"status": status},
                            done=lambda answer: self.notify(f"{endpoint_id} is now {answer.get('status', status)}",
                                                            title=f"{verb} {endpoint_id}"))

        self.confirm(question, run, confirm_label=verb)

    def palette_actions(self) -> list[PaletteAction]:
        actions = [PaletteAction("Registry: filter", "Filter models and endpoints (/)", self.action_filter)]
        selected = self._selected_endpoint()
        if selected is not None:
            endpoint_id = selected[1]["id"]
            for action, (_, verb) in STATUS_ACTIONS.items():
                actions.append(PaletteAction(f"Registry: {verb.lower()} endpoint {endpoint_id}",
                                             f"{verb} {selected[1]['url']} (asks first)",
                                             getattr(self, f"action_{action}"), mutating=True))
        return actions
