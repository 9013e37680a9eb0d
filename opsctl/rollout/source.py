"""Playbook YAML with a line number for every key, and value checks whose errors say file:line: field.

PyYAML's node tree (yaml.compose) keeps each node's position; this module turns it into plain data while
remembering the line of every key path, so later checks of the data can still point into the file.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from opsctl.deploy import DeployInputError

KeyPath = tuple[str | int, ...]


class PlaybookError(DeployInputError):
    """A playbook (or a --set) that cannot run as given: the CLI exits 2.

    str(e) is "{path}:{line}: {field}: {message}", leaving out the parts that are unknown.
    """

    code = "invalid_playbook"

    def __init__(self, message: str, *, path: Path | None = None, line: int | None = None, field: str = "") -> None:
        self.path = path
        self.line = line
        self.field = field
        self.reason = message
        where = f"{path}:{line}" if path is not None and line is not None else (
            str(path) if path is not None else (f"line {line}" if line is not None else ""))
        text = ": ".join(part for part in (where, field, message) if part)
        super().__init__(text, param=field or "playbook")


def field_name(keypath: KeyPath) -> str:
    """("steps", 2, "smoke", "requests") → "steps[2].smoke.requests"."""
    text = ""
    for key in keypath:
        text += f"[{key}]" if isinstance(key, int) else (f".{key}" if text else str(key))
    return text


class Source:
    """The file being loaded and the line of every key path in it, to put file:line in errors."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.lines: dict[KeyPath, int] = {}

    def line(self, keypath: KeyPath) -> int | None:
        while True:
            if keypath in self.lines:
                return self.lines[keypath]
            if not keypath:
                return None
            keypath = keypath[:-1]

    def error(self, keypath: KeyPath, message: str, *, field: str | None = None) -> PlaybookError:
        return PlaybookError(message, path=self.path, line=self.line(keypath),
                             field=field_name(keypath) if field is None else field)


def yaml_loader() -> type:
    """SafeLoader keeping dates as the strings they were written as (values must stay JSON-able)."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_constructor("tag:yaml.org,2002:timestamp", lambda loader, node: loader.construct_scalar(node))
    return Loader


def parse(text: str, source: Source) -> dict[str, Any]:
    import yaml

    loader_class = yaml_loader()
    try:
        root = yaml.compose(text, Loader=loader_class)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        raise PlaybookError(f"not valid YAML: {e.problem or e.context}", path=source.path,
                            line=None if mark is None else mark.line + 1) from e
    except yaml.YAMLError as e:
        raise PlaybookError(f"not valid YAML: {e}", path=source.path) from e
    if root is None:
        raise PlaybookError("empty playbook: expected a mapping with kind and steps", path=source.path, line=1)
    if not isinstance(root, yaml.MappingNode):
        raise PlaybookError("expected a mapping with kind and steps at the top", path=source.path,
                            line=root.start_mark.line + 1)
    return node_value(root, (), source, loader_class(""))


def node_value(node: Any, keypath: KeyPath, source: Source, constructor: Any) -> Any:
    import yaml

    source.lines.setdefault(keypath, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        constructor.flatten_mapping(node)  # YAML merge keys (<<: *anchor)
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            # A key is its text: YAML 1.1 would read `on:` or `1:` as a boolean or a number (Helm reads strings).
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            if not isinstance(key, str):
                raise PlaybookError("keys must be plain strings, not lists or mappings", path=source.path,
                                    line=key_node.start_mark.line + 1, field=field_name(keypath))
            if key in out:
                raise PlaybookError(f"duplicate key {key!r}", path=source.path, line=key_node.start_mark.line + 1,
                                    field=field_name((*keypath, key)))
            source.lines[(*keypath, key)] = key_node.start_mark.line + 1
            out[key] = node_value(value_node, (*keypath, key), source, constructor)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [node_value(item, (*keypath, i), source, constructor) for i, item in enumerate(node.value)]
    try:
        value = constructor.construct_object(node, deep=True)
    except yaml.YAMLError as e:
        raise source.error(keypath, f"not a valid value: {e}") from e
    if isinstance(value, float) and not math.isfinite(value):
        raise source.error(keypath, f"{value} is not a usable number")
    if not isinstance(value, str | int | float | bool | type(None)):
        raise source.error(keypath, f"unsupported YAML value of type {type(value).__name__}")
    return value


def yaml_value(raw: str, field: str, path: Path | None) -> Any:
    """A --set value read as YAML (0.3 → float, true → bool, "x" → string)."""
    import yaml

    source = Source(path)
    try:
        root = yaml.compose(raw, Loader=yaml_loader())
    except yaml.YAMLError as e:
        raise PlaybookError(f"value {raw!r} is not valid YAML", path=path, field=field) from e
    if root is None:
        return None
    try:
        return node_value(root, (), source, yaml_loader()(""))
    except PlaybookError as e:
        raise PlaybookError(e.reason, path=path, field=field) from e


# --- checking values ------------------------------------------------------------------------------------------

def type_name(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "a mapping", type(None): "null"}.get(type(value), type(value).__name__)


def integer(value: Any, src: Source, keypath: KeyPath, lo: int | None = None, hi: int | None = None) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise src.error(keypath, f"expected an integer, got {type_name(value)} {value!r}")
    in_range(value, src, keypath, lo, hi)
    return value


def number(value: Any, src: Source, keypath: KeyPath, lo: float | None = None, hi: float | None = None,
            *, above: bool = False) -> float:
    """A float in [lo, hi] (or (lo, hi] when `above`)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise src.error(keypath, f"expected a number, got {type_name(value)} {value!r}")
    value = float(value)
    if above and lo is not None and value <= lo:
        raise src.error(keypath, f"must be greater than {lo:g}, got {value:g}")
    in_range(value, src, keypath, None if above else lo, hi)
    return value


def in_range(value: float, src: Source, keypath: KeyPath, lo: float | None, hi: float | None) -> None:
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        bounds = (f"between {lo:g} and {hi:g}" if lo is not None and hi is not None
                  else f"at least {lo:g}" if lo is not None else f"at most {hi:g}")
        raise src.error(keypath, f"must be {bounds}, got {value:g}")


def mapping(value: Any, src: Source, keypath: KeyPath, allowed: Sequence[str]) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise src.error(keypath, f"expected a mapping, got {type_name(value)} {value!r}")
    for key in value:
        if key not in allowed:
            expected = ", ".join(allowed) if allowed else "none"
            raise src.error((*keypath, key), f"unknown key {key!r} (expected: {expected})")
    return value


def string(value: Any, src: Source, keypath: KeyPath) -> str:
    if not isinstance(value, str):
        raise src.error(keypath, f"expected a string, got {type_name(value)} {value!r}")
    return value
