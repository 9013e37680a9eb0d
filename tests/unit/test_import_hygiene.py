"""The headless core stays headless: checked in a fresh interpreter per package."""

from __future__ import annotations

import subprocess
import sys

import pytest

FORBIDDEN = {
    "analytics_lake": ("aiohttp", "textual"),
    "gateway": ("textual",),
    "gateway.app": ("textual",),
}


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_does_not_import(package: str) -> None:
    code = (
        f"import sys, importlib, pkgutil; import {package} as p\n"
        "for m in pkgutil.walk_packages(getattr(p, '__path__', []), p.__name__ + '.'):\n"
        "    importlib.import_module(m.name)\n"
        f"bad = [m for m in {FORBIDDEN[package]!r} if m in sys.modules]\n"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"{package} imports {out.stdout.strip()}"
