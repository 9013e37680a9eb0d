"""Bad command-line input exits 2 with one readable line, before anything starts."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from opsctl.cli import app


@pytest.mark.parametrize("args, message", [
    (["gateway", "serve", "--workers", "0"], "--workers must be >= 1"),
    (["gateway", "serve", "--port", "70000"], "port"),
    (["up", "--port", "-1"], "port"),
    (["budget", "set", "acme", "abc"], "Invalid value"),
    (["registry", "register"], "Missing argument"),
])
def test_bad_usage_exits_2(args, message):
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert message in result.output


def test_bad_config_file_names_the_key(tmp_path):
    cfg = tmp_path / "fleetgate.toml"
    cfg.write_text('port = "eighty"\n')
    result = CliRunner().invoke(app, ["gateway", "serve", "--config", str(cfg)])
    assert result.exit_code == 2 and "port='eighty'" in result.output
    cfg.write_text("colour = 'blue'\n")
    result = CliRunner().invoke(app, ["gateway", "serve", "--config", str(cfg)])
    assert result.exit_code == 2 and "'colour'" in result.output and "unknown" in result.output
    result = CliRunner().invoke(app, ["gateway", "serve", "--config", str(tmp_path / "missing.toml")])
    assert result.exit_code == 2 and "does not exist" in result.output
