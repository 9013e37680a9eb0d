"""Budget gauges: a bar of spend against the limit, coloured by what the gateway says about it.

The level comes from the gateway's own budget status (`soft_limit_hit`, `remaining_micros`), so the
console colours a budget exactly when the gateway starts warning (soft) or refusing (hard).
"""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.widgets import Static

LEVELS = ("none", "ok", "soft", "hard")
LEVEL_STYLES = {"none": "dim", "ok": "green", "soft": "yellow", "hard": "bold red"}
BAR_WIDTH = 14


def budget_level(status: dict[str, Any] | None) -> str:
    """`hard` when the gateway refuses (nothing remains), `soft` past the soft limit, `ok` below it,
    `none` without a budget."""
    if not status:
        return "none"
    if int(status.get("remaining_micros", 1)) <= 0:
        return "hard"
    if status.get("soft_limit_hit"):
        return "soft"
    return "ok"


def usd(amount: float) -> str:
    """Dollars as an operator reads them: cents for real money, micro-dollars for tiny test spend."""
    if amount == 0:
        return "$0"
    if abs(amount) >= 0.01:
        return f"${amount:,.2f}"
    return f"${amount:.6f}".rstrip("0")


def gauge_text(status: dict[str, Any] | None, *, width: int = BAR_WIDTH, period: bool = True) -> Text:
    """`████░░░░ $1.20/$10.00 monthly` in the level's colour; `no budget` (dim) without one."""
    level = budget_level(status)
    style = LEVEL_STYLES[level]
    if status is None:
        return Text("no budget", style=style)
    limit = int(status.get("limit_micros", 0))
    used = int(status.get("spent_micros", 0)) + int(status.get("reserved_micros", 0))
    filled = width if limit <= 0 or used >= limit else int(width * used / limit)
    if used > 0 and filled == 0:
        filled = 1  # any spend shows: a sliver, not an empty bar
    text = Text("█" * filled, style=style)
    text.append("░" * (width - filled), style="dim")
    text.append(f" {usd(float(status.get('spent_usd', 0)))}/{usd(float(status.get('limit_usd', 0)))}",
                style=style)
    if period:
        text.append(f" {status.get('period', '')}", style="dim")
    return text


class BudgetGauge(Static):
    """One budget as a labelled bar. CSS class `-ok`, `-soft`, `-hard` or `-none` follows its level."""

    DEFAULT_CSS = """
    BudgetGauge {
        height: 2;
        width: 1fr;
    }
    """

    def __init__(self, label: str, status: dict[str, Any] | None = None, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.label = label
        self.status: dict[str, Any] | None = None
        self.set_status(status)

    @property
    def level(self) -> str:
        return budget_level(self.status)

    def set_status(self, status: dict[str, Any] | None) -> None:
        """Show a new budget status (a dict from `GET /admin/v1/budgets/{org}`, or None)."""
        self.status = status
        for level in LEVELS:
            self.set_class(level == self.level, f"-{level}")
        line = Text(self.label, style="bold")
        if status is not None:
            line.append(f" · {status.get('period', '')} · soft {status.get('soft_limit_pct', '')}%", style="dim")
        line.append("\n")
        line.append_text(gauge_text(status, period=False))
        self.update(line)
