"""The config file format (`apiVersion: fleetgate/v1`): its sections, fields, defaults and checks.

A field left out means its default (no limit, every model, …): a file states the whole object,
so what git shows is what the gateway runs. Every problem is collected with its file, line and
field before anything is sent to the gateway; one bad field stops the whole apply.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from gateway.auth.principal import ROLES
from gateway.store.models import BUDGET_PERIODS, MODEL_STATUSES
from gateway.store.validation import INT32_MAX, MAX_NAME_LENGTH, MAX_PRICE
from opsctl.declarative.source import (
    ConfigInvalid,
    Document,
    Problem,
    line_of,
    mapping_items,
    read_documents,
    scalar_value,
)

API_VERSION = "fleetgate/v1"
DEFAULT_OWNER = "default"
DEFAULT_ENVIRONMENT = "production"
# The admin API's own name patterns (gateway/admin/orgs.py; a unit test keeps them equal).
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", re.ASCII)
MODEL_NAME_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._:-]|/(?!/)){0,127}(?<!/)", re.ASCII)
EMAIL_RE = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")  # gateway/admin/identity.py
MAX_USD = 1_000_000_000  # gateway/admin/budgets.py
MAX_WEIGHT = 1_000_000  # gateway/admin/registry.py
MAX_URL = 2048
MICROS = 1_000_000
Ident = tuple[str | None, ...]  # what names an object within its kind
# Endpoint statuses a config may ask for; "unhealthy" is the health checker's verdict on a "ready" one.
ENDPOINT_STATUSES = ("ready", "disabled", "draining")
# Field names that would hold a secret: secrets are made by the gateway and never written in a file.
SECRET_FIELDS = frozenset({"key", "secret", "token", "client_secret", "api_key", "password"})
SECRET_PREFIXES = ("sk-fg-", "fgp_")  # an API key, a personal admin token

# Kinds in the order they are created (a key needs its org, an endpoint its model); removed in reverse.
KINDS = ("org", "user", "service_account", "key", "budget", "model", "endpoint")
SECTIONS = {"orgs": "org", "users": "user", "service_accounts": "service_account", "keys": "key",
            "budgets": "budget", "models": "model"}


# ---- field checks: return the normalized value, or raise ValueError with the reason ----

def _integer(minimum: int, maximum: int = INT32_MAX) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"must be an integer, got {value!r}")
        if not minimum <= value <= maximum:
            raise ValueError(f"must be a positive integer (at most {maximum}), got {value}" if minimum == 1
                             else f"must be between {minimum} and {maximum}, got {value}")
        return value
    return check


def _number(maximum: float, what: str) -> Callable[[Any], float]:
    def check(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ValueError(f"must be a number, got {value!r}")
        if not 0 <= value <= maximum:
            raise ValueError(f"must be between 0 and {maximum:g} ({what}), got {value}")
        return float(value)
    return check


def _usd(value: Any) -> float:
    """Dollars as the gateway keeps them: whole micro-USD."""
    return round(_number(MAX_USD, "USD")(value) * MICROS) / MICROS


def _string(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"must be a string, got {value!r}")
    return value


def _name(value: Any) -> str:
    if not NAME_RE.fullmatch(_string(value)):
        raise ValueError(f"must be 1-64 letters, digits, '.', '_' or '-' (starting with a letter or digit), "
                         f"got {value!r}")
    return value


def _model_name(value: Any) -> str:
    if not MODEL_NAME_RE.fullmatch(_string(value)):
        raise ValueError(f"must be a model name (letters, digits, '.', '_', '-', ':' or single '/'), got {value!r}")
    return value


def _choice(choices: tuple[str, ...]) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}, got {value!r}")
        return value
    return check


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false, got {value!r}")
    return value


def _optional(check: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda value: None if value is None else check(value)


def _names(item: Callable[[Any], str], *, ordered: bool) -> Callable[[Any], tuple[str, ...]]:
    """A list of names without repeats; sorted unless its order means something (a fallback chain)."""
    def check(value: Any) -> tuple[str, ...]:
        if value is None:
            return ()
        if not isinstance(value, list):
            raise ValueError(f"must be a list, got {value!r}")
        names = [item(v) for v in value]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"lists {', '.join(repeated)} more than once")
        return tuple(names) if ordered else tuple(sorted(names))
    return check


def _email(value: Any) -> str:
    text = _string(value)
    if not EMAIL_RE.fullmatch(text) or len(text) > MAX_NAME_LENGTH or not text.isprintable():
        raise ValueError(f"must look like name@example.com, got {value!r}")
    return text


def _time(value: Any) -> datetime:
    """A moment with a time zone (YAML timestamps and ISO-8601 strings), in UTC."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(f"must be an ISO-8601 time such as 2026-12-31T00:00:00Z, got {value!r}") from None
    if not isinstance(value, datetime):
        raise ValueError(f"must be an ISO-8601 time such as 2026-12-31T00:00:00Z, got {value!r}")
    if value.tzinfo is None:
        raise ValueError(f"must include a time zone (e.g. 2026-12-31T00:00:00Z), got {value.isoformat()!r}")
    return value.astimezone(UTC)


