"""Screen 5, orgs · keys · budgets: who may call the gateway, with which key, and how much they may spend.

Organizations with their budget gauges (green below the soft limit, yellow past it, red when the
gateway refuses), the API keys of the selected organization, and the actions an operator takes
there: new org (`n`), new key (`k`, secret shown once), revoke (`v`), set a budget (`b`).
Everything shown is the admin API's answer; the gauges' colours are the gateway's own verdicts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import DataTable, Footer, Header, Static

from tui.screens.base import FleetScreen, PaletteAction
from tui.widgets.budget_gauge import BudgetGauge, gauge_text
from tui.widgets.org_form import FormField, OrgFormScreen
from tui.widgets.org_secret import KeySecretScreen
from tui.widgets.org_table_sync import Row, SyncedTable, cursor_key, sync_rows
from tui.widgets.status import Freshness

ORG_COLUMNS = (("name", "Organization"), ("id", "ID"), ("rpm", "RPM"), ("tpm", "TPM"), ("keys", "Keys"),
               ("budget", "Budget spent/limit"))
KEY_COLUMNS = (("id", "ID"), ("name", "Name"), ("prefix", "Prefix"), ("status", "Status"),
               ("created", "Created"), ("expires", "Expires"), ("rpm", "RPM"), ("tpm", "TPM"),
               ("models", "Models"), ("env", "Env"))
BUDGETS_TITLE = "Budgets  [green]■[/] ok [yellow]■[/] ≥ soft [red]■[/] refused"
PERIODS = (("monthly", "monthly"), ("daily", "daily"), ("total", "total"))


@dataclass
class OrgsData:
    """One refresh: every org, every key (never a secret: list answers hold none) and budget statuses."""

    orgs: list[dict[str, Any]]
    keys: list[dict[str, Any]]
    budgets: list[dict[str, Any]] = field(default_factory=list)

    def keys_of(self, org_id: str | None) -> list[dict[str, Any]]:
        return [k for k in self.keys if k["org_id"] == org_id]

    def budget_of(self, org_id: str, key_id: str | None = None) -> dict[str, Any] | None:
        for budget in self.budgets:
            if budget["org_id"] == org_id and budget.get("key_id") == key_id:
                return budget
        return None

    def org(self, org_id: str | None) -> dict[str, Any] | None:
        return next((o for o in self.orgs if o["id"] == org_id), None)


def _limit(value: Any) -> str:
    return "—" if value is None else f"{value:,}"


def _when(value: str | None) -> str:
    """`2026-11-30 18:30` from an ISO timestamp (UTC, as the API gives it)."""
    return value[:16].replace("T", " ") if value else "—"


def _key_status(key: dict[str, Any]) -> Text:
    status = str(key.get("status", ""))
    return Text(status, style="green" if status == "active" else "red")


class OrgsScreen(FleetScreen):
    """Organizations, their keys and budgets; create, revoke and set budgets through forms."""

    TITLE = "Orgs & keys"
    MUTATING_ACTIONS: ClassVar[frozenset[str]] = frozenset({"new_org", "new_key", "revoke_key", "set_budget"})
    BINDINGS = [
        Binding("n", "new_org", "New org"),
        Binding("k", "new_key", "New key"),
        Binding("v", "revoke_key", "Revoke key"),
        Binding("b", "set_budget", "Set budget"),
        Binding("r", "refresh", "Refresh"),
    ]
    DEFAULT_CSS = """
    OrgsScreen #orgs-top {
        height: 1fr;
    }
    OrgsScreen #orgs-table {
        width: 1fr;
    }
    OrgsScreen #gauges {
        width: 36;
        border-left: solid $primary 50%;
        padding: 0 1;
    }
    OrgsScreen #gauges-title, OrgsScreen #keys-title {
        text-style: bold;
        height: 1;
        padding: 0 1;
        background: $boost;
    }
    OrgsScreen #gauges-title {
        padding: 0;
    }
    OrgsScreen #keys-pane {
        height: 1fr;
    }
    OrgsScreen #keys-table {
        height: 1fr;
    }
    OrgsScreen BudgetGauge.-none {
        color: $text-muted;
    }
    """

    def __init__(self) -> None:
        super().__init__()
        self.data: OrgsData | None = None
        self.selected_org: str | None = None

    def compose(self) -> ComposeResult:
        yield Header()
        yield Freshness()
        with Horizontal(id="orgs-top"):
            yield SyncedTable(id="orgs-table", cursor_type="row", zebra_stripes=True)
            with VerticalScroll(id="gauges"):
                yield Static(BUDGETS_TITLE, id="gauges-title")
        with Vertical(id="keys-pane"):
            yield Static("Keys", id="keys-title")
            yield SyncedTable(id="keys-table", cursor_type="row", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        for table_id, columns in (("#orgs-table", ORG_COLUMNS), ("#keys-table", KEY_COLUMNS)):
            table = self.query_one(table_id, DataTable)
            for key, label in columns:
                table.add_column(label, key=key)
        self.query_one("#orgs-table", DataTable).focus()
        super().on_mount()

    # -- data ----------------------------------------------------------------------------------

    def fetch(self) -> OrgsData:
        """Orgs, keys and budgets, and the live status of each org that has a budget."""
        orgs = self.source.get("/admin/v1/organizations")
        keys = self.source.get("/admin/v1/api-keys")
        budgeted = sorted({b["org_id"] for b in self.source.get("/admin/v1/budgets")})
        statuses: list[dict[str, Any]] = []
        for org_id in budgeted:
            statuses.extend(self.source.get(f"/admin/v1/budgets/{org_id}"))
        return OrgsData(orgs=orgs, keys=keys, budgets=statuses)

    def show(self, data: OrgsData) -> None:
        self.data = data
        if data.org(self.selected_org) is None:
            self.selected_org = data.orgs[0]["id"] if data.orgs else None
        sync_rows(self.query_one("#orgs-table", DataTable), self._org_rows(data), keep=self.selected_org)
        self._show_gauges(data)
        self._show_keys()

    def _org_rows(self, data: OrgsData) -> list[Row]:
        rows: list[Row] = []
        for org in data.orgs:
            keys = data.keys_of(org["id"])
            active = sum(1 for k in keys if k.get("status") == "active")
            rows.append((org["id"], (org["name"], org["id"], _limit(org.get("rpm_limit")),
                                     _limit(org.get("tpm_limit")), f"{active}/{len(keys)}",
                                     gauge_text(data.budget_of(org["id"]), width=6, period=False))))
        return rows

    def _show_gauges(self, data: OrgsData) -> None:
        """One gauge per budget (org-wide first, then per key); rebuilt only when budgets come or go."""
        panel = self.query_one("#gauges", VerticalScroll)
        gauges = {g.id: g for g in panel.query(BudgetGauge)}
        wanted = [(f"gauge-{b['id']}", self._gauge_label(data, b), b)
                  for b in sorted(data.budgets, key=lambda b: (b.get("org", ""), b.get("key_id") or ""))]
        if [gauge_id for gauge_id, _, _ in wanted] == list(gauges):
            for gauge_id, _, budget in wanted:
                gauges[gauge_id].set_status(budget)
            return
        for gauge in gauges.values():
            gauge.remove()
        panel.mount_all([BudgetGauge(label, budget, id=gauge_id) for gauge_id, label, budget in wanted])
        self.query_one("#gauges-title", Static).update(BUDGETS_TITLE if wanted else "Budgets — none set (b)")

    @staticmethod
    def _gauge_label(data: OrgsData, budget: dict[str, Any]) -> str:
        org = data.org(budget["org_id"])
        name = org["name"] if org else budget["org_id"]
        key_id = budget.get("key_id")
        if key_id is None:
            return name
        key = next((k for k in data.keys if k["id"] == key_id), None)
        return f"{name}/{key['name'] if key else key_id}"

    def _show_keys(self) -> None:
        table = self.query_one("#keys-table", DataTable)
        data, org = self.data, self.data.org(self.selected_org) if self.data else None
        title = self.query_one("#keys-title", Static)
        if data is None or org is None:
            title.update("Keys — no organization")
            sync_rows(table, [])
            return
        keys = data.keys_of(org["id"])
        title.update(f"Keys of {org['name']} ({len(keys)})")
        rows: list[Row] = []
        for key in keys:
            models = ", ".join(key.get("allowed_models") or ()) or "all"
            rows.append((key["id"], (key["id"], key["name"], key["prefix"] + "…", _key_status(key),
                                     _when(key.get("created_at")), _when(key.get("expires_at"))[:10],
                                     _limit(key.get("rpm_limit")), _limit(key.get("tpm_limit")), models,
                                     key.get("environment") or "default")))
        sync_rows(table, rows)

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.data_table.id == "orgs-table" and event.row_key.value != self.selected_org:
            self.selected_org = event.row_key.value
            self._show_keys()

    # -- selection -----------------------------------------------------------------------------

    def selected_key(self) -> dict[str, Any] | None:
        """The key under the keys table's cursor (of the selected org)."""
        key_id = cursor_key(self.query_one("#keys-table", DataTable))
        if self.data is None or key_id is None:
            return None
        return next((k for k in self.data.keys_of(self.selected_org) if k["id"] == key_id), None)

    def _org_or_warn(self) -> dict[str, Any] | None:
        org = self.data.org(self.selected_org) if self.data else None
        if org is None:
            self.notify("select an organization first (or create one with n)", severity="warning")
        return org

    def _writable(self, what: str) -> bool:
        if self.read_only:
            self.notify(f"{what}: refused, the console is read-only", severity="warning")
        return not self.read_only

    # -- actions -------------------------------------------------------------------------------

    def action_new_org(self) -> None:
        if not self._writable("new organization"):
            return
        fields = (FormField("name", "Name", required=True, placeholder="letters, digits, . _ -"),
                  FormField("rpm_limit", "Requests per minute (whole org)", "positive_int", placeholder="no limit"),
                  FormField("tpm_limit", "Tokens per minute (whole org)", "positive_int", placeholder="no limit"))
        self.app.push_screen(OrgFormScreen(
            "New organization", fields, lambda body: self.source.request("POST", "/admin/v1/organizations", body)),
            self._org_created)

    def _org_created(self, org: dict[str, Any] | None) -> None:
        if org is None:
            return
        self.selected_org = org["id"]
        self.notify(f"organization {org['name']} created ({org['id']})", title="done")
        self.refresh_data()

    def action_new_key(self) -> None:
        if not self._writable("new API key"):
            return
        org = self._org_or_warn()
        if org is None:
            return
        fields = (FormField("name", "Key name", default="default"),
                  FormField("rpm_limit", "Requests per minute", "positive_int", placeholder="no limit"),
                  FormField("tpm_limit", "Tokens per minute", "positive_int", placeholder="no limit"),
                  FormField("models", "Models it may use", "list", placeholder="all (or: demo-chat, other)"),
                  FormField("environment", "Environment", placeholder="the gateway's default"),
                  FormField("expires_in", "Expires in", placeholder="never (or: 30d, 12h)"))
        self.app.push_screen(OrgFormScreen(
            f"New API key for {org['name']}", fields,
            lambda body: self.source.request("POST", "/admin/v1/api-keys", body), fixed={"org": org["id"]}),
            lambda created: self._key_created(org["name"], created))

    def _key_created(self, org_name: str, created: dict[str, Any] | None) -> None:
        """Hand the secret to its one-time modal; nothing else keeps it."""
        if created is None:
            return
        secret = created.pop("key", "")
        self.app.push_screen(KeySecretScreen(secret, f"{created['name']} ({created['prefix']}…) of {org_name}"))
        self.notify(f"key {created['name']} ({created['id']}) created for {org_name}", title="done")
        self.refresh_data()

    def action_revoke_key(self) -> None:
        if not self._writable("revoke key"):
            return
        key = self.selected_key()
        if key is None:
            self.notify("select a key in the keys table first", severity="warning")
            return
        if key.get("status") != "active":
            self.notify(f"key {key['name']} ({key['id']}) is already {key.get('status')}", severity="warning")
            return
        org = self.data.org(key["org_id"]) if self.data else None
        question = (f"Revoke API key {key['name']} ({key['prefix']}…, {key['id']}) of "
                    f"{org['name'] if org else key['org_id']}? Every request with it will get 401.")
        self.confirm(question, lambda: self.run_action(
            f"revoked key {key['name']} ({key['id']})", self.source.request, "POST",
            f"/admin/v1/api-keys/{key['id']}/revoke"), confirm_label="Revoke")

    def action_set_budget(self) -> None:
        if not self._writable("set budget"):
            return
        org = self._org_or_warn()
        if org is None or self.data is None:
            return
        current = self.data.budget_of(org["id"])
        targets = (("whole organization", ""),
                   *((f"key {k['name']} ({k['prefix']}…)", k["id"])
                     for k in self.data.keys_of(org["id"]) if k.get("status") == "active"))
        fields = (FormField("usd", "Limit in USD", "usd", required=True,
                            default=f"{current['limit_usd']:g}" if current else "", placeholder="e.g. 250"),
                  FormField("period", "Period", "choice", default=current["period"] if current else "monthly",
                            choices=PERIODS),
                  FormField("soft_limit_pct", "Soft limit (alert at % of the limit)", "percent",
                            default=str(current["soft_limit_pct"]) if current else "80"),
                  FormField("key_id", "Applies to", "choice", choices=targets))
        self.app.push_screen(OrgFormScreen(
            f"Budget of {org['name']}", fields, lambda body: self.source.request("PUT", "/admin/v1/budgets", body),
            fixed={"org": org["id"]}, submit_label="Set budget"), self._budget_set)

    def _budget_set(self, budget: dict[str, Any] | None) -> None:
        if budget is None:
            return
        self.notify(f"budget set: {budget['limit_usd']:g} USD {budget['period']}", title="done")
        self.refresh_data()

    def palette_actions(self) -> list[PaletteAction]:
        return [
            PaletteAction("New organization", "Create an organization (form)", self.action_new_org, mutating=True),
            PaletteAction("New API key", "Create a key for the selected organization; the secret is shown once",
                          self.action_new_key, mutating=True),
            PaletteAction("Revoke API key", "Revoke the key selected in the keys table (asks first)",
                          self.action_revoke_key, mutating=True),
            PaletteAction("Set budget", "Set the selected organization's budget (or one of its keys')",
                          self.action_set_budget, mutating=True),
        ]
