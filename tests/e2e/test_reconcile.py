"""`opsctl reconcile` from real git repositories into a real gateway: each new commit applied once and
recorded in the audit log with its commit, bad commits skipped until the next, clean stops."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from opsctl.cli import app
from tests.e2e.conftest import E2E_TOKEN
from tests.support import wait_for

CONFIG = "apiVersion: fleetgate/v1\nowner: gitops\norgs:\n  - name: acme\n    rpm_limit: {rpm}\n"


class Repo:
    """A real git repository with the config in fleet/fleet.yaml."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir()
        self.git("init", "--quiet", "--initial-branch=main")

    def git(self, *args: str) -> str:
        env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
               "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}
        return subprocess.run(["git", *args], cwd=self.path, env=env, check=True, capture_output=True,
                              text=True).stdout.strip()

    def commit(self, text: str) -> str:
        (self.path / "fleet").mkdir(exist_ok=True)
        (self.path / "fleet" / "fleet.yaml").write_text(text)
        self.git("add", "-A")
        self.git("commit", "--quiet", "-m", "config")
        return self.git("rev-parse", "HEAD")


@pytest.fixture
def gw(gateway_factory, monkeypatch, tmp_path):
    """A gateway of its own that opsctl finds through the environment; the CLI's state dir apart from its."""
    gateway = gateway_factory()
    monkeypatch.setenv("FLEETGATE_GATEWAY_URL", gateway.url)
    monkeypatch.setenv("FLEETGATE_ADMIN_TOKEN", E2E_TOKEN)
    monkeypatch.setenv("FLEETGATE_STATE_DIR", str(tmp_path / "cli-state"))
    return gateway


@pytest.fixture
def api(gw):
    with gw.admin() as client:
        yield client


@pytest.fixture
def repo(tmp_path):
    return Repo(tmp_path / "config-repo")


@pytest.fixture
def cli_state(monkeypatch, tmp_path):
    """A state dir of its own for commands that fail before reaching any gateway."""
    monkeypatch.setenv("FLEETGATE_STATE_DIR", str(tmp_path / "cli-state"))


def reconcile(repo: Repo, *args: str, code: int = 0):
    result = CliRunner().invoke(app, ["reconcile", "--repo", str(repo.path), "--path", "fleet", "--once", *args])
    assert result.exit_code == code, f"{args} → {result.exit_code}\n{result.output}"
    return result


def org_rpm(api) -> int | None:
    orgs = api.get("/admin/v1/organizations").json()
    return orgs[0]["rpm_limit"] if orgs else None


def test_each_new_commit_is_applied_once_and_audited_with_its_commit(api, repo, tmp_path):
    first = repo.commit(CONFIG.format(rpm=60))
    out = reconcile(repo).stdout.splitlines()
    assert out == [f"commit {first[:12]}: applied", "  + org acme", "  applied: 1 added, 0 changed, 0 removed"]
    assert org_rpm(api) == 60
    assert reconcile(repo).stdout == f"commit {first[:12]}: up-to-date: already applied\n"

    second = repo.commit(CONFIG.format(rpm=120))
    planned = json.loads(reconcile(repo, "--dry-run", "-o", "json").stdout)
    assert planned["event"] == "planned" and planned["result"]["changes"][0]["fields"]["rpm_limit"] == {
        "from": 60, "to": 120}
    assert org_rpm(api) == 60
    assert "  ~ org acme: rpm_limit 60 → 120" in reconcile(repo).stdout
    assert org_rpm(api) == 120

    state = json.loads(next((tmp_path / "cli-state" / "reconcile").glob("*.json")).read_text())
    assert state["applied"] == second and state["branch"] == "main"
    applied = api.get("/admin/v1/audit", params={"action": "config.apply"}).json()
    assert [a["after"]["source"] for a in applied] == [
        {"repo": str(repo.path), "branch": "main", "commit": c} for c in (second, first)]
    update = api.get("/admin/v1/audit", params={"action": "org.update"}).json()[0]
    assert update["source"] == f"git:{repo.path}#main@{second}"  # every write carries its commit