def _url(value: Any) -> str:
    text = _string(value)
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number in 0-65535
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname or len(text) > MAX_URL:
        raise ValueError(f"must be an http(s) URL, got {value!r}")
    return text.rstrip("/")


# ---- the format ----

@dataclass(frozen=True, slots=True)
class FieldSpec:
    name: str
    check: Callable[[Any], Any]
    default: Any = None
    required: bool = False
    identity: bool = False  # part of what names the object (never changed in place)


@dataclass(frozen=True, slots=True)
class KindSpec:
    kind: str
    fields: tuple[FieldSpec, ...]
    nested: tuple[str, KindSpec] | None = None  # (field, kind) of a list of sub-objects: a model's endpoints

    def spec(self, name: str) -> FieldSpec | None:
        return next((f for f in self.fields if f.name == name), None)


_POSITIVE = _optional(_integer(1))
ENDPOINT = KindSpec("endpoint", (
    FieldSpec("url", _url, required=True, identity=True),
    FieldSpec("release", _name, "stable"),
    FieldSpec("weight", _integer(0, MAX_WEIGHT), 100),
    FieldSpec("status", _choice(ENDPOINT_STATUSES), "ready"),
))
SPECS: dict[str, KindSpec] = {
    "org": KindSpec("org", (
        FieldSpec("name", _name, required=True, identity=True),
        FieldSpec("rpm_limit", _POSITIVE), FieldSpec("tpm_limit", _POSITIVE),
    )),
    "user": KindSpec("user", (
        FieldSpec("name", _name, required=True, identity=True),
        FieldSpec("role", _choice(ROLES), required=True),
        FieldSpec("org", _optional(_name)),
        FieldSpec("email", _optional(_email)),
        FieldSpec("disabled", _boolean, False),
    )),
    "service_account": KindSpec("service_account", (
        FieldSpec("name", _name, required=True, identity=True),
        FieldSpec("role", _choice(ROLES), required=True),
        FieldSpec("org", _optional(_name)),
        FieldSpec("disabled", _boolean, False),
    )),
    "key": KindSpec("key", (
        FieldSpec("org", _name, required=True, identity=True),
        FieldSpec("name", _name, required=True, identity=True),
        FieldSpec("rpm_limit", _POSITIVE), FieldSpec("tpm_limit", _POSITIVE),
        FieldSpec("models", _names(_model_name, ordered=False), ()),
        FieldSpec("environment", _optional(_name)),
        FieldSpec("require_signature", _boolean, False),
        FieldSpec("expires_at", _optional(_time)),
    )),
    "budget": KindSpec("budget", (
        FieldSpec("org", _name, required=True, identity=True),
        FieldSpec("key", _optional(_name), identity=True),
        FieldSpec("period", _choice(BUDGET_PERIODS), "monthly"),
        FieldSpec("usd", _usd, required=True),
        FieldSpec("soft_limit_pct", _integer(0, 100), 80),
    )),
    "model": KindSpec("model", (
        FieldSpec("environment", _name, DEFAULT_ENVIRONMENT, identity=True),
        FieldSpec("name", _model_name, required=True, identity=True),
        FieldSpec("input_price", _number(MAX_PRICE, "USD per 1M tokens"), 0.0),
        FieldSpec("output_price", _number(MAX_PRICE, "USD per 1M tokens"), 0.0),
        FieldSpec("max_tokens", _integer(1), 1024),
        FieldSpec("fallbacks", _names(_model_name, ordered=True), ()),
        FieldSpec("status", _choice(MODEL_STATUSES), "active"),
    ), nested=("endpoints", ENDPOINT)),
    "endpoint": ENDPOINT,
}


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a declared object is written: file, line, its path (`keys[1]`) and each field's line."""

    file: str
    line: int
    path: str
    field_lines: dict[str, int] = field(default_factory=dict)

    def problem(self, name: str | None, message: str) -> Problem:
        if name is None:
            return Problem(self.file, self.line, self.path, message)
        return Problem(self.file, self.field_lines.get(name, self.line), f"{self.path}.{name}", message)


