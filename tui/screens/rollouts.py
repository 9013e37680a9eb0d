"""Rollouts screen (skeleton: replaced by its implementation)."""

from __future__ import annotations

from typing import Any

from textual.app import ComposeResult
from textual.widgets import Footer, Header, Static

from tui.screens.base import FleetScreen
from tui.widgets.status import Freshness


class RolloutsScreen(FleetScreen):
    TITLE = "Rollouts"

    def compose(self) -> ComposeResult:
        yield Header()
        yield Freshness()
        yield Static("Rollouts", id="body")
        yield Footer()

    def fetch(self) -> Any:
        return self.source.get("/admin/v1/models")

    def show(self, data: Any) -> None:
        self.query_one("#body", Static).update(f"{len(data['data'])} models")
