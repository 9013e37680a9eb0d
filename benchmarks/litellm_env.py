"""LiteLLM proxy in its own venv (./.bench/litellm-venv, git-ignored), for side-by-side benchmarks.

LiteLLM pins dependencies that clash with ours, so it never enters the project's venv.
Run directly (`python benchmarks/litellm_env.py`) to install ahead of time.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VENV = REPO / ".bench" / "litellm-venv"
REQUIREMENT = "litellm[proxy]"
MASTER_KEY = "sk-bench-master"


def litellm_binary(venv: Path = VENV) -> Path:
    return venv / "bin" / "litellm"


def is_installed(venv: Path = VENV) -> bool:
    return litellm_binary(venv).exists()


def _base_python() -> str:
    """A Python outside any venv when possible (a venv made from a venv still works)."""
    return shutil.which("python3.11") or shutil.which("python3") or sys.executable


def ensure_installed(venv: Path = VENV, *, timeout_s: float = 1800.0, log: Path | None = None) -> Path:
    """Create the venv and `pip install 'litellm[proxy]'` into it unless already there.

    Returns:
        The path of the `litellm` console script.

    Raises:
        RuntimeError: if venv creation or pip fails (with the tail of pip's output).
    """
    binary = litellm_binary(venv)
    if binary.exists():
        return binary
    venv.parent.mkdir(parents=True, exist_ok=True)
    log = log or venv.parent / "litellm-install.log"
    if not (venv / "bin" / "python").exists():
        subprocess.run([_base_python(), "-m", "venv", str(venv)], check=True, timeout=300)
    with log.open("wb") as out:
        proc = subprocess.run(
            [str(venv / "bin" / "pip"), "install", "--quiet", REQUIREMENT],
            stdout=out, stderr=subprocess.STDOUT, timeout=timeout_s, check=False,
        )
    if proc.returncode != 0 or not binary.exists():
        tail = log.read_text(errors="replace").splitlines()[-15:]
        raise RuntimeError(f"pip install {REQUIREMENT!r} failed (exit {proc.returncode}):\n" + "\n".join(tail))
    return binary


def write_config(path: Path, *, model: str, upstream_base: str) -> Path:
    """A proxy config routing `model` to an OpenAI-compatible upstream (e.g. the simulator)."""
    path.write_text(
        "model_list:\n"
        f"  - model_name: {model}\n"
        "    litellm_params:\n"
        f"      model: openai/{model}\n"
        f"      api_base: {upstream_base.rstrip('/')}/v1\n"
        "      api_key: x\n"
    )
    return path


def proxy_command(config: Path, port: int, *, workers: int = 1, venv: Path = VENV) -> list[str]:
    return [str(litellm_binary(venv)), "--config", str(config), "--host", "127.0.0.1", "--port", str(port),
            "--num_workers", str(workers)]


def proxy_env(base: dict[str, str]) -> dict[str, str]:
    """Environment LiteLLM needs to start offline: a master key, the bundled cost map, no telemetry."""
    env = {k: v for k, v in base.items() if not k.startswith(("FLEETGATE_", "VIRTUAL_ENV"))}
    env.update({
        "LITELLM_MASTER_KEY": MASTER_KEY,
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "LITELLM_TELEMETRY": "False",
        "LITELLM_LOG": "ERROR",
    })
    return env


if __name__ == "__main__":
    print(ensure_installed())
