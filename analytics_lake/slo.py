"""Service level objectives: the targets (one TOML file, helm/observability/slo.toml) and the error-budget math.

The same definitions feed `opsctl slo report` (analytics_lake.slo_report), the rollout gates
(opsctl.rollout.slo_gates) and the Prometheus burn-rate alerts (opsctl.slo_rules). docs/slo.md explains the format.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import timedelta
from fnmatch import fnmatchcase
from fractions import Fraction
from pathlib import Path
from typing import Any

from analytics_lake.errors import LakeInputError
from analytics_lake.report_args import ReportArgumentError, parse_duration

AVAILABILITY, LATENCY = "availability", "latency"
MIN_WINDOW = timedelta(hours=1)
# Model names as the registry allows them (gateway/admin/orgs.py), environments as opsctl names them; a
# pattern may also hold "*" (any run of characters, none included).
_PATTERN = re.compile(r"[A-Za-z0-9._:/*-]{1,128}", re.ASCII)
_TARGET_KEYS = ("availability_target", "latency_threshold_ms", "latency_target", "window")
_OVERRIDE_KEYS = ("model", "environment", *_TARGET_KEYS)


@dataclass(frozen=True)
class BurnAlert:
    """One tier of the multi-window multi-burn-rate alerts (Google SRE workbook, "Alerting on SLOs", recipe 6).

    The tier fires while the error ratio over both `long` and `short` exceeds `factor` × the error budget; `for_`
    is how long it must hold before Prometheus fires. The report uses `long` and `factor` alone (a warning).
    """

    severity: str
    factor: float
    long: str
    short: str
    for_: str


BURN_ALERTS = (
    BurnAlert("critical", 14.4, "1h", "5m", "2m"),  # 2 % of a 30-day budget in 1 h: a page
    BurnAlert("high", 6.0, "6h", "30m", "15m"),  # 5 % in 6 h
    BurnAlert("medium", 1.0, "3d", "6h", "1h"),  # 10 % in 3 d: the budget runs out by the window's end, a ticket
)
BURN_WINDOWS: Mapping[str, timedelta] = {"1h": timedelta(hours=1), "6h": timedelta(hours=6),
                                         "3d": timedelta(days=3)}
FAST_BURN = BURN_ALERTS[0].factor
STATUS_ORDER = ("no data", "ok", "warning", "breach")  # worst last


class SloError(LakeInputError):
    """The SLO definitions are unusable; the message names the file and the key (CLI exit 2)."""


# --- definitions ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Slo:
    """The objectives of one model in one environment.

    availability_target: share of eligible requests (all but 4xx, 429, 499) answered without a 5xx.
    latency_target: share of successful (< 400) requests that take at most latency_threshold_ms, end to end.
    window: the error budget's period (a rolling window ending now).
    """

    availability_target: float = 0.999
    latency_threshold_ms: float = 10_000.0
    latency_target: float = 0.99
    window: str = "30d"

    @property
    def window_delta(self) -> timedelta:
        return parse_duration(self.window, argument="window")

    @property
    def availability_budget(self) -> Fraction:
        return error_budget(self.availability_target)

    @property
    def latency_budget(self) -> Fraction:
        return error_budget(self.latency_target)

    def target(self, kind: str) -> float:
        return self.availability_target if kind == AVAILABILITY else self.latency_target

    def to_dict(self) -> dict[str, Any]:
        return {"availability_target": self.availability_target, "latency_threshold_ms": self.latency_threshold_ms,
                "latency_target": self.latency_target, "window": self.window}


@dataclass(frozen=True)
class Override:
    """Targets for the (model, environment) pairs its patterns match; unset targets come from the defaults."""

    model: str
    environment: str
    targets: Mapping[str, Any]
    name: str  # "override[2]": where it is in the file, for messages

    def matches(self, model: str | None, environment: str | None) -> bool:
        """Whether the override covers the pair (None: any model / environment)."""
        return (model is None or fnmatchcase(model, self.model)) and \
            (environment is None or fnmatchcase(environment, self.environment))

    @property
    def exact(self) -> bool:
        """Names one model in one environment (no "*"): the report lists it even without traffic."""
        return "*" not in self.model and "*" not in self.environment


@dataclass(frozen=True)
class SloBook:
    """Every SLO of the fleet: defaults, then overrides; the first override that matches a pair applies."""

    defaults: Slo
    overrides: tuple[Override, ...] = ()
    origin: str = "built-in SLO targets"  # the file they came from, for messages and gate sources

    def scope_of(self, model: str, environment: str) -> Override | None:
        """The override that applies to the pair (the first match), None for the defaults."""
        return next((o for o in self.overrides if o.matches(model, environment)), None)

    def slo_for(self, model: str, environment: str) -> Slo:
        return self.slo_of(self.scope_of(model, environment))

    def slo_of(self, override: Override | None) -> Slo:
        """The SLO an override gives (its targets over the defaults); the defaults for None."""
        return self.defaults if override is None else replace(self.defaults, **override.targets)

    def scopes(self) -> list[tuple[Override | None, Slo]]:
        """Each override with the SLO it gives, in file order, then (None, defaults)."""
        return [*((o, self.slo_of(o)) for o in self.overrides), (None, self.defaults)]

    def named_pairs(self) -> list[tuple[str, str]]:
        """(model, environment) pairs an override names exactly, in file order, without repeats."""
        return list(dict.fromkeys((o.model, o.environment) for o in self.overrides if o.exact))


BUILTIN = SloBook(Slo())  # what helm/observability/slo.toml says (tests/unit/test_slo.py checks it)


def load_slos(path: str | Path | None, *, environments: Sequence[str] | None = None) -> SloBook:
    """The SLO book of a TOML file, or the built-in targets when `path` is None.

    Args:
        path: the file (helm/observability/slo.toml is the fleet's).
        environments: the environments an override's pattern must match at least one of (None: not checked).

    Raises:
        SloError: unreadable file, bad TOML (with its line), unknown key or bad value (with its key path).
    """
    if path is None:
        return BUILTIN
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise SloError(f"{path}: no such SLO file") from e
    except (OSError, UnicodeDecodeError) as e:
        raise SloError(f"{path}: cannot read the SLO file: {e}") from e
    return parse_slos(text, origin=str(path), environments=environments)


def parse_slos(text: str, *, origin: str = "<slo>", environments: Sequence[str] | None = None) -> SloBook:
    """The SLO book of TOML text (see load_slos); `origin` names it in errors and gate sources."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise SloError(f"{origin}: not valid TOML: {e}") from e
    unknown = [k for k in doc if k not in ("defaults", "override")]
    if unknown:
        raise SloError(f"{origin}: {unknown[0]}: unknown key (expected: defaults, override)")
    raw_defaults = doc.get("defaults", {})
    if not isinstance(raw_defaults, dict):
        raise SloError(f"{origin}: defaults: expected a table ([defaults])")
    defaults = replace(BUILTIN.defaults, **_targets(raw_defaults, origin, "defaults", _TARGET_KEYS))
    raw_overrides = doc.get("override", [])
    if not isinstance(raw_overrides, list) or not all(isinstance(o, dict) for o in raw_overrides):
        raise SloError(f"{origin}: override: expected tables ([[override]])")
    overrides = []
    for i, raw in enumerate(raw_overrides):
        where = f"override[{i}]"
        targets = _targets(raw, origin, where, _OVERRIDE_KEYS)
        patterns = [_pattern(raw.get(key), origin, f"{where}.{key}") for key in ("model", "environment")]
        if environments is not None and not any(fnmatchcase(env, patterns[1]) for env in environments):
            raise SloError(f"{origin}: {where}.environment: {patterns[1]!r} matches no environment "
                           f"(expected one of {', '.join(environments)}, or a pattern with *)")
        if not targets:
            raise SloError(f"{origin}: {where}: sets no target (give one of {', '.join(_TARGET_KEYS)})")
        overrides.append(Override(patterns[0], patterns[1], targets, where))
    return SloBook(defaults, tuple(overrides), origin)


def _targets(raw: Mapping[str, Any], origin: str, where: str, allowed: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in raw.items():
        path = f"{origin}: {where}.{key}"
        if key not in allowed:
            raise SloError(f"{path}: unknown key (expected: {', '.join(allowed)})")
        if key in ("availability_target", "latency_target"):
            out[key] = _fraction(value, path)
        elif key == "latency_threshold_ms":
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 86_400_000:
                raise SloError(f"{path}: expected milliseconds above 0 (at most a day), got {value!r}")
            out[key] = float(value)
        elif key == "window":
            out[key] = _window(value, path)
    return out


def _fraction(value: Any, path: str) -> float:
    """A target: a share strictly between 0 and 1 (1 would leave no error budget to spend)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1:
        raise SloError(f"{path}: expected a share between 0 and 1 (e.g. 0.999), got {value!r}")
    return float(value)


def _window(value: Any, path: str) -> str:
    if not isinstance(value, str):
        raise SloError(f"{path}: expected a duration like \"30d\", got {value!r}")
    try:
        delta = parse_duration(value, argument="window")
    except ReportArgumentError as e:
        raise SloError(f"{path}: expected a duration like \"30d\" (at most 3650d), got {value!r}") from e
    if delta < MIN_WINDOW:
        raise SloError(f"{path}: a window of {value} is too short to hold an error budget (at least 1h)")
    return value.strip()


def _pattern(value: Any, path: str, where: str) -> str:
    if value is None:
        raise SloError(f"{path}: {where}: missing (a name, or a pattern with *; \"*\" for all)")
    if not isinstance(value, str) or not _PATTERN.fullmatch(value):
        raise SloError(f"{path}: {where}: expected a name or a pattern of letters, digits, . _ : / - and *, "
                       f"got {value!r}")
    return value


def check_name(value: str, argument: str) -> str:
    """A --model / --env value: a name as the registry allows (ReportArgumentError naming `argument`)."""
    if "*" in value or not _PATTERN.fullmatch(value):
        raise ReportArgumentError(argument, f"--{argument} {value[:64]!r} is invalid: expected a name of letters, "
                                            f"digits, . _ : / and -")
    return value


def check_window(text: str) -> str:
    """A --window value: a duration of at least 1h (ReportArgumentError naming `window` otherwise)."""
    if parse_duration(text, argument="window") < MIN_WINDOW:
        raise ReportArgumentError("window", f"--window {text!r} is invalid: an error budget needs at least 1h")
    return text.strip()


# --- the math ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Counts:
    """One SLI over one window: `bad` of `eligible` events spent error budget.

    Availability: eligible = requests − 4xx − 429 − 499, bad = 5xx. Latency: eligible = ok requests, bad = the
    slow ones (latency above the threshold).
    """

    eligible: int
    bad: int

    def __post_init__(self) -> None:
        if not 0 <= self.bad <= self.eligible:
            raise ValueError(f"counts are inconsistent: {self.bad} bad of {self.eligible} eligible")


def error_budget(target: float) -> Fraction:
    """1 − target, exact for the decimal the target was written as (0.999 → 1/1000)."""
    return 1 - Fraction(repr(float(target)))


def sli(counts: Counts) -> float | None:
    """The share of good events; None without eligible events."""
    if counts.eligible == 0:
        return None
    return float(1 - Fraction(counts.bad, counts.eligible))


def burn_rate(counts: Counts, target: float) -> float | None:
    """How fast the window spent budget: (bad / eligible) / (1 − target); 1 spends it exactly by the window's
    end, 14.4 spends 2 % of a 30-day budget an hour. None without eligible events."""
    if counts.eligible == 0:
        return None
    return float(Fraction(counts.bad, counts.eligible) / error_budget(target))


def budget_consumed(counts: Counts, target: float) -> float | None:
    """The share of the window's error budget spent: bad / (eligible × (1 − target)); above 1 it is overspent."""
    return burn_rate(counts, target)  # the same number: the burn rate over the whole budget window


def budget_remaining(counts: Counts, target: float) -> float | None:
    """1 − consumed: 1 untouched, 0 all spent, negative overspent (the SLO is breached). None without data."""
    if counts.eligible == 0:
        return None
    return float(1 - Fraction(counts.bad, counts.eligible) / error_budget(target))


def status(window: Counts, burns: Mapping[str, Counts], target: float) -> str:
    """"no data" (nothing eligible in the window), "breach" (the window's budget is overspent), "warning"
    (burning faster than an alert tier allows over its long window: > 14.4 over 1h, > 6 over 6h, > 1 over 3d)
    or "ok"."""
    if window.eligible == 0:
        return "no data"
    if Fraction(window.bad, window.eligible) > error_budget(target):
        return "breach"
    for tier in BURN_ALERTS:
        counts = burns.get(tier.long)
        if counts is not None and counts.eligible and \
                Fraction(counts.bad, counts.eligible) > Fraction(repr(tier.factor)) * error_budget(target):
            return "warning"
    return "ok"


def evaluate(target: float, window: Counts, burns: Mapping[str, Counts]) -> dict[str, Any]:
    """One objective over its window: the counts, SLI, budget consumed/remaining, burn rate per burn window and
    status (JSON-able)."""
    return {"target": target, "eligible": window.eligible, "bad": window.bad, "sli": sli(window),
            "budget_consumed": budget_consumed(window, target), "budget_remaining": budget_remaining(window, target),
            "burn_rate": {name: burn_rate(burns.get(name, Counts(0, 0)), target) for name in BURN_WINDOWS},
            "status": status(window, burns, target)}


def worst(statuses: Sequence[str]) -> str:
    return max(statuses, key=STATUS_ORDER.index, default="no data")
