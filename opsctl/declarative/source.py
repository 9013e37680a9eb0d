"""Reading config files as YAML nodes, so every problem can name the file, line and field it is about.

Values are built from the composed nodes one field at a time (not by `yaml.safe_load`), which
keeps each field's line and lets duplicate mapping keys, silently merged by PyYAML, be refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import ConstructorError, SafeConstructor

SUFFIXES = (".yaml", ".yml")
MAX_PROBLEMS_SHOWN = 50


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with the config: where (file:line), which field (`keys[1].rpm_limit`), and why."""

    file: str
    line: int  # 1-based; 0 when the problem is about the whole file
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class ConfigInvalid(Exception):
    """The config cannot be applied; `problems` lists every problem found (nothing was changed)."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__(f"{len(problems)} problem(s) in the config")
        self.problems = problems

    def lines(self) -> list[str]:
        shown = [str(p) for p in self.problems[:MAX_PROBLEMS_SHOWN]]
        if len(self.problems) > MAX_PROBLEMS_SHOWN:
            shown.append(f"… and {len(self.problems) - MAX_PROBLEMS_SHOWN} more")
        return shown


@dataclass(frozen=True, slots=True)
class Document:
    """One config file: its name as shown in messages and its root node (None for an empty file)."""

    file: str
    root: yaml.Node | None


def shown_path(path: Path, root: Path | None) -> str:
    return str(path.relative_to(root)) if root is not None else str(path)


def config_files(path: Path, root: Path | None = None) -> list[Path]:
    """The file itself, or a directory's *.yaml / *.yml files (not recursive), sorted by name.

    Raises:
        ConfigInvalid: the path does not exist, or the directory holds no config file.
    """
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in SUFFIXES and p.is_file())
        if not files:
            raise ConfigInvalid([Problem(shown_path(path, root), 0, "", "no *.yaml or *.yml file in this directory")])
        return files
    if not path.exists():
        raise ConfigInvalid([Problem(shown_path(path, root), 0, "", "no such file or directory")])
    return [path]


def read_documents(path: Path, root: Path | None = None) -> list[Document]:
    """Compose every config file under `path`; a YAML syntax error is a problem at its line.

    Files are named relative to `root` when given (a git checkout: `clusters/prod.yaml`, not its
    place in the state dir), else as the path was given.

    Raises:
        ConfigInvalid: unreadable files or YAML syntax errors (all of them, one per file).
    """
    documents, problems = [], []
    for file in config_files(path, root):
        name = shown_path(file, root)
        try:
            text = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            problems.append(Problem(name, 0, "", f"cannot read: {getattr(e, 'strerror', None) or e}"))
            continue
        try:
            documents.append(Document(name, yaml.compose(text, Loader=yaml.SafeLoader)))
        except yaml.MarkedYAMLError as e:
            mark = e.problem_mark or e.context_mark
            why = " ".join(part for part in (e.context, e.problem) if part)
            problems.append(Problem(name, mark.line + 1 if mark else 0, "", f"not valid YAML: {why}"))
        except yaml.YAMLError as e:
            problems.append(Problem(name, 0, "", f"not valid YAML: {e}"))
    if problems:
        raise ConfigInvalid(problems)
    return documents


def line_of(node: yaml.Node) -> int:
    return node.start_mark.line + 1


def mapping_items(node: yaml.MappingNode) -> list[tuple[str | None, yaml.Node, yaml.Node]]:
    """(key text or None when the key is not a plain string, key node, value node) of a mapping."""
    return [(k.value if isinstance(k, yaml.ScalarNode) and k.tag == "tag:yaml.org,2002:str" else None, k, v)
            for k, v in node.value]


def scalar_value(node: yaml.Node) -> Any:
    """The Python value of a scalar or of a list/map of scalars (YAML 1.1 types, as PyYAML reads them).

    Raises:
        ValueError: the node cannot be built (e.g. an unknown tag).
    """
    try:
        return SafeConstructor().construct_object(node, deep=True)
    except ConstructorError as e:
        raise ValueError(e.problem or str(e)) from e
