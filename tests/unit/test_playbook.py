"""Playbooks: the shipped four load and plan; every kind of mistake names the file, the line and the field."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from opsctl.deploy import DeployInputError
from opsctl.rollout.playbook import (
    KINDS,
    Gates,
    Playbook,
    PlaybookError,
    default_playbook,
    load_playbook,
    plan,
    summary,
)

REQUIRED = {"canary": ["model=demo-chat", "env=production", "version=v2"],
            "blue-green": ["model=demo-chat", "env=production", "version=v2"],
            "promote": ["model=demo-chat"],
            "rollback": ["model=demo-chat", "env=staging"]}

MINIMAL = """\
kind: canary
params:
  model: demo-chat
  env: staging
  version: v2
values:
  model: {name: "${model}"}
steps:
  - deploy
  - register
  - weight: 100
  - finalize
"""


def write(tmp_path: Path, text: str, name: str = "pb.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def error(path: Path, sets: list[str] | None = None, **params) -> PlaybookError:
    with pytest.raises(PlaybookError) as info:
        load_playbook(path, sets or [], params=params)
    return info.value


# --- the shipped playbooks -----------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_shipped_playbooks_load_plan_and_round_trip(kind):
    path = default_playbook(kind)
    assert path.name == f"{kind}.yaml" and path.is_file()
    playbook = load_playbook(path, REQUIRED[kind])
    assert playbook.kind == kind and playbook.path == path and playbook.description
    lines = plan(playbook)
    assert len(lines) == len(playbook.steps)
    assert [line.split(".")[0] for line in lines] == [str(i) for i in range(1, len(lines) + 1)]
    assert "demo-chat" in summary(playbook)
    spec = json.loads(json.dumps(playbook.to_spec()))  # JSON-able, as the rollout record stores it
    assert Playbook.from_spec(spec) == playbook
    assert Playbook.from_spec(spec).to_spec() == spec


def test_canary_steps_gates_and_values():
    playbook = load_playbook(default_playbook("canary"), REQUIRED["canary"])
    assert [s.kind for s in playbook.steps] == ["deploy", "wait_ready", "register", "smoke", "shadow", "weight",
                                                "weight", "weight", "finalize"]
    assert [s.args["percent"] for s in playbook.steps if s.kind == "weight"] == [10, 50, 100]
    smoke, shadow, finalize = playbook.steps[3], playbook.steps[4], playbook.steps[8]
    assert smoke.args == {"requests": 3, "kind": None} and smoke.gates is None
    assert shadow.args == {"percent": 20.0, "min_requests": 50, "timeout_s": 120.0}
    assert shadow.gates == Gates(min_requests=50, timeout_s=120.0)
    assert playbook.steps[5].gates == playbook.gates == Gates()
    assert finalize.args == {"drain_timeout_s": 60}
    assert playbook.steps[1].args == {} and playbook.readiness_timeout_s == 300
    assert playbook.values == {"model": {"name": "demo-chat"}}
    assert (playbook.model, playbook.environment, playbook.version, playbook.deployer) == (
        "demo-chat", "production", "v2", "local")
    lines = default_playbook("canary").read_text().splitlines()
    assert lines[playbook.steps[3].line - 1] == "  - smoke: {requests: 3}"
    assert "4. smoke: 3 requests (of the model's kind) through the gateway to the new release (must all " \
           "succeed)" == plan(playbook)[3]
    assert "20% of live requests" in plan(playbook)[4] and "p95 latency ≤ 1.5× stable + 50 ms" in plan(playbook)[4]


def test_blue_green_promote_and_rollback_shapes():
    blue_green = load_playbook(default_playbook("blue-green"), REQUIRED["blue-green"])
    assert [s.args["percent"] for s in blue_green.steps if s.kind == "weight"] == [100]
    promote = load_playbook(default_playbook("promote"), ["model=m", "approve=true"])
    assert promote.params["from"] == "staging" and promote.params["to"] == "production"
    assert promote.params["approve"] is True and promote.environment == "production" and promote.version is None
    rollback = load_playbook(default_playbook("rollback"), ["model=m", "env=staging", "to_revision=3"])
    assert rollback.steps[0].kind == "rollback" and rollback.steps[0].args == {"to_revision": 3}
    assert load_playbook(default_playbook("rollback"), ["model=m", "env=staging"]).steps[0].args == {
        "to_revision": None}
    assert "revision 3" in plan(rollback)[0]


# --- params, substitution and --set ------------------------------------------------------------------------------

def test_cli_params_then_sets_and_types(tmp_path):
    path = write(tmp_path, """\
        kind: canary
        params:
          model: null
          env: null
          version: null
          replicas: 1
          ratio: 1.5
          stream: false
          chart: helm/vllm-deployment
        values:
          model: {name: "${model}"}
          replicaCount: "${replicas}"
          label: "${model}-${version} $${literal}"
          stream: "${stream}"
        steps: [deploy, register, {weight: {percent: 100, analysis: {max_p95_latency_ratio: "${ratio}"}}}, finalize]
        """)
    playbook = load_playbook(path, ["version=1.10", "replicas=3", "stream=yes", "values.extra.rate=0.3",
                                    "values.model.path=/m", "values.flag=true", 'values.name="x"'],
                             params={"model": "meta/llama", "env": "staging", "version": "1.0", "chart": tmp_path,
                                     "deployer": "helm", "unused": None})
    assert playbook.params["version"] == "1.10"  # --set wins over the flag; a string stays a string
    assert playbook.params["chart"] == str(tmp_path) and playbook.deployer == "helm"
    assert playbook.values == {"model": {"name": "meta/llama", "path": "/m"}, "replicaCount": 3,
                               "label": "meta/llama-1.10 ${literal}", "stream": True,
                               "extra": {"rate": 0.3}, "flag": True, "name": "x"}
    assert playbook.steps[2].gates.max_p95_latency_ratio == 1.5
    assert "unused" not in playbook.params


def test_analysis_set_overrides_every_gate_and_shadow_args():
    playbook = load_playbook(default_playbook("canary"), [*REQUIRED["canary"], "analysis.interval_s=1",
                                                          "analysis.min_requests=5", "analysis.timeout_s=20",
                                                          "analysis.max_p95_ttft_ratio=null"])
    for gates in [playbook.gates, *(s.gates for s in playbook.steps if s.gates is not None)]:
        assert (gates.interval_s, gates.min_requests, gates.timeout_s, gates.max_p95_ttft_ratio) == (1, 5, 20, None)
    assert playbook.steps[4].args == {"percent": 20.0, "min_requests": 5, "timeout_s": 20.0}
    assert "TTFT" not in plan(playbook)[5]


def test_readiness_timeout_param_reaches_wait_ready():
    playbook = load_playbook(default_playbook("canary"), [*REQUIRED["canary"], "readiness_timeout_s=5"])
    assert playbook.readiness_timeout_s == 5 and "(timeout 5 s)" in plan(playbook)[1]


def test_step_shorthands_and_args(tmp_path):
    path = write(tmp_path, """\
        kind: canary
        params: {model: m, env: staging, version: "1"}
        steps:
          - deploy:
          - wait_ready
          - register
          - smoke: {requests: 20, kind: embeddings}
          - shadow: 0.5
          - pause: 1.5
          - weight: {percent: 50, analysis: {min_requests: 0, max_error_rate_increase: null}}
          - weight: 100
          - finalize: 0
        """)
    steps = load_playbook(path).steps
    assert [s.args for s in steps] == [
        {}, {}, {}, {"requests": 20, "kind": "embeddings"},
        {"percent": 0.5, "min_requests": 20, "timeout_s": 300.0}, {"seconds": 1.5}, {"percent": 50},
        {"percent": 100}, {"drain_timeout_s": 0}]
    assert steps[6].gates == Gates(min_requests=0, max_error_rate_increase=None)
    assert steps[7].gates == Gates()


# --- errors: file:line: field: message ---------------------------------------------------------------------------

def test_playbook_error_is_bad_input_with_its_parts(tmp_path):
    path = write(tmp_path, MINIMAL.replace("  - weight: 100\n", "  - weight: 101\n"))
    e = error(path)
    assert isinstance(e, DeployInputError) and e.status == 400
    assert (e.path, e.line, e.field) == (path, 11, "steps[2].weight.percent")
    assert str(e) == e.message == f"{path}:11: steps[2].weight.percent: must be between 1 and 100, got 101"


@pytest.mark.parametrize(("old", "new", "line", "field", "message"), [
    ("kind: canary\n", "kind: canary\ncolour: red\n", 2, "colour", "unknown key 'colour'"),
    ("kind: canary\n", "kind: rainbow\n", 1, "kind", "expected one of canary, blue-green, promote, rollback"),
    ("  - weight: 100\n", "  - weight: 0\n", 11, "steps[2].weight.percent", "between 1 and 100, got 0"),
    ("  - weight: 100\n", "  - weight: 50\n  - weight: 10\n  - weight: 100\n", 12, "steps[3]",
     "weights must increase: 10 after 50 (line 11)"),
    ("  - weight: 100\n", "  - weight: 10\n  - weight: 50\n", 12, "steps[3]", "the last weight must be 100"),
    ("  - weight: 100\n", "  - weight: ten\n", 11, "steps[2].weight.percent", "expected an integer, got a string"),
    ("  - register\n", "  - register\n  - launch\n", 11, "steps[2]", "unknown step 'launch'"),
    ("  - deploy\n  - register\n", "  - register\n  - deploy\n", 9, "steps[0]", "register must come after deploy"),
    ("  - finalize\n", "  - finalize\n  - weight: 100\n", 13, "steps[4]", "nothing may follow finalize"),
    ("  - weight: 100\n", "", 11, "steps[2]", "needs at least one weight step"),
    ("  - register\n", "", 8, "steps", "needs a register step"),
    ("  - weight: 100\n", "  - weight: 100\n    analysis: {min_requests: 5}\n", 11, "steps[2]",
     "indent the step's arguments under it"),
    ("  - weight: 100\n", "  - weight: {percent: 100, analysis: {max_p99: 1}}\n", 11,
     "steps[2].weight.analysis.max_p99", "unknown key 'max_p99'"),
    ("  - weight: 100\n", "  - shadow: {percent: 0}\n  - weight: 100\n", 11, "steps[2].shadow.percent",
     "must be greater than 0"),
    ("  - weight: 100\n", "  - weight: 100\n  - shadow: 5\n", 12, "steps[3]", "shadow must come before"),
    ("  - register\n", "  - register\n  - smoke: {requests: 21}\n", 11, "steps[2].smoke.requests",
     "between 1 and 20"),
    ("  - register\n", "  - register\n  - smoke: {kind: images}\n", 11, "steps[2].smoke.kind",
     "expected one of chat, completions, embeddings"),
    ("  - deploy\n", "  - deploy: {now: true}\n", 9, "steps[0].deploy.now", "unknown key 'now'"),
    ("  - register\n", "  - register: 5\n", 10, "steps[1].register", "register takes no arguments"),
    ("steps:\n", "analysis: {max_error_rate: 1.5}\nsteps:\n", 8, "analysis.max_error_rate", "between 0 and 1"),
    ("steps:\n", "analysis: {interval_s: 0}\nsteps:\n", 8, "analysis.interval_s", "greater than 0"),
    ("steps:\n", "readiness_timeout_s: soon\nsteps:\n", 8, "readiness_timeout_s", "expected an integer"),
    ("  model: {name: \"${model}\"}\n", "  model: {name: \"${modle}\"}\n", 7, "values.model.name",
     "unknown param 'modle'"),
    ("  version: v2\n", "  version: null\n", 5, "params.version",
     "required param version not given (give it with --set version=VALUE)"),
    ("  env: staging\n", "  env: prod\n", 4, "params.env", "unknown environment 'prod'"),
    ("  version: v2\n", "  version: v2\n  version: v3\n", 6, "params.version", "duplicate key 'version'"),
    ("  version: v2\n", "  version: [v2]\n", 5, "params.version", "single value"),
    ("  version: v2\n", "  rev: {type: integer}\n", 5, "params.rev.type", "expected one of str, int"),
    ("  version: v2\n", "  version: v2\n  [a]: 1\n", 6, "params", "keys must be plain strings"),
    ("kind: canary\n", "kind: blue-green\n", 11, "steps[2]", None),
])
def test_errors_name_file_line_and_field(tmp_path, old, new, line, field, message):
    text = MINIMAL.replace(old, new)
    if new == "kind: blue-green\n":  # two weight steps: blue-green switches at once
        text = text.replace("  - weight: 100\n", "  - weight: 50\n  - weight: 100\n")
        message = "exactly one step weight: 100"
    assert text != MINIMAL or old == new
    path = write(tmp_path, text)
    e = error(path)
    assert (e.line, e.field) == (line, field), str(e)
    assert str(e).startswith(f"{path}:{line}: {field}: ") and message in str(e), str(e)


@pytest.mark.parametrize(("text", "line", "message"), [
    ("kind: canary\nsteps: [deploy\n", 3, "not valid YAML"),
    ("kind: canary\n  steps: x\n", 2, "not valid YAML"),
    ("", 1, "empty playbook"),
    ("- deploy\n", 1, "expected a mapping"),
    ("kind: canary\n---\nkind: canary\n", 2, "not valid YAML"),
])
def test_yaml_errors_name_the_line(tmp_path, text, line, message):
    path = write(tmp_path, text)
    e = error(path)
    assert e.line == line and str(e).startswith(f"{path}:{line}: ") and message in str(e), str(e)


def test_missing_kind_and_missing_file(tmp_path):
    e = error(write(tmp_path, "steps: [deploy]\n"))
    assert e.field == "kind" and "missing kind" in str(e)
    e = error(tmp_path / "nope.yaml")
    assert str(e) == f"{tmp_path / 'nope.yaml'}: no such playbook file"
    e = error(tmp_path)  # a directory
    assert "cannot read the playbook" in str(e)


@pytest.mark.parametrize(("sets", "field", "message"), [
    (["version"], "--set", "bad --set 'version': expected NAME=VALUE"),
    (["=3"], "--set", "expected NAME=VALUE"),
    (["colour=red"], "--set colour", "unknown param 'colour': this playbook's params are model, env, version"),
    (["analysis.p99=1"], "--set analysis.p99", "unknown analysis field 'p99'"),
    (["analysis.min_requests=-1"], "--set analysis.min_requests", "must be at least 0"),
    (["analysis.interval_s=fast"], "--set analysis.interval_s", "expected a number"),
    (["values.a..b=1"], "--set values.a..b", "bad key path"),
    (["values.model.name.x=1"], "--set values.model.name.x", "values.model.name is a string, not a mapping"),
    (["values.x=[1"], "--set values.x", "not valid YAML"),
    (["env=prod"], "--set env", "unknown environment 'prod'"),
])
def test_bad_sets(tmp_path, sets, field, message):
    path = write(tmp_path, MINIMAL)
    e = error(path, sets)
    assert e.field == field and message in str(e), str(e)
    assert str(e).startswith(f"{path}")


def test_typed_param_from_set_and_from_cli(tmp_path):
    path = write(tmp_path, MINIMAL.replace("  version: v2\n", "  version: v2\n  replicas: 1\n  on: false\n"))
    assert "expected an integer, got 'three'" in str(error(path, ["replicas=three"]))
    assert error(path, ["on=maybe"]).field == "--set on"  # `on:` is a key named "on", not YAML 1.1's true
    assert load_playbook(path, ["on=yes", "replicas=2"]).params["on"] is True
    e = error(path, replicas="3x")
    assert e.field == "params.replicas (from the command line)" and e.line == 6


def test_needed_params_and_promotion_to_itself(tmp_path):
    path = write(tmp_path, MINIMAL.replace("  version: v2\n", ""))
    e = error(path)
    assert e.field == "params" and "needs param 'version'" in str(e)
    assert load_playbook(path, params={"version": "v3"}).version == "v3"  # a CLI flag can supply it
    e = error(default_playbook("promote"), ["model=m", "from=production"])  # `to` defaults to production
    assert e.field == "params.to" and "promotion from 'production' to itself" in str(e)
    e = error(default_playbook("promote"), ["model=m", "from=staging", "to=staging"])
    assert e.field == "--set to" and "promotion from 'staging' to itself" in str(e)


def test_rollback_playbook_rules(tmp_path):
    path = write(tmp_path, "kind: rollback\nparams: {model: m, env: staging}\nsteps: [rollback, deploy]\n")
    assert "exactly one step, rollback" in str(error(path))
    path = write(tmp_path, MINIMAL.replace("  - finalize\n", "  - finalize\n  - rollback\n"))
    assert "belongs in rollback playbooks" in str(error(path))
    path = write(tmp_path, "kind: rollback\nparams: {model: m, env: staging}\nsteps: [{rollback: 0}]\n")
    e = error(path)
    assert (e.line, e.field) == (3, "steps[0].rollback.to_revision")


def test_from_spec_refuses_foreign_specs():
    playbook = load_playbook(default_playbook("canary"), REQUIRED["canary"])
    spec = playbook.to_spec()
    with pytest.raises(PlaybookError, match="unsupported playbook spec format"):
        Playbook.from_spec({**spec, "format": 99})
    broken = {**spec, "steps": [{"kind": "deploy"}]}
    with pytest.raises(PlaybookError, match="malformed playbook spec"):
        Playbook.from_spec(broken)


def test_default_playbook_unknown_kind():
    with pytest.raises(PlaybookError, match="no default playbook for 'yolo'"):
        default_playbook("yolo")
