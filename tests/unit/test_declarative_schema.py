"""The config file format: what a valid file means, and every bad one named by file, line and field."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from opsctl.declarative import schema
from opsctl.declarative.schema import load
from opsctl.declarative.source import ConfigInvalid

GOOD = """\
apiVersion: fleetgate/v1
owner: platform
orgs:
  - name: acme
    rpm_limit: 600
users:
  - {name: alice, role: operator, org: acme, email: alice@example.com}
service_accounts:
  - {name: ci, role: admin}
keys:
  - org: acme
    name: web
    models: [llama, gemma]
    expires_at: 2030-01-01T01:00:00+01:00
budgets:
  - {org: acme, usd: 12.3456789}
  - {org: acme, key: web, usd: 1, period: daily}
models:
  - name: meta-llama/Llama-3.1-8B
    environment: staging
    input_price: 1
    fallbacks: [gemma]
    endpoints:
      - url: http://10.0.0.1:8000/
      - {url: http://10.0.0.2:8000, release: canary, weight: 5, status: draining}
  - name: gemma
    environment: staging
"""


def write(tmp_path: Path, text: str, name: str = "fleet.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def problems(path: Path) -> list[str]:
    with pytest.raises(ConfigInvalid) as e:
        load(path)
    return e.value.lines()


def test_a_valid_file_reads_with_defaults_and_normalized_values(tmp_path):
    config = load(write(tmp_path, GOOD))
    items = config.items
    assert config.owner == "platform" and config.count() == 10
    assert items["org"][("acme",)].fields == {"rpm_limit": 600, "tpm_limit": None}
    assert items["user"][("alice",)].fields == {"role": "operator", "org": "acme", "email": "alice@example.com",
                                                "disabled": False}
    key = items["key"][("acme", "web")].fields
    assert key["models"] == ("gemma", "llama")  # a set of models: sorted
    assert key["expires_at"] == datetime(2030, 1, 1, tzinfo=UTC) and key["environment"] is None
    assert key["require_signature"] is False and key["rpm_limit"] is None
    assert items["budget"][("acme", None)].fields == {"period": "monthly", "usd": 12.345679, "soft_limit_pct": 80}
    assert items["budget"][("acme", "web")].fields["period"] == "daily"
    model = items["model"][("staging", "meta-llama/Llama-3.1-8B")].fields
    assert model == {"input_price": 1.0, "output_price": 0.0, "max_tokens": 1024, "fallbacks": ("gemma",),
                     "status": "active"}
    endpoints = items["endpoint"]
    assert endpoints[("staging", "meta-llama/Llama-3.1-8B", "http://10.0.0.1:8000")].fields == {
        "release": "stable", "weight": 100, "status": "ready"}
    assert endpoints[("staging", "meta-llama/Llama-3.1-8B", "http://10.0.0.2:8000")].fields["status"] == "draining"
    assert load(write(tmp_path, "apiVersion: fleetgate/v1\n", "empty.yaml")).owner == "default"


@pytest.mark.parametrize(("text", "expected"), [
    ("orgs:\n  - name: acme\n    rpm_limit: -5\n",
     "fleet.yaml:4: orgs[0].rpm_limit: must be a positive integer (at most 2147483647), got -5"),
    ("orgs:\n  - name: acme\n    rpm: 5\n", "fleet.yaml:4: orgs[0].rpm: unknown field (a org has name, rpm_limit"),
    ("orgs:\n  - name: acme\n  - name: acme\n", "fleet.yaml:4: orgs[1]: duplicate org 'acme' (first at "),
    ("orgs:\n  - name: acme\n    name: beta\n", "fleet.yaml:4: orgs[0].name: duplicate field"),
    ("orgs:\n  - name: 'bad name!'\n", "fleet.yaml:3: orgs[0].name: must be 1-64 letters"),
    ("orgs:\n  - rpm_limit: 5\n", "fleet.yaml:3: orgs[0]: 'name' is required"),
    ("orgs: acme\n", "fleet.yaml:2: orgs: must be a list"),
    ("orgs:\n  - acme\n", "fleet.yaml:3: orgs[0]: must be a mapping of org fields"),
    ("keys:\n  - {org: a, name: w, key: abc}\n", "fleet.yaml:3: keys[0].key: secrets never go in config files"),
    ("service_accounts:\n  - {name: ci, role: admin, client_secret: x}\n",
     "fleet.yaml:3: service_accounts[0].client_secret: secrets never go in config files"),
    ("users:\n  - {name: a, role: admin, token: x}\n", "fleet.yaml:3: users[0].token: secrets never go"),
    ("budgets:\n  - {org: a, key: sk-fg-abcdef, usd: 1}\n", "fleet.yaml:3: budgets[0].key: looks like a secret"),
    ("keys:\n  - {org: a, name: w, models: [m, m]}\n", "fleet.yaml:3: keys[0].models: lists m more than once"),
    ("keys:\n  - {org: a, name: w, expires_at: 2030-01-01T00:00:00}\n",
     "fleet.yaml:3: keys[0].expires_at: must include a time zone"),
    ("keys:\n  - {org: a, name: w, require_signature: maybe}\n",
     "fleet.yaml:3: keys[0].require_signature: must be true or false, got 'maybe'"),
    ("users:\n  - {name: a, role: root}\n", "fleet.yaml:3: users[0].role: must be one of viewer, operator, admin"),
    ("users:\n  - {name: a, role: admin, email: a@b@c.d}\n", "fleet.yaml:3: users[0].email: must look like"),
    ("budgets:\n  - {org: a, usd: -1}\n", "fleet.yaml:3: budgets[0].usd: must be between 0 and 1e+09"),
    ("budgets:\n  - {org: a, usd: 1, period: weekly}\n", "fleet.yaml:3: budgets[0].period: must be one of daily"),
    ("models:\n  - name: m\n    endpoints:\n      - url: ftp://x\n",
     "fleet.yaml:5: models[0].endpoints[0].url: must be an http(s) URL, got 'ftp://x'"),
    ("models:\n  - name: m\n    endpoints:\n      - {url: 'http://h:1', status: unhealthy}\n",
     "fleet.yaml:5: models[0].endpoints[0].status: must be one of ready, disabled, draining"),
    ("models:\n  - {name: m, input_price: .nan}\n", "fleet.yaml:3: models[0].input_price: must be a number"),
    ("models:\n  - {name: m, max_tokens: 0}\n", "fleet.yaml:3: models[0].max_tokens: must be a positive integer"),
    ("colour: blue\n", "fleet.yaml:2: colour: unknown field (expected apiVersion, owner, orgs"),
    ("owner: 'a b'\n", "fleet.yaml:2: owner: must be 1-64 letters"),
])
def test_each_problem_names_file_line_and_field(tmp_path, text, expected):
    found = problems(write(tmp_path, "apiVersion: fleetgate/v1\n" + text))
    assert any(line.startswith(f"{tmp_path}/{expected}") for line in found), found


def test_every_problem_is_reported_at_once(tmp_path):
    found = problems(write(tmp_path, "apiVersion: fleetgate/v1\norgs:\n  - {name: a, rpm_limit: 0}\n"
                                     "keys:\n  - {org: a, name: w, tpm_limit: x, secret: s}\n"))
    assert [line.split(": ")[1] for line in found] == ["orgs[0].rpm_limit", "keys[0].tpm_limit", "keys[0].secret"]


def test_file_level_problems(tmp_path):
    assert problems(write(tmp_path, "orgs: []\n")) == [f"{tmp_path}/fleet.yaml:1: apiVersion: missing: every file "
                                                       "starts with apiVersion: fleetgate/v1"]
    assert "apiVersion: must be 'fleetgate/v1'" in problems(write(tmp_path, "apiVersion: v2\n"))[0]
    assert problems(write(tmp_path, "apiVersion: fleetgate/v1\norgs: [\n"))[0].startswith(
        f"{tmp_path}/fleet.yaml:3: not valid YAML")
    assert "empty file" in problems(write(tmp_path, ""))[0]
    assert "must be a mapping" in problems(write(tmp_path, "- a\n"))[0]
    assert problems(tmp_path / "missing.yaml") == [f"{tmp_path}/missing.yaml: no such file or directory"]
    empty = tmp_path / "empty-dir"
    empty.mkdir()
    assert "no *.yaml or *.yml file" in problems(empty)[0]


def test_a_directory_is_one_config_in_name_order(tmp_path):
    (tmp_path / "conf").mkdir()
    write(tmp_path / "conf", "apiVersion: fleetgate/v1\nowner: team\norgs: [{name: acme}]\n", "10-orgs.yaml")
    write(tmp_path / "conf", "apiVersion: fleetgate/v1\nkeys: [{org: acme, name: web}]\n", "20-keys.yml")
    write(tmp_path / "conf", "not: yaml config\n", "README.md")  # not a config file: ignored
    config = load(tmp_path / "conf")
    assert config.owner == "team" and set(config.items["key"]) == {("acme", "web")}

    write(tmp_path / "conf", "apiVersion: fleetgate/v1\nowner: other\norgs:\n  - {name: acme}\n", "30-more.yaml")
    found = problems(tmp_path / "conf")
    assert found == [
        f"{tmp_path}/conf/30-more.yaml:2: owner: 'other' differs from 'team' ({tmp_path}/conf/10-orgs.yaml:2): "
        "all files of one config carry the same owner",
        f"{tmp_path}/conf/30-more.yaml:4: orgs[0]: duplicate org 'acme' (first at {tmp_path}/conf/10-orgs.yaml:3)",
    ]


def test_patterns_and_bounds_are_the_admin_apis():
    """The file is checked before any write with the admin API's own rules, so nothing it accepts is refused later."""
    from gateway.admin import budgets, identity, orgs, registry

    assert schema.NAME_RE.pattern == orgs.NAME_RE.pattern
    assert schema.MODEL_NAME_RE.pattern == orgs.MODEL_NAME_RE.pattern
    assert schema.EMAIL_RE.pattern == identity.EMAIL_RE.pattern
    assert (schema.MAX_USD, schema.MAX_WEIGHT) == (budgets.MAX_USD, registry.MAX_WEIGHT)
