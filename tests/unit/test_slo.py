"""SLOs: the targets file (parse, overrides, errors naming file and key), the error-budget math on known counts,
the lake-backed report on a real lake, and the rollout gates taken from an SLO."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from analytics_lake import rollup
from analytics_lake.location import LakeConfig
from analytics_lake.query import LakeQuery
from analytics_lake.report_args import ReportArgumentError
from analytics_lake.slo import (
    BUILTIN,
    Counts,
    Slo,
    SloError,
    budget_consumed,
    budget_remaining,
    burn_rate,
    check_name,
    check_window,
    error_budget,
    evaluate,
    load_slos,
    parse_slos,
    sli,
    status,
)
from analytics_lake.slo_report import slo_report
from analytics_lake.synthetic import make_event
from analytics_lake.writer import write_batch
from opsctl.rollout.analysis import WindowStats, evaluate as evaluate_gates, failure_reason
from opsctl.rollout.playbook import Gates, Playbook, PlaybookError, load_playbook, plan

REPO = Path(__file__).resolve().parents[2]
ENVIRONMENTS = ("development", "staging", "production")

OVERRIDES = """\
[defaults]
window = "7d"

[[override]]
model = "embed-*"
environment = "*"
latency_threshold_ms = 1000

[[override]]
model = "*"
environment = "development"
availability_target = 0.99
latency_target = 0.9

