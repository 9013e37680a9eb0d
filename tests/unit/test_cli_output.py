"""Tables print numbers as people write them: dollar amounts are tiny, and 9e-06 is not a price."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from analytics_lake.location import LakeConfig
from analytics_lake.synthetic import make_event
from analytics_lake.writer import write_batch
from opsctl.cli import app

T0 = 1_767_225_600_000_000
ORG = "org_00000000000000a1"


@pytest.fixture
def opsctl(tmp_path, monkeypatch):
    monkeypatch.setenv("FLEETGATE_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("FLEETGATE_LAKE_URL", f"file://{tmp_path}/lake")
    events = [{**make_event(T0 + i, org=ORG), "cost_micros": 9, "prompt_tokens": 1} for i in range(2)]
    write_batch(LakeConfig(f"file://{tmp_path}/lake"), events, writer_id="t")
    runner = CliRunner()

    def run(*args: str) -> str:
        result = runner.invoke(app, list(args))
        assert result.exit_code == 0, result.output
        return result.stdout

    return run


def test_float_dollars_print_as_decimals(opsctl):
    table = opsctl("sql", "select sum(cost_micros) / 2e6 as usd, 1e20 as big, 2.5 / 1 as half, "
                          "cast('nan' as double) as nan_value from usage")
    assert table.splitlines() == ["USD       BIG                    HALF  NAN_VALUE",
                                  "0.000009  100000000000000000000  2.5   nan"]
    assert json.loads(opsctl("sql", "select sum(cost_micros) / 2e6 as usd from usage", "-f", "json")) == [
        {"usd": 9e-06}]  # JSON keeps the number a number
    # Exact DECIMAL report columns print as they are.
    header, row = opsctl("usage", "report", "spend", "--org", ORG).splitlines()
    assert header.split()[-1] == "COST_USD" and row.split()[:3] == [ORG, "2", "2"]
    assert row.split()[-1] == "0.000018"
