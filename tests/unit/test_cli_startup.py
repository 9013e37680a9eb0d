"""`opsctl` starts fast because it loads nothing heavy until a command needs it.

Guarded by the set of modules a fresh interpreter holds after `import opsctl.cli` and after
`--help` of every command (timings belong to benchmarks/cli_startup.py, not to tests).
Not loaded, and why (cost measured with `python -X importtime` on the 2-core dev machine):
aiohttp (+uvloop, multidict, yarl) ~90 ms, duckdb ~50 ms, pyarrow ~40 ms, redis ~30 ms,
httpx ~60 ms, rich ~50 ms (help is rendered plain), textual, psycopg, aiosqlite,
prometheus_client; gateway.app and analytics_lake pull most of these in.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from opsctl.cli import app

HEAVY = ("aiohttp", "uvloop", "multidict", "yarl", "duckdb", "pyarrow", "redis", "httpx", "rich", "textual",
         "psycopg", "psycopg_pool", "aiosqlite", "prometheus_client", "yaml", "gateway.app", "gateway.http",
         "gateway.store", "analytics_lake", "opsctl.sim", "opsctl.bench.runner", "tui")


def _loaded_heavy(modules: list[str]) -> list[str]:
    return sorted(m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY))


def _command_paths() -> list[list[str]]:
    paths = []

    def walk(command, path):
        paths.append(path)
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, [*path, name])

    walk(get_command(app), [])
    return paths


def _commands() -> list[tuple[list[str], object]]:
    found = []

    def walk(command, path):
        subs = getattr(command, "commands", None)
        if subs is None:
            found.append((path, command))
        for name, sub in (subs or {}).items():
            walk(sub, [*path, name])

    walk(get_command(app), [])
    return found


def _type_name(param) -> str:
    return param.bare_type() if hasattr(param, "bare_type") else param.type.name  # typer >= 0.24 / older


def _run_in_fresh_interpreter(code: str) -> list[str]:
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.splitlines()[-1])


def test_importing_the_cli_loads_nothing_heavy():
    modules = _run_in_fresh_interpreter("""
        import json, sys
        import opsctl.cli
        print(json.dumps(sorted(sys.modules)))
    """)
    assert "opsctl.cli" in modules
    assert _loaded_heavy(modules) == []


def test_help_of_every_command_loads_nothing_heavy():
    paths = _command_paths()
    assert ["budget", "set"] in paths and ["sql"] in paths and ["up"] in paths  # the walk sees the tree
    modules = _run_in_fresh_interpreter(f"""
        import contextlib, io, json, sys
        from opsctl.cli import main
        for path in {paths!r}:
            sys.argv = ["opsctl", *path, "--help"]
            with contextlib.redirect_stdout(io.StringIO()):
                try:
                    main()
                except SystemExit as e:
                    assert e.code == 0, (path, e.code)
        print(json.dumps(sorted(sys.modules)))
    """)
    assert _loaded_heavy(modules) == []


def test_lake_writer_help_shows_the_lakes_defaults_without_importing_it():
    from analytics_lake import redis_stream

    out = subprocess.run([sys.executable, "-X", "importtime", "-m", "opsctl", "lake", "writer", "--help"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    assert f"[default: {redis_stream.DEFAULT_STREAM}]" in out.stdout
    assert f"[default: {redis_stream.DEFAULT_GROUP}]" in out.stdout
    assert "analytics_lake" not in out.stderr and "redis" not in out.stderr  # -X importtime lists every import


def test_help_is_plain_and_shows_no_bool_metavar():
    runner = CliRunner()
    for path in _command_paths():
        result = runner.invoke(app, [*path, "--help"], terminal_width=100)
        assert result.exit_code == 0, (path, result.output)
        assert "<bool>" not in result.output, path
        assert "╭" not in result.output, path  # no rich boxes: rich is not imported for help


def test_every_command_takes_output_except_servers_and_sql():
    servers = {("gateway", "serve"), ("sim", "serve"), ("tui",)}  # logs or a full-screen app, not records
    for path, command in _commands():
        options = {opt for param in command.params for opt in getattr(param, "opts", ())}
        if tuple(path) in servers:
            continue
        if path == ["sql"]:
            assert {"--format", "-f"} <= options  # sql keeps --format table|csv|json
            continue
        assert {"--output", "-o"} <= options, f"opsctl {' '.join(path)} has no --output"


def test_numeric_positional_arguments_accept_negative_values():
    """A negative number must reach the command's own validation instead of "No such option"."""
    checked = 0
    for path, command in _commands():
        for param in command.params:
            if param.param_type_name == "argument" and _type_name(param) in ("int", "integer", "float"):
                checked += 1
                assert command.context_settings.get("ignore_unknown_options"), f"opsctl {' '.join(path)}"
    assert checked >= 1  # budget set ORG USD


@pytest.mark.parametrize("args, fragment", [
    (["budget", "set", "acme", "-5"], "USD must be >= 0, got -5"),
    (["budget", "set", "acme", "-0.5", "--period", "daily"], "USD must be >= 0, got -0.5"),
    (["budget", "set", "acme", "nan"], "USD must be >= 0, got nan"),
    (["budget", "set", "acme", "abc"], "Invalid value for"),
    (["org", "creat", "x"], "No such command 'creat'"),
    (["key", "create"], "Missing option '--org'"),
    (["registry", "list", "--bogus"], "No such option: --bogus"),
    (["usage", "report", "spend", "--output", "xml"], "Invalid value for '--output' / '-o'"),
])
def test_usage_errors_are_one_line_on_stderr_with_exit_2(args, fragment):
    out = subprocess.run([sys.executable, "-m", "opsctl", *args], capture_output=True, text=True,
                         timeout=60, env={"PATH": "/usr/bin:/bin", "FLEETGATE_GATEWAY_URL": "http://127.0.0.1:9"})
    assert out.returncode == 2, out.stderr
    assert out.stdout == ""
    lines = out.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], out.stderr
    assert "Traceback" not in out.stderr


def test_bare_group_prints_its_help():
    out = subprocess.run([sys.executable, "-m", "opsctl", "budget"], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 2 and "Commands:" in out.stderr and "set" in out.stderr
