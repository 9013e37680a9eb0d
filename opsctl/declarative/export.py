"""Today's gateway state as one config file that applies back with "no changes".

Fields at their default are left out (a config states only what differs), secrets are never
there to export, revoked keys are history; disabled users and service accounts stay, disabled.
"""

from __future__ import annotations

import json
from typing import Any

import yaml

from opsctl.declarative.plan import jsonable
from opsctl.declarative.schema import API_VERSION, DEFAULT_OWNER, SECTIONS, SPECS, Item
from opsctl.declarative.state import State

HEADER = "# Written by `opsctl export`; apply it with `opsctl apply -f FILE`.\n"


def _entry(item: Item) -> dict[str, Any]:
    """The item as a config entry: identity fields first, then every field that is not its default."""
    spec = SPECS[item.kind]
    names = [f.name for f in spec.fields if f.identity]
    ident = item.ident[-len(names):]  # an endpoint's ident starts with its model's
    named = sorted(zip(names, ident, strict=True), key=lambda pair: pair[0] != "name")  # the name reads first
    entry = {name: value for name, value in named if value is not None}
    for f in spec.fields:
        if not f.identity and item.fields.get(f.name) != f.default:
            entry[f.name] = jsonable(item.fields[f.name])
    return entry


def export_config(state: State, owner: str | None = None) -> dict[str, Any]:
    """The config document of every object (or of those `owner` owns), sorted by name.

    A model is written when it or one of its endpoints is owned: endpoints live inside their model.
    """
    def wanted(item: Item) -> bool:
        row = state.owners.get((item.kind, item.id or ""))
        return owner is None or (row is not None and row.owner == owner)

    endpoints = sorted((e for e in state.all("endpoint") if wanted(e)), key=lambda e: e.ident)
    document: dict[str, Any] = {"apiVersion": API_VERSION, "owner": owner or DEFAULT_OWNER}
    for section, kind in SECTIONS.items():
        items = sorted(state.all(kind), key=lambda i: tuple(part or "" for part in i.ident))
        entries = []
        for item in items:
            mine = [e for e in endpoints if e.ident[:2] == item.ident] if kind == "model" else []
            if not (wanted(item) or mine):
                continue
            entry = _entry(item)
            if mine:
                entry["endpoints"] = [_entry(e) for e in mine]
            entries.append(entry)
        if entries:
            document[section] = entries
    return document


def dump(document: dict[str, Any], *, as_json: bool = False) -> str:
    """The document as YAML with a header comment, or as JSON (which `apply` reads as well: JSON is YAML)."""
    if as_json:
        return json.dumps(document, indent=2) + "\n"
    return HEADER + yaml.safe_dump(document, sort_keys=False, default_flow_style=False, allow_unicode=True)