def test_a_bad_commit_is_reported_and_skipped_until_the_next(api, repo):
    repo.commit(CONFIG.format(rpm=60))
    reconcile(repo)
    bad = repo.commit(CONFIG.format(rpm=-1))
    result = reconcile(repo, code=1)
    assert result.stderr.splitlines() == [
        f"commit {bad[:12]}: invalid: 1 problem(s) in the config",
        "  fleet/fleet.yaml:5: orgs[0].rpm_limit: must be a positive integer (at most 2147483647), got -1"]
    assert "skipped: its config is invalid" in reconcile(repo, code=1).stderr
    assert org_rpm(api) == 60
    repo.commit(CONFIG.format(rpm=90))
    reconcile(repo)
    assert org_rpm(api) == 90


def test_a_running_reconciler_picks_up_new_commits_and_stops_cleanly(gw, api, repo, tmp_path):
    repo.commit(CONFIG.format(rpm=60))
    env = {**os.environ, "FLEETGATE_GATEWAY_URL": gw.url, "FLEETGATE_ADMIN_TOKEN": E2E_TOKEN,
           "FLEETGATE_STATE_DIR": str(tmp_path / "cli-state")}
    proc = subprocess.Popen([sys.executable, "-m", "opsctl", "reconcile", "--repo", str(repo.path), "--path", "fleet",
                             "--interval", "1s"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: org_rpm(api) == 60, timeout=20, what="the first commit applied")
        repo.commit(CONFIG.format(rpm=75))
        wait_for(lambda: org_rpm(api) == 75, timeout=20, what="the new commit applied")
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert out.count(": applied") == 2 and "up-to-date" not in out  # an unchanged branch is not reported again


@pytest.mark.parametrize(("args", "message"), [
    (["--interval", "soon"], "--interval 'soon' is invalid: expected a duration like 30d, 12h or 90m"),
    (["--branch", "nope"], "has no branch 'nope'"),
    (["--path", "../elsewhere"], "--path '../elsewhere' must be a directory inside the repository"),
    (["--branch", "-x"], "--branch '-x' is not a branch name"),
])
def test_bad_input_is_one_line_and_exit_2(cli_state, repo, args, message):
    repo.commit(CONFIG.format(rpm=60))
    result = CliRunner().invoke(app, ["reconcile", "--repo", str(repo.path), "--once", *args])
    assert result.exit_code == 2 and len(result.stderr.splitlines()) == 1 and message in result.stderr, result.output


def test_an_unreachable_repository_is_exit_2_without_credentials(cli_state, tmp_path):
    result = CliRunner().invoke(app, ["reconcile", "--repo", "https://ci:s3cret@127.0.0.1:1/fleet.git", "--once"])
    assert result.exit_code == 2 and result.stderr.startswith(
        "error: cannot reach the repository https://127.0.0.1:1/fleet.git:"), result.output
    assert "s3cret" not in result.output
    result = CliRunner().invoke(app, ["reconcile", "--repo", str(tmp_path / "missing"), "--once"])
    assert result.exit_code == 2 and "does not appear to be a git repository" in result.stderr


def test_an_unreachable_gateway_is_retried_not_skipped(cli_state, repo, monkeypatch, gateway_factory):
    commit = repo.commit(CONFIG.format(rpm=60))
    monkeypatch.setenv("FLEETGATE_GATEWAY_URL", "http://127.0.0.1:1")
    result = reconcile(repo, code=1)
    assert result.stderr.startswith(f"commit {commit[:12]}: error: cannot reach the gateway at http://127.0.0.1:1")
    gateway = gateway_factory()  # the next attempt, with a gateway there, applies the same commit
    monkeypatch.setenv("FLEETGATE_GATEWAY_URL", gateway.url)
    monkeypatch.setenv("FLEETGATE_ADMIN_TOKEN", E2E_TOKEN)
    assert reconcile(repo).stdout.startswith(f"commit {commit[:12]}: applied")
