"""Orgs · keys · budgets screen against a real `opsctl up` stack: create and revoke a key, budgets, errors.

Every outcome is checked where it happens: the gateway answers 200 to the new key and 401 once it
is revoked; a budget's gauge takes the colour of the gateway's own soft/hard verdict.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from textual.widgets import Button, DataTable, Footer, Input, Select, Static

from tests.tui.conftest import SIZE
from tests.tui.pilot import until
from tui.app import FleetgateApp
from tui.screens.orgs import OrgsScreen
from tui.source import LiveSource
from tui.widgets.budget_gauge import BudgetGauge
from tui.widgets.confirm import ConfirmScreen
from tui.widgets.org_form import OrgFormScreen
from tui.widgets.org_secret import KeySecretScreen
from tui.widgets.status import Freshness


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"




def orgs_screen(app: FleetgateApp) -> OrgsScreen:
    return next(s for s in app.screen_stack if isinstance(s, OrgsScreen))


async def fill(pilot, form: OrgFormScreen, values: dict[str, str]) -> None:
    for name, value in values.items():
        widget = form.query_one(f"#field-{name}")
        if isinstance(widget, Select):
            widget.value = value
        else:
            assert isinstance(widget, Input)
            widget.value = value
    await pilot.pause()


async def submit(pilot, form: OrgFormScreen) -> None:
    form.query_one("#form-submit", Button).press()
    await pilot.pause()


async def open_form(pilot, app: FleetgateApp, key: str) -> OrgFormScreen:
    await pilot.press(key)
    return await until(pilot, lambda: isinstance(app.screen, OrgFormScreen) and app.screen, f"the form of {key!r}")


async def select_org(pilot, app: FleetgateApp, name: str) -> dict[str, Any]:
    """Move the orgs table's cursor onto `name` (it appears after a refresh)."""
    screen = orgs_screen(app)
    org = await until(pilot, lambda: screen.data and next((o for o in screen.data.orgs if o["name"] == name), None),
                      f"org {name} in the table")
    table = screen.query_one("#orgs-table", DataTable)
    table.focus()
    table.move_cursor(row=table.get_row_index(org["id"]))
    await until(pilot, lambda: screen.selected_org == org["id"], f"org {name} selected")
    return org


def create_org_and_key(fleet_stack, name: str) -> str:
    """Set-up through the admin API (not what these tests are about): an org with one key; its secret."""
    with fleet_stack.admin() as admin:
        admin.post("/admin/v1/organizations", json={"name": name}).raise_for_status()
        answer = admin.post("/admin/v1/api-keys", json={"org": name, "name": "setup"})
        answer.raise_for_status()
        return answer.json()["key"]


def texts_on_screen(app: FleetgateApp) -> str:
    """Everything the app currently renders in Static-like widgets, tables and notifications."""
    parts = [str(w.content) for screen in app.screen_stack for w in screen.query(Static)]
    for screen in app.screen_stack:
        for table in screen.query(DataTable):
            parts.extend(str(cell) for row in table.rows for cell in table.get_row(row))
    parts.extend(n.message for n in app._notifications)
    return "\n".join(parts)


