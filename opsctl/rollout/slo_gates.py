"""Rollout gates taken from the SLO of the model and environment a playbook rolls out to.

A playbook's analysis gate set to "slo" (or, when the loader is given the SLO targets, left out) becomes:

- max_error_rate = 14.4 × (1 − availability target): the new release may fail requests no faster than the
  fast-burn (page) rate of the SLO's alerts, with 1 error tolerated in any window, so that the single error of a
  20-request window (5 %) does not fail a release whose SLO allows 0.1 %;
- max_p95_latency_ms = the latency threshold, when the latency target is at least 95 %: a p95 above the threshold
  means more than 5 % slow requests, i.e. burning the latency budget at least 5× (for 99 %) — never stricter than
  the SLO itself. Below 95 % the SLO allows more slow requests than a p95 gate would, so none is derived.

Explicit values in the playbook (or --set analysis.FIELD=VALUE) always win. Each derived gate records where it came
from in Gates.sources ("slo.toml: availability 99.9 %"), which the plan prints.
"""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

from analytics_lake.slo import BUILTIN, FAST_BURN

if TYPE_CHECKING:
    from analytics_lake.slo import SloBook
    from opsctl.rollout.playbook import Gates

SLO = "slo"  # the value a playbook writes for a gate to come from the SLO
AUTO = "auto"  # tolerated_errors not given: TOLERATED_ERRORS with an SLO-derived max_error_rate, else 0
SLO_GATES = ("max_error_rate", "max_p95_latency_ms")  # gates that accept "slo"
TOLERATED_ERRORS = 1
MIN_P95_TARGET = Fraction(95, 100)


def initial(gates: Gates, *, from_slo: bool) -> Gates:
    """The gates a loader starts from, before the playbook's own values: tolerated_errors pending (AUTO) and, when
    the SLO targets are given (`from_slo`), the SLO gates too."""
    pending = {"max_error_rate": SLO, "max_p95_latency_ms": SLO} if from_slo else {}
    return replace(gates, tolerated_errors=AUTO, **pending)  # type: ignore[arg-type]


def resolve(gates: Gates, book: SloBook | None, model: str, environment: str) -> Gates:
    """`gates` with every "slo" value replaced by the figure the SLO of (model, environment) gives, and AUTO
    tolerated_errors settled; `book` None means the built-in targets.
    """
    pending = {name for name in SLO_GATES if getattr(gates, name) == SLO}
    if not pending and gates.tolerated_errors != AUTO:
        return gates
    book = book or BUILTIN
    slo = book.slo_for(model, environment)
    label = "built-in SLO" if book is BUILTIN else Path(book.origin).name
    changes: dict[str, object] = {}
    sources = dict(gates.sources)
    if "max_error_rate" in pending:
        changes["max_error_rate"] = float(Fraction(repr(FAST_BURN)) * slo.availability_budget)
        sources["max_error_rate"] = (f"{label}: availability {_percent(slo.availability_target)} %, "
                                     f"{FAST_BURN:g} × its {_percent(float(slo.availability_budget))} % budget")
    if gates.tolerated_errors == AUTO:
        changes["tolerated_errors"] = TOLERATED_ERRORS if "max_error_rate" in pending else 0
    if "max_p95_latency_ms" in pending:
        if Fraction(repr(slo.latency_target)) >= MIN_P95_TARGET:
            changes["max_p95_latency_ms"] = slo.latency_threshold_ms
            sources["max_p95_latency_ms"] = (f"{label}: latency {_percent(slo.latency_target)} % ≤ "
                                             f"{slo.latency_threshold_ms:g} ms")
        else:
            changes["max_p95_latency_ms"] = None
    return replace(gates, **changes, sources=sources)  # type: ignore[arg-type]


def _percent(share: float) -> str:
    return format((Decimal(repr(share)) * 100).normalize(), "f")