[[override]]
model = "embed-small"
environment = "development"
availability_target = 0.5
"""


# --- definitions --------------------------------------------------------------------------------------------------

def test_the_fleet_file_says_what_the_built_in_targets_say():
    book = load_slos(REPO / "helm" / "observability" / "slo.toml", environments=ENVIRONMENTS)
    assert book.defaults == BUILTIN.defaults == Slo(0.999, 10_000.0, 0.99, "30d")
    assert book.overrides == () and load_slos(None) is BUILTIN
    assert book.origin.endswith("helm/observability/slo.toml")


def test_the_first_matching_override_applies_over_the_defaults():
    book = parse_slos(OVERRIDES, origin="slo.toml", environments=ENVIRONMENTS)
    assert book.defaults == Slo(0.999, 10_000.0, 0.99, "7d")  # unset defaults come from the built-in ones
    assert book.slo_for("llama", "production") == book.defaults and book.scope_of("llama", "production") is None
    assert book.slo_for("embed-small", "production") == Slo(0.999, 1000.0, 0.99, "7d")
    # embed-small in development: override[0] matches first, so override[1] and [2] do not apply
    assert book.scope_of("embed-small", "development").name == "override[0]"
    assert book.slo_for("embed-small", "development") == Slo(0.999, 1000.0, 0.99, "7d")
    assert book.slo_for("llama", "development") == Slo(0.99, 10_000.0, 0.9, "7d")
    assert book.named_pairs() == [("embed-small", "development")]
    assert book.slo_for("embed-", "staging").latency_threshold_ms == 1000  # "*" matches no characters too


@pytest.mark.parametrize(("text", "message"), [
    ("[defaults]\navailability_target = 1.0\n", "slo.toml: defaults.availability_target: expected a share between 0 "
                                                "and 1 (e.g. 0.999), got 1.0"),
    ("[defaults]\nlatency_target = \"99%\"\n", "slo.toml: defaults.latency_target: expected a share"),
    ("[defaults]\nlatency_threshold_ms = 0\n", "slo.toml: defaults.latency_threshold_ms: expected milliseconds"),
    ("[defaults]\nwindow = \"30 days\"\n", "slo.toml: defaults.window: expected a duration like \"30d\""),
    ("[defaults]\nwindow = \"30m\"\n", "slo.toml: defaults.window: a window of 30m is too short"),
    ("[defaults]\navailabilty_target = 0.99\n", "slo.toml: defaults.availabilty_target: unknown key (expected: "
                                               "availability_target, latency_threshold_ms, latency_target, window)"),
    ("[default]\n", "slo.toml: default: unknown key (expected: defaults, override)"),
    ("[[override]]\nmodel = \"m\"\nenvironment = \"production\"\n", "slo.toml: override[0]: sets no target"),
    ("[[override]]\nenvironment = \"production\"\nlatency_target = 0.9\n", "slo.toml: override[0].model: missing"),
    ("[[override]]\nmodel = \"m\"\nenvironment = \"prod\"\nlatency_target = 0.9\n",
     "slo.toml: override[0].environment: 'prod' matches no environment (expected one of development, staging, "
     "production, or a pattern with *)"),
    ("[[override]]\nmodel = \"m?\"\nenvironment = \"*\"\nlatency_target = 0.9\n",
     "slo.toml: override[0].model: expected a name or a pattern"),
    ("[[override]]\nmodel = \"m\"\nenvironment = \"*\"\nlatency_target = 0.9\n[[override]]\nmodel = \"n\"\n"
     "environment = \"*\"\nwindow = 30\n", "slo.toml: override[1].window: expected a duration"),
    ("[defaults]\nwindow = \"30d\"\nwindow = \"7d\"\n",
     "slo.toml: not valid TOML: Cannot overwrite a value (at line 3"),
    ("defaults = 3\n", "slo.toml: defaults: expected a table"),
])
def test_bad_targets_name_the_file_and_the_key(text, message):
    with pytest.raises(SloError) as info:
        parse_slos(text, origin="slo.toml", environments=ENVIRONMENTS)
    assert str(info.value).startswith(message), str(info.value)


def test_missing_file_and_bad_arguments(tmp_path):
    with pytest.raises(SloError, match=f"{tmp_path / 'nope.toml'}: no such SLO file"):
        load_slos(tmp_path / "nope.toml")
    with pytest.raises(ReportArgumentError) as info:
        check_window("30x")
    assert info.value.argument == "window"
    with pytest.raises(ReportArgumentError, match="at least 1h"):
        check_window("30m")
    with pytest.raises(ReportArgumentError, match="--model 'llama\\*' is invalid"):
        check_name("llama*", "model")
    assert check_window(" 7d ") == "7d" and check_name("meta/llama-3.1:8b", "model") == "meta/llama-3.1:8b"


# --- the math -----------------------------------------------------------------------------------------------------

def test_budget_math_on_known_counts():
    assert error_budget(0.999) * 1000 == 1 and error_budget(0.99) * 100 == 1  # exact, not 0.0010000000000000009
    half = Counts(eligible=100_000, bad=50)
    assert (sli(half), budget_consumed(half, 0.999), budget_remaining(half, 0.999)) == (0.9995, 0.5, 0.5)
    assert burn_rate(half, 0.999) == 0.5 and burn_rate(half, 0.99) == pytest.approx(0.05)
    exact = Counts(100_000, 100)  # exactly the budget: all spent, not overspent
    assert (budget_consumed(exact, 0.999), budget_remaining(exact, 0.999)) == (1.0, 0.0)
    over = Counts(100_000, 250)
    assert (budget_consumed(over, 0.999), budget_remaining(over, 0.999)) == (2.5, -1.5)  # negative: overspent
    empty = Counts(0, 0)
    assert sli(empty) is budget_remaining(empty, 0.999) is burn_rate(empty, 0.999) is None
    with pytest.raises(ValueError, match="3 bad of 2 eligible"):
        Counts(2, 3)


@pytest.mark.parametrize(("window", "burns", "expected"), [
    (Counts(0, 0), {}, "no data"),
    (Counts(100_000, 100), {"3d": Counts(10_000, 10)}, "ok"),  # exactly 1x over 3d: not faster than allowed
    (Counts(100_000, 101), {}, "breach"),
    (Counts(100_000, 50), {"1h": Counts(1000, 14)}, "ok"),  # 14x < 14.4x
    (Counts(100_000, 50), {"1h": Counts(1000, 15)}, "warning"),  # 15x > 14.4x: the page tier
    (Counts(100_000, 50), {"6h": Counts(10_000, 61)}, "warning"),  # 6.1x > 6x
    (Counts(100_000, 50), {"3d": Counts(10_000, 11)}, "warning"),  # 1.1x > 1x: the ticket tier
    (Counts(100_000, 50), {"1h": Counts(0, 0), "6h": Counts(10, 0)}, "ok"),
])
def test_status(window, burns, expected):
    assert status(window, burns, 0.999) == expected


def test_evaluate_reports_every_burn_window():
    result = evaluate(0.99, Counts(4000, 7), {"1h": Counts(200, 2), "6h": Counts(1200, 7)})
    assert result == {"target": 0.99, "eligible": 4000, "bad": 7, "sli": 1 - 7 / 4000,
                      "budget_consumed": pytest.approx(0.175), "budget_remaining": pytest.approx(0.825),
                      "burn_rate": {"1h": pytest.approx(1.0), "6h": pytest.approx(7 / 12), "3d": None}, "status": "ok"}


# --- the report, on a real lake -----------------------------------------------------------------------------------

NOW = datetime(2026, 3, 10, 12, 30, tzinfo=UTC)


def _us(moment: datetime) -> int:
    return int(moment.timestamp() * 1_000_000)


def _events(model: str, env: str, ago: timedelta, statuses: dict[int, int], slow: int = 0) -> list[dict]:
    """`statuses` {status: count} `ago` before NOW (1 ms apart); the first `slow` ok ones take 20 s, the rest 0.5 s."""
    rng, start, out = random.Random(7), _us(NOW - ago), []
    for status_code, n in statuses.items():
        for _ in range(n):
            event = make_event(start + len(out) * 1000, model=model, status=status_code, rng=rng)
            event["environment"] = env
            event["latency_ms"] = 20_000.0 if status_code < 400 and slow > 0 else 500.0
            slow -= status_code < 400 and slow > 0
            out.append(event)
    return out


@pytest.fixture(scope="module")
def slo_lake(tmp_path_factory) -> LakeConfig:
    """llama/production overspends availability; qwen/staging burns 2x over 3d (a warning); mistral is fine;
    nope/production only got 404s (nothing eligible); 40 days back a flood of 5xx is outside every window."""
    config = LakeConfig(f"file://{tmp_path_factory.mktemp('slo')}/lake")
    events = [
        *_events("llama", "production", timedelta(minutes=30), {200: 200, 502: 4, 429: 10, 401: 5, 499: 3}, slow=2),
        *_events("llama", "production", timedelta(hours=3), {200: 1000, 503: 1}, slow=5),
        *_events("llama", "production", timedelta(days=2), {200: 2000}),
        *_events("llama", "production", timedelta(days=20), {200: 800}),
        *_events("llama", "production", timedelta(days=40), {500: 500}),
        *_events("qwen", "staging", timedelta(days=2), {200: 998, 500: 2}),
        *_events("qwen", "staging", timedelta(days=20), {200: 2000}),
        *_events("mistral", "production", timedelta(hours=5), {200: 500}),
        *_events("nope", "production", timedelta(hours=1, minutes=30), {404: 10}),
    ]
    write_batch(config, events, writer_id="slo")
    return config


def _by_pair(rows: list[dict]) -> dict[tuple[str, str], dict]:
    return {(r["model"], r["environment"]): r for r in rows}


LLAMA_AVAILABILITY = {  # eligible = ok + 5xx; the 429, 401 and 499 answers spend nothing
    "target": 0.999, "eligible": 4005, "bad": 5, "sli": pytest.approx(1 - 5 / 4005),
    "budget_consumed": pytest.approx(5 / 4005 / 0.001), "budget_remaining": pytest.approx(1 - 5 / 4005 / 0.001),
    "burn_rate": {"1h": pytest.approx(4 / 204 / 0.001), "6h": pytest.approx(5 / 1205 / 0.001),
                  "3d": pytest.approx(5 / 3205 / 0.001)},
    "status": "breach"}
LLAMA_LATENCY = {  # over ok requests: 7 of 4000 slower than 10 s
    "threshold_ms": 10_000.0, "target": 0.99, "eligible": 4000, "bad": 7, "sli": pytest.approx(1 - 7 / 4000),
    "budget_consumed": pytest.approx(0.175), "budget_remaining": pytest.approx(0.825),
    "burn_rate": {"1h": pytest.approx(1.0), "6h": pytest.approx(7 / 1200 / 0.01), "3d": pytest.approx(7 / 3200 / 0.01)},
    "status": "ok"}


@pytest.mark.parametrize("rolled_up", [False, True])
def test_report_from_raw_rows_and_from_rollups_has_the_known_answers(slo_lake, rolled_up):
    if rolled_up:
        rollup.rebuild(slo_lake, now=NOW)
    book = parse_slos('[[override]]\nmodel = "gpt-oss"\nenvironment = "production"\navailability_target = 0.99\n',
                      origin="slo.toml")
    with LakeQuery(slo_lake) as lake:
        rows = slo_report(lake, book, now=NOW)
    assert [(r["model"], r["environment"], r["status"]) for r in rows] == [
        ("gpt-oss", "production", "no data"), ("llama", "production", "breach"),
        ("mistral", "production", "ok"), ("qwen", "staging", "warning")]
    pairs = _by_pair(rows)
    llama = pairs["llama", "production"]
    assert (llama["window"], llama["requests"], llama["slo"]) == ("30d", 4023, "defaults")
    assert llama["availability"] == LLAMA_AVAILABILITY and llama["latency"] == LLAMA_LATENCY
    qwen = pairs["qwen", "staging"]["availability"]
    assert (qwen["eligible"], qwen["bad"], qwen["status"]) == (3000, 2, "warning")
    assert qwen["budget_remaining"] == pytest.approx(1 - 2 / 3000 / 0.001)
    assert qwen["burn_rate"] == {"1h": None, "6h": None, "3d": pytest.approx(2.0)}
    mistral = pairs["mistral", "production"]
    assert mistral["availability"]["budget_remaining"] == 1.0 and mistral["latency"]["burn_rate"]["6h"] == 0.0
    nothing = pairs["gpt-oss", "production"]
    assert (nothing["slo"], nothing["requests"], nothing["availability"]["target"]) == ("override[0]", 0, 0.99)
    assert nothing["availability"]["sli"] is None and nothing["latency"]["budget_remaining"] is None
    json.dumps(rows)  # JSON-able as it is


def test_report_filters_windows_and_overrides(slo_lake):
    with LakeQuery(slo_lake) as lake:
        # a week: llama's day-20 traffic drops out; a model and environment named together always get a row
        week = slo_report(lake, BUILTIN, model="llama", environment="production", window="7d", now=NOW)
        assert [(r["model"], r["window"], r["availability"]["eligible"]) for r in week] == [("llama", "7d", 3205)]
        assert slo_report(lake, BUILTIN, environment="staging", now=NOW)[0]["model"] == "qwen"
        ghost = slo_report(lake, BUILTIN, model="ghost", environment="staging", now=NOW)
        assert [(r["model"], r["status"]) for r in ghost] == [("ghost", "no data")]
        # llama with a 1 s threshold: every 20 s request is slow, the 0.5 s ones are not (sketch accuracy 0.5 %)
        strict = parse_slos('[[override]]\nmodel = "llama"\nenvironment = "*"\nlatency_threshold_ms = 1000\n'
                            'latency_target = 0.995\n')
        llama = _by_pair(slo_report(lake, strict, now=NOW))["llama", "production"]
        assert (llama["latency"]["threshold_ms"], llama["latency"]["bad"]) == (1000.0, 7)
        assert llama["latency"]["budget_remaining"] == pytest.approx(1 - 7 / 4000 / 0.005)
        assert llama["slo"] == "override[0]"
        with pytest.raises(ReportArgumentError):
            slo_report(lake, BUILTIN, window="forever", now=NOW)


# --- rollout gates from the SLO -----------------------------------------------------------------------------------

PLAYBOOK = """\
kind: canary
params: {model: llama, env: production, version: v2}
steps:
  - deploy
  - register
  - weight: 10
  - weight: {percent: 100, analysis: {max_error_rate: 0.05, max_p95_latency_ms: null}}
  - finalize