async def test_create_a_key_use_it_then_revoke_it(fleet_stack):
    """The issue's test: create an org and a key from the forms, call the gateway with the secret
    read from the modal (200), revoke the key with confirmation, and the same call gets 401."""
    org_name, key_name = unique("tui-org"), unique("tui-key")
    app = FleetgateApp(fleet_stack.source(), refresh_s=1.0, screen="orgs")
    async with app.run_test(size=SIZE) as pilot:
        screen = orgs_screen(app)
        await until(pilot, lambda: screen.data is not None, "the first refresh")

        form = await open_form(pilot, app, "n")
        await fill(pilot, form, {"name": org_name})
        await submit(pilot, form)
        await until(pilot, lambda: app.screen is screen, "the org form to close")
        await select_org(pilot, app, org_name)

        form = await open_form(pilot, app, "k")
        await fill(pilot, form, {"name": key_name, "rpm_limit": "600"})
        await submit(pilot, form)
        modal = await until(pilot, lambda: isinstance(app.screen, KeySecretScreen) and app.screen, "the secret modal")
        secret = str(modal.query_one("#secret-value", Static).content)
        assert secret.startswith("sk-fg-")
        assert "not be shown again" in str(modal.query_one("#secret-warning", Static).content)

        modal.query_one("#secret-copy", Button).press()
        await pilot.pause()
        assert app.clipboard == secret
        modal.query_one("#secret-done", Button).press()
        await until(pilot, lambda: app.screen is screen, "the secret modal to close")

        # The secret is gone from the app: the modal, the clipboard mirror, the data, every text shown.
        assert modal.secret == "" and app.clipboard != secret
        assert all("key" not in k for k in screen.data.keys)
        assert secret not in texts_on_screen(app)
        assert await asyncio.to_thread(fleet_stack.chat, 1, key=secret) == [200]

        key = await until(pilot, lambda: next((k for k in screen.data.keys_of(screen.selected_org)
                                               if k["name"] == key_name), None), "the new key in the keys table")
        assert key["rpm_limit"] == 600
        keys_table = screen.query_one("#keys-table", DataTable)
        keys_table.focus()
        keys_table.move_cursor(row=keys_table.get_row_index(key["id"]))
        await pilot.pause()
        await pilot.press("v")
        confirm = await until(pilot, lambda: isinstance(app.screen, ConfirmScreen) and app.screen, "the confirmation")
        assert key_name in confirm.question and key["id"] in confirm.question
        await pilot.press("y")
        await until(pilot, lambda: any(k["id"] == key["id"] and k["status"] == "revoked" for k in screen.data.keys),
                    "the key shown revoked")
        assert await asyncio.to_thread(fleet_stack.chat, 1, key=secret) == [401]


async def test_budget_gauge_colour_follows_the_gateways_soft_and_hard_verdicts(fleet_stack):
    org_name = unique("tui-budget")
    secret = await asyncio.to_thread(create_org_and_key, fleet_stack, org_name)
    app = FleetgateApp(fleet_stack.source(), refresh_s=1.0, screen="orgs")
    async with app.run_test(size=SIZE) as pilot:
        screen = orgs_screen(app)
        org = await select_org(pilot, app, org_name)

        def gauge() -> BudgetGauge | None:
            return next((g for g in screen.query(BudgetGauge) if g.label == org_name), None)

        async def set_budget(usd: str, soft: str) -> None:
            form = await open_form(pilot, app, "b")
            await fill(pilot, form, {"usd": usd, "soft_limit_pct": soft, "period": "monthly"})
            await submit(pilot, form)
            await until(pilot, lambda: app.screen is screen, "the budget form to close")

        await set_budget("1000", "80")
        await until(pilot, lambda: gauge() is not None and gauge().has_class("-ok"), "a green gauge")
        assert await asyncio.to_thread(fleet_stack.chat, 1, key=secret) == [200]
        await until(pilot, lambda: gauge().status["spent_micros"] > 0, "the spend on the gauge")
        spent = gauge().status["spent_micros"]

        # Soft limit below the current spend, limit above it: yellow.
        await set_budget(f"{spent * 2 / 1e6:.6f}", "50")
        await until(pilot, lambda: gauge().has_class("-soft"), "a yellow gauge")
        assert not gauge().has_class("-ok")
        # Limit below the spend: the gateway refuses, the gauge is red (and so is the orgs table's cell).
        await set_budget(f"{spent / 2 / 1e6:.6f}", "50")
        await until(pilot, lambda: gauge().has_class("-hard"), "a red gauge")
        assert await asyncio.to_thread(fleet_stack.chat, 1, key=secret) == [429]
        cell = screen.query_one("#orgs-table", DataTable).get_cell(org["id"], "budget")
        assert "red" in str(cell.style)


async def test_bad_form_input_is_shown_inline_and_creates_nothing(fleet_stack):
    bad_name = "bad name!"
    app = FleetgateApp(fleet_stack.source(), refresh_s=1.0, screen="orgs")
    async with app.run_test(size=SIZE) as pilot:
        screen = orgs_screen(app)
        await until(pilot, lambda: screen.data is not None, "the first refresh")
        form = await open_form(pilot, app, "n")

        # Refused before sending: not a number.
        await fill(pilot, form, {"name": unique("tui-never"), "rpm_limit": "lots"})
        await submit(pilot, form)
        assert "whole number" in form.error_text("rpm_limit")
        # Refused by the gateway (400 naming the field): shown under that field, the form stays open.
        await fill(pilot, form, {"name": bad_name, "rpm_limit": ""})
        await submit(pilot, form)
        await until(pilot, lambda: "'name' must be" in form.error_text("name"), "the gateway's 400 under 'name'")
        assert app.screen is form and form.error_text("rpm_limit") == ""
        await pilot.press("escape")
        await until(pilot, lambda: app.screen is screen, "the form to close")

    with fleet_stack.admin() as admin:
        names = {o["name"] for o in admin.get("/admin/v1/organizations").json()}
    assert bad_name not in names and not any(n.startswith("tui-never") for n in names)


