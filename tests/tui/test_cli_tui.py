"""`opsctl tui` as a user starts it: bad options exit 2 with one line; in a real terminal it draws and quits."""

from __future__ import annotations

import fcntl
import os
import select
import struct
import subprocess
import sys
import termios
import time

import pytest

from tests.support import free_port


def _opsctl(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETGATE_")}
    return subprocess.run([sys.executable, "-m", "opsctl", "tui", *args], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, env=env, timeout=60)


@pytest.mark.parametrize(("args", "fragment"), [
    (["--refresh", "0.1"], "--refresh 0.1 is invalid: expected 0.5 to 60 seconds"),
    (["--refresh", "nan"], "--refresh nan is invalid"),
    (["--record", "a.jsonl", "--replay", "b.jsonl"], "--record and --replay cannot be used together"),
    (["--replay", "missing.jsonl"], "cannot read the recording missing.jsonl"),
    (["--screen", "nope"], "nope"),
    ([], "opsctl tui needs a terminal"),
])
def test_bad_invocations_exit_2_with_one_line(args, fragment, tmp_path):
    result = _opsctl(*args)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], result.stderr


def test_a_replay_that_is_not_a_recording_exits_2(tmp_path):
    bad = tmp_path / "notes.jsonl"
    bad.write_text('{"hello": 1}\n')
    result = _opsctl("--replay", str(bad))
    assert result.returncode == 2
    assert "is not a TUI recording" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def _read_until(fd: int, needle: bytes, timeout: float) -> tuple[bytes, float | None]:
    """Everything the terminal received until `needle` appeared (and when), or until timeout."""
    seen = b""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if not ready:
            continue
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        seen += chunk
        if needle in seen:
            return seen, time.monotonic() - start
    return seen, None


def _start_in_a_terminal(tmp_path) -> tuple[int, subprocess.Popen]:
    """`opsctl tui` on a 120×40 pseudo-terminal, aimed at a port where nothing listens; (the pty's master, the process)."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETGATE_")}
    env.update(TERM="xterm-256color", FLEETGATE_STATE_DIR=str(tmp_path / "state"))
    proc = subprocess.Popen([sys.executable, "-m", "opsctl", "tui", "--gateway", f"http://127.0.0.1:{free_port()}",
                             "--admin-token", "fg-nobody"], stdin=slave, stdout=slave, stderr=slave, env=env,
                            start_new_session=True)
    os.close(slave)
    return master, proc


def test_in_a_terminal_it_draws_the_overview_marks_an_absent_gateway_stale_and_quits_on_q(tmp_path):
    """A real pseudo-terminal, a gateway URL where nothing listens: the console starts anyway (k9s-like),
    shows the stale marker, and `q` ends it with exit 0."""
    master, proc = _start_in_a_terminal(tmp_path)
    try:
        seen, _ = _read_until(master, b"STALE", timeout=30)
        assert b"STALE" in seen, seen[-2000:]
        os.write(master, b"q")
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)


def test_when_the_terminal_goes_away_without_a_hangup_signal_it_exits_instead_of_spinning(tmp_path):
    """The emulator's side of the pty closes and no SIGHUP comes (no controlling terminal): the input
    loop would read EOF forever at a full core; the console notices and exits."""
    master, proc = _start_in_a_terminal(tmp_path)
    try:
        seen, _ = _read_until(master, b"STALE", timeout=30)
        assert b"STALE" in seen
        os.close(master)
        master = None
        assert proc.wait(timeout=10) == 1
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if master is not None:
            os.close(master)