"""


def test_gates_a_playbook_leaves_out_come_from_the_slo(tmp_path):
    path = tmp_path / "pb.yaml"
    path.write_text(PLAYBOOK)
    book = parse_slos(OVERRIDES.replace('environment = "development"\navailability_target = 0.99',
                                        'environment = "production"\navailability_target = 0.995'),
                      origin=str(tmp_path / "slo.toml"))
    playbook = load_playbook(path, slos=book)
    derived = playbook.steps[2].gates
    assert derived.max_error_rate == pytest.approx(14.4 * 0.005) and derived.tolerated_errors == 1
    assert derived.max_p95_latency_ms is None  # latency target 90 %: a p95 gate would be stricter than the SLO
    assert derived.sources == {"max_error_rate": "slo.toml: availability 99.5 %, 14.4 × its 0.5 % budget"}
    explicit = playbook.steps[3].gates  # the playbook's own values win, and tolerate nothing unless told to
    assert (explicit.max_error_rate, explicit.tolerated_errors, explicit.max_p95_latency_ms) == (0.05, 0, None)
    assert explicit.sources == {}
    assert Playbook.from_spec(json.loads(json.dumps(playbook.to_spec()))) == playbook  # what resume reads
    assert "error rate ≤ 7.2%" in plan(playbook)[2] and "error rate ≤ 5%" in plan(playbook)[3]

    defaults = load_playbook(path, slos=BUILTIN).steps[2].gates  # llama in production: 99.9 %, 99 % ≤ 10 s
    assert (defaults.max_error_rate, defaults.tolerated_errors, defaults.max_p95_latency_ms) == (
        pytest.approx(0.0144), 1, 10_000.0)
    assert defaults.sources["max_p95_latency_ms"] == "built-in SLO: latency 99 % ≤ 10000 ms"
    # without SLO targets the loader keeps Gates' defaults, unless a gate says "slo"
    assert load_playbook(path).steps[2].gates == Gates()
    said = load_playbook(path, ["analysis.max_error_rate=slo"]).steps[2].gates
    assert (said.max_error_rate, said.tolerated_errors, said.max_p95_latency_ms) == (pytest.approx(0.0144), 1, None)
    # the command line wins over the SLO too
    cli = load_playbook(path, ["analysis.max_error_rate=0.1", "analysis.max_p95_latency_ms=800"], slos=book)
    assert (cli.steps[2].gates.max_error_rate, cli.steps[2].gates.max_p95_latency_ms) == (0.1, 800.0)
    assert cli.steps[2].gates.tolerated_errors == 0 and cli.steps[2].gates.sources == {}


@pytest.mark.parametrize(("line", "sets", "field", "message"), [
    ("analysis: {max_error_rate: sloo}\n", [], "analysis.max_error_rate", "expected a number or slo"),
    ("analysis: {tolerated_errors: -1}\n", [], "analysis.tolerated_errors", "must be at least 0"),
    ("analysis: {max_p95_latency_ms: 0}\n", [], "analysis.max_p95_latency_ms", "must be greater than 0"),
    ("", ["analysis.sources={}"], "--set analysis.sources", "unknown analysis field 'sources'"),
])
def test_bad_slo_gate_values(tmp_path, line, sets, field, message):
    path = tmp_path / "pb.yaml"
    path.write_text(PLAYBOOK + line)
    with pytest.raises(PlaybookError) as info:
        load_playbook(path, sets, slos=BUILTIN)
    assert info.value.field == field and message in str(info.value), str(info.value)


def _window(requests: int, errors: int, p95_ms: float | None = 200.0) -> WindowStats:
    return WindowStats(requests=requests, errors=errors, client_errors=0, error_rate=errors / requests,
                       p50_ms=p95_ms, p95_ms=p95_ms, ttft_p95_ms=None, ttft_count=0)


def test_slo_gates_judge_windows():
    gates = Gates(max_error_rate=0.0144, tolerated_errors=1, max_error_rate_increase=None,
                  max_p95_latency_ratio=None, max_p95_ttft_ratio=None, max_p95_latency_ms=10_000.0)
    one = {r.name: r for r in evaluate_gates(gates, _window(20, 1), None)}
    assert one["max_error_rate"].passed  # 5 % of a 20-request window is one error: tolerated
    assert one["max_error_rate"].detail == "error rate 5% (1/20) > 1.44%, but 1 error ≤ 1 tolerated"
    two = evaluate_gates(gates, _window(20, 2), None)
    assert failure_reason(two) == "max_error_rate failed: error rate 10% (2/20) > 1.44%"
    assert {r.name: r.passed for r in evaluate_gates(gates, _window(1000, 14), None)}["max_error_rate"]
    assert not {r.name: r.passed for r in evaluate_gates(gates, _window(1000, 15), None)}["max_error_rate"]
    slow = {r.name: r for r in evaluate_gates(gates, _window(100, 0, p95_ms=12_000.0), None)}
    assert not slow["max_p95_latency_ms"].passed
    assert slow["max_p95_latency_ms"].detail == "p95 latency 12000 ms > 10000 ms"
    unmeasured = {r.name: r for r in evaluate_gates(gates, _window(100, 0, p95_ms=None), None)}
    assert unmeasured["max_p95_latency_ms"].passed and unmeasured["max_p95_latency_ms"].skipped