async def test_a_wrong_admin_token_marks_the_screen_stale_and_the_app_stays_up(fleet_stack):
    source = LiveSource(fleet_stack.settings(), fleet_stack.url, "not-the-admin-token")
    app = FleetgateApp(source, refresh_s=1.0, screen="orgs", follow_events=False)
    async with app.run_test(size=SIZE) as pilot:
        screen = orgs_screen(app)
        freshness = screen.query_one(Freshness)
        await until(pilot, lambda: freshness.has_class("-stale"), "the STALE marker")
        assert "401" in freshness.error
        assert any("401" in n.message for n in app._notifications)
        # A forbidden change: the form shows the gateway's 401 and the operator is notified.
        form = await open_form(pilot, app, "n")
        await fill(pilot, form, {"name": unique("tui-forbidden")})
        await submit(pilot, form)
        await until(pilot, lambda: "401" in form.error_text(), "the 401 in the form")
        assert sum("401" in n.message for n in app._notifications) >= 2
        await pilot.press("escape")
        await pilot.press("r")
        await pilot.pause(0.3)
        assert app.is_running and app.screen is screen


async def test_read_only_hides_and_refuses_every_change(fleet_stack):
    app = FleetgateApp(fleet_stack.source(), read_only=True, refresh_s=1.0, screen="orgs")
    async with app.run_test(size=SIZE) as pilot:
        screen = orgs_screen(app)
        await until(pilot, lambda: screen.data is not None, "the first refresh")
        await until(pilot, lambda: screen.query_one(Footer).query("FooterKey"), "the footer's keys")
        footer = str([b.description for b in screen.query_one(Footer).query("FooterKey")])
        assert "Refresh" in footer  # the footer is there; only the changes are gone
        for hidden in ("New org", "New key", "Revoke key", "Set budget"):
            assert hidden not in footer
        for key in "nkvb":
            await pilot.press(key)
            await pilot.pause()
            assert app.screen is screen
        titles = {c.title for c in app.get_system_commands(screen)}
        assert not titles & {"New organization", "New API key", "Revoke API key", "Set budget"}
        screen.action_new_org()  # even called directly (as from a stale palette) it refuses
        await pilot.pause()
        assert app.screen is screen
        assert any("read-only" in n.message for n in app._notifications)


def test_gauge_level_is_the_gateways_verdict():
    """No stack needed: the level follows `remaining_micros` (hard) and `soft_limit_hit` (soft) only."""
    from tui.widgets.budget_gauge import budget_level, gauge_text

    status = {"limit_micros": 100, "spent_micros": 10, "reserved_micros": 0, "remaining_micros": 90,
              "soft_limit_hit": False, "spent_usd": 0.00001, "limit_usd": 0.0001, "period": "daily"}
    assert budget_level(None) == "none" and budget_level(status) == "ok"
    assert budget_level({**status, "soft_limit_hit": True}) == "soft"
    assert budget_level({**status, "soft_limit_hit": True, "remaining_micros": 0}) == "hard"
    assert gauge_text(status, width=10).plain == "█░░░░░░░░░ $0.00001/$0.0001 daily"


def test_form_values_are_parsed_before_sending():
    from tui.widgets.org_form import FieldError, FormField, parse_value

    assert parse_value(FormField("rpm_limit", "RPM", "positive_int"), " 600 ") == 600
    assert parse_value(FormField("rpm_limit", "RPM", "positive_int"), "") is None
    assert parse_value(FormField("usd", "USD", "usd"), "$1,250.5") == 1250.5
    assert parse_value(FormField("models", "Models", "list"), "a, b,") == ["a", "b"]
    for spec, raw in ((FormField("rpm_limit", "RPM", "positive_int"), "0"),
                      (FormField("usd", "USD", "usd"), "nan"), (FormField("usd", "USD", "usd"), "-1"),
                      (FormField("soft_limit_pct", "Soft", "percent"), "101"),
                      (FormField("name", "Name", required=True), "  ")):
        try:
            parse_value(spec, raw)
        except FieldError:
            continue
        raise AssertionError(f"{spec.name}={raw!r} was accepted")
