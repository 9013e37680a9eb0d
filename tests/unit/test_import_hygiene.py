"""The dependency direction of DESIGN.md, enforced two ways.

Statically, every import statement in every module (lazy ones inside functions included)
is checked against the allowed direction: `analytics_lake` imports no project package,
`gateway` imports only `analytics_lake` of ours, nothing imports `tui` but `tui` itself.
At run time, each core package is imported whole in a fresh interpreter and must not pull
in the UI or web frameworks it is meant to stay free of.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROJECT = ("analytics_lake", "gateway", "opsctl", "tui")

# package -> project packages (and third-party roots) it must never import, anywhere.
NEVER = {
    "analytics_lake": ("gateway", "opsctl", "tui", "aiohttp", "textual"),
    "gateway": ("opsctl", "tui", "textual"),
    "opsctl": ("tui", "textual"),
    "tui": ("aiohttp",),
}
# The one exception: the `opsctl tui` command is the console's launcher, so it imports the app
# (inside the command, after parsing its options): opsctl's library never depends on the UI.
LAUNCHERS = {"opsctl/commands/tui.py": ("tui",)}
# Third-party roots that must not even be loaded when a package is imported whole.
NOT_LOADED = {
    "analytics_lake": ("aiohttp", "textual", "gateway", "opsctl"),
    "gateway": ("textual", "opsctl", "tui"),
}


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in a file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this file's package
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module or ""
            found.append((node.lineno, name))
    return found


def _violations(package: str) -> list[str]:
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for line, name in _imports(path):
            root = name.split(".")[0]
            if root in NEVER[package] and root not in LAUNCHERS.get(str(path.relative_to(ROOT)), ()):
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
    return bad


@pytest.mark.parametrize("package", sorted(NEVER))
def test_dependency_direction(package: str) -> None:
    assert _violations(package) == []


def test_the_tui_launcher_imports_the_app_only_inside_the_command() -> None:
    """`opsctl --help` must not load Textual: the launcher's import of `tui` is lazy."""
    path = ROOT / "opsctl" / "commands" / "tui.py"
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top_level = [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))]
    names = [alias.name for node in top_level for alias in node.names] + [
        node.module or "" for node in top_level if isinstance(node, ast.ImportFrom)]
    assert not any(name.split(".")[0] in ("tui", "textual") for name in names)


def test_the_scan_sees_lazy_and_relative_imports(tmp_path: Path) -> None:
    """The checker itself: an import inside a function and a relative import are both found."""
    module = ROOT / "gateway" / "_hygiene_probe.py"
    module.write_text("def f():\n    import opsctl.cli\nfrom .errors import FleetgateError\n")
    try:
        names = [name for _, name in _imports(module)]
        assert "opsctl.cli" in names and "gateway.errors" in names
        assert any("opsctl.cli" in v for v in _violations("gateway"))
    finally:
        module.unlink()


@pytest.mark.parametrize("package", sorted(NOT_LOADED))
def test_package_does_not_load(package: str) -> None:
    code = (
        f"import sys, importlib, pkgutil; import {package} as p\n"
        "for m in pkgutil.walk_packages(getattr(p, '__path__', []), p.__name__ + '.'):\n"
        "    importlib.import_module(m.name)\n"
        f"bad = [m for m in {NOT_LOADED[package]!r} if m in sys.modules]\n"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "", f"{package} loads {out.stdout.strip()}"