@dataclass(frozen=True, slots=True)
class Item:
    """One object, as declared (`origin` set) or as the gateway has it (`id` set).

    `ident` names it (org: (name,); key: (org, name); budget: (org, key or None); model:
    (environment, name); endpoint: (environment, model, url)); `fields` are the managed values.
    """

    kind: str
    ident: Ident
    fields: dict[str, Any]
    origin: Origin | None = None
    id: str | None = None

    @property
    def label(self) -> str:
        return label(self.kind, self.ident)


def label(kind: str, ident: Ident) -> str:
    """How plans and errors name an object: `acme`, `acme/web`, `production/llama http://…`."""
    if kind == "endpoint":
        return f"{ident[0]}/{ident[1]} {ident[2]}"
    return "/".join(part for part in ident if part is not None)


@dataclass
class Config:
    """Every declared object, by kind then identity, and the owner label the files carry."""

    owner: str = DEFAULT_OWNER
    items: dict[str, dict[Ident, Item]] = field(
        default_factory=lambda: {kind: {} for kind in KINDS})

    def count(self) -> int:
        return sum(len(objects) for objects in self.items.values())


class _Reader:
    """Turns composed documents into a `Config`, collecting every problem on the way."""

    def __init__(self) -> None:
        self.config = Config()
        self.problems: list[Problem] = []
        self._owner_at: Problem | None = None

    def read(self, document: Document) -> None:
        root = document.root
        if root is None:
            self.problems.append(Problem(document.file, 0, "", f"empty file: expected apiVersion: {API_VERSION}"))
            return
        if not isinstance(root, yaml.MappingNode):
            self.problems.append(Problem(document.file, line_of(root), "", "the file must be a mapping "
                                         f"(apiVersion: {API_VERSION}, owner, orgs, users, keys, …)"))
            return
        seen: set[str] = set()
        version_found = False
        for name, key_node, value in mapping_items(root):
            at = Problem(document.file, line_of(key_node), name or "", "")
            if name is None or name in seen:
                self._problem(at, "duplicate field" if name else "field names must be strings")
                continue
            seen.add(name)
            if name == "apiVersion":
                version_found = True
                if self._value(at, value) != API_VERSION:
                    self._problem(at, f"must be {API_VERSION!r}")
            elif name == "owner":
                self._owner(at, value)
            elif name in SECTIONS:
                self._section(document.file, name, value)
            else:
                self._problem(at, f"unknown field (expected apiVersion, owner, {', '.join(SECTIONS)})")
        if not version_found:
            self.problems.append(Problem(document.file, line_of(root), "apiVersion",
                                         f"missing: every file starts with apiVersion: {API_VERSION}"))

    def _problem(self, at: Problem, message: str) -> None:
        self.problems.append(Problem(at.file, at.line, at.path, message))

    def _value(self, at: Problem, node: yaml.Node) -> Any:
        try:
            return scalar_value(node)
        except ValueError as e:
            self._problem(at, str(e))
            return None

    def _owner(self, at: Problem, node: yaml.Node) -> None:
        value = self._value(at, node)
        try:
            owner = _name(value)
        except ValueError as e:
            self._problem(at, str(e))
            return
        if self._owner_at is not None and owner != self.config.owner:
            first = self._owner_at
            self._problem(at, f"{owner!r} differs from {self.config.owner!r} ({first.file}:{first.line}): "
                              "all files of one config carry the same owner")
            return
        self.config.owner, self._owner_at = owner, at

    def _section(self, file: str, section: str, node: yaml.Node) -> None:
        if isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null":
            return  # "keys:" with nothing under it
        if not isinstance(node, yaml.SequenceNode):
            self._problem(Problem(file, line_of(node), section, ""), "must be a list")
            return
        for index, entry in enumerate(node.value):
            self._object(SPECS[SECTIONS[section]], entry, file, f"{section}[{index}]", None)

    def _object(self, spec: KindSpec, node: yaml.Node, file: str, path: str,
                parent: Ident | None) -> None:
        if not isinstance(node, yaml.MappingNode):
            self._problem(Problem(file, line_of(node), path, ""), f"must be a mapping of {spec.kind} fields")
            return
        origin = Origin(file, line_of(node), path)
        values, problems_before = {}, len(self.problems)
        nested_name = spec.nested[0] if spec.nested else None
        nested_node = None
        for name, key_node, value_node in mapping_items(node):
            at = Problem(file, line_of(key_node), f"{path}.{name}", "")
            if name is None or name in origin.field_lines:
                self._problem(at, "duplicate field" if name else "field names must be strings")
                continue
            origin.field_lines[name] = line_of(key_node)
            if name == nested_name:
                nested_node = value_node
            elif (field_spec := spec.spec(name)) is None:
                self._unknown(at, spec, name)
            else:
                values[name] = self._field(at, field_spec, value_node)
        for field_spec in spec.fields:
            if field_spec.name not in values:
                if field_spec.required:
                    self.problems.append(origin.problem(None, f"{field_spec.name!r} is required"))
                values[field_spec.name] = field_spec.default
        if len(self.problems) > problems_before:
            return
        ident = tuple(values.pop(f.name) for f in spec.fields if f.identity)
        item = Item(spec.kind, (*(parent or ()), *ident), values, origin)
        self._add(item)
        if spec.nested and nested_node is not None:
            self._nested(spec.nested[1], nested_node, origin, f"{path}.{spec.nested[0]}", item.ident)

    def _nested(self, spec: KindSpec, node: yaml.Node, origin: Origin, path: str,
                parent: Ident) -> None:
        if isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null":
            return
        if not isinstance(node, yaml.SequenceNode):
            self._problem(Problem(origin.file, line_of(node), path, ""), "must be a list")
            return
        for index, entry in enumerate(node.value):
            self._object(spec, entry, origin.file, f"{path}[{index}]", parent)

    def _unknown(self, at: Problem, spec: KindSpec, name: str) -> None:
        if name in SECRET_FIELDS:
            self._problem(at, "secrets never go in config files: the gateway makes them when it creates the "
                              "object (see --secrets-out)")
            return
        known = [f.name for f in spec.fields] + ([spec.nested[0]] if spec.nested else [])
        self._problem(at, f"unknown field (a {spec.kind} has {', '.join(known)})")

    def _field(self, at: Problem, spec: FieldSpec, node: yaml.Node) -> Any:
        if isinstance(node, yaml.MappingNode):
            self._problem(at, "must not be a mapping")
            return None
        value = self._value(at, node)
        if any(isinstance(v, str) and v.startswith(SECRET_PREFIXES) for v in _leaves(value)):
            self._problem(at, "looks like a secret: secrets never go in config files")
            return None
        if value is None and spec.required:
            self._problem(at, "is required")
            return None
        if value is None and spec.default is not None:
            return spec.default
        try:
            return spec.check(value)
        except ValueError as e:
            self._problem(at, str(e))
            return None

    def _add(self, item: Item) -> None:
        known = self.config.items[item.kind]
        first = known.get(item.ident)
        if first is not None and first.origin is not None and item.origin is not None:
            self.problems.append(item.origin.problem(None, f"duplicate {item.kind} {item.label!r} (first at "
                                                           f"{first.origin.file}:{first.origin.line})"))
            return
        known[item.ident] = item


def _leaves(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else [value]


def parse(documents: list[Document]) -> Config:
    """Every document as one `Config`.

    Raises:
        ConfigInvalid: with every problem found, each naming file, line and field.
    """
    reader = _Reader()
    for document in documents:
        reader.read(document)
    if reader.problems:
        raise ConfigInvalid(reader.problems)
    return reader.config


def load(path: Path, root: Path | None = None) -> Config:
    """Read a config file, or a directory of them (*.yaml, *.yml, in name order); name files
    relative to `root` when given.

    Raises:
        ConfigInvalid: unreadable or invalid files, each problem with file, line and field.
    """
    return parse(read_documents(path, root))
