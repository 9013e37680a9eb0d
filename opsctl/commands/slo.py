"""`opsctl slo …`: SLO reports from the lake and the alert rules generated from the same targets (issue 13, helper C)."""

from __future__ import annotations

from opsctl.common import new_app

slo_app = new_app("Service level objectives: report, error budgets, burn rates, alert rules.")
