"""What a LocalDeployer revision runs, from its values: the engine (vLLM or the simulator), argv, environment.

Pure functions of the values (and of whether an interpreter can import vllm), so every check happens before
a process starts and the exact commands can be tested without running them.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.errors import ConfigError
from opsctl.deploy import ENVIRONMENTS, TRACKS, DeployInputError
from opsctl.deploy.processes import free_port

ENGINES = ("auto", "vllm", "simulator")
MAX_REPLICAS = 16  # processes on one machine: more is a typo, not a plan
STOP_GRACE_S = 30.0  # before SIGKILL: vLLM finishes in-flight generations on SIGTERM; the simulator exits at once
VLLM_MODULE = "vllm.entrypoints.openai.api_server"
# The simulator's settings a release may set (SimConfig field → `opsctl sim serve` flag, type). The model,
# its served name, host and port are the deployer's: the pod always serves model.name on its own port.
SIMULATOR_FLAGS: Mapping[str, tuple[str, type]] = {
    "ttft_ms": ("--ttft-ms", float), "tokens_per_s": ("--tokens-per-s", float),
    "error_rate": ("--error-rate", float), "hang_rate": ("--hang-rate", float),
    "garbage_rate": ("--garbage-rate", float), "slow_start_s": ("--slow-start", float),
    "crash_after": ("--crash-after", int), "seed": ("--seed", int), "max_model_len": ("--max-model-len", int),
    "max_num_seqs": ("--max-num-seqs", int), "usage_lie": ("--usage-lie", str),
    "hang_after_headers": ("--hang-after-headers", bool),
}
# A real vLLM on a CPU machine (FIELD_NOTES.md): offline, a small KV cache, no usage reports.
VLLM_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1",
            "VLLM_NO_USAGE_STATS": "1"}


def _bad(field: str, message: str) -> DeployInputError:
    return DeployInputError(f"values {field}: {message}", param=field)


def _typed(value: Any, kind: type) -> bool:
    if kind is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def value_at(values: Mapping[str, Any], field: str, kind: type, default: Any) -> Any:
    """values[a][b]… for field "a.b…", checked against `kind`; `default` when absent or null.

    Raises:
        DeployInputError: a part of the path is not a mapping, or the value has another type (names the field).
    """
    node: Any = values
    for part in field.split("."):
        if node is None:
            return default
        if not isinstance(node, Mapping):
            raise _bad(field, f"{part!r} is inside something that is not a mapping")
        node = node.get(part)
    if node is None:
        return default
    if not _typed(node, kind):
        raise _bad(field, f"expected {kind.__name__}, got {type(node).__name__} {json.dumps(node, default=str)}")
    return node


def simulator_argv(python: str, model: str, port: int, settings: Mapping[str, Any]) -> list[str]:
    """`python -m opsctl.sim --model MODEL --port PORT` + the flags of `settings` (local.simulator).

    Raises:
        DeployInputError: an unknown setting, a wrong type, or a value the simulator refuses (names the field).
    """
    from opsctl.sim.config import SimConfig

    flags: list[str] = []
    config: dict[str, Any] = {}
    for key, value in settings.items():
        field = f"local.simulator.{key}"
        if key not in SIMULATOR_FLAGS:
            raise _bad(field, f"unknown simulator setting (known: {', '.join(SIMULATOR_FLAGS)})")
        flag, kind = SIMULATOR_FLAGS[key]
        if value is None:
            continue
        if not _typed(value, kind):
            raise _bad(field, f"expected {kind.__name__}, got {type(value).__name__} {json.dumps(value)}")
        config[key] = value
        if kind is bool:
            flags += [flag] if value else []
        else:
            flags += [flag, str(value)]
    try:
        SimConfig(model=model, port=port, **config)
    except ConfigError as e:
        raise _bad(f"local.simulator.{e.param}", e.message.split(": ", 1)[-1]) from e
    return [python, "-m", "opsctl.sim", "--model", model, "--port", str(port), *flags]


def vllm_argv(python: str, model_path: str, served_name: str, port: int,
              args: Sequence[str]) -> list[str]:
    """vLLM's OpenAI server for one pod; the served name is always the registry name (vLLM answers any other
    name with 404). The `vllm` console script fails for the vllm-cpu distribution: run the module."""
    return [python, "-m", VLLM_MODULE, "--model", model_path, "--served-model-name", served_name,
            "--host", "127.0.0.1", "--port", str(port), *args]


def vllm_env(base: Mapping[str, str], overrides: Mapping[str, str], cores: int) -> dict[str, str]:
    """The environment of a vLLM pod: ours without our own venv's and Fleetgate's variables (vLLM's interpreter
    is another venv, and no admin token belongs in a pod), the CPU defaults, then the release's overrides.

    CPU threads are not pinned: a rollout runs the new release beside the old one, and a vLLM pinned to the
    core a loaded vLLM spins on (its worker polls with sched_yield between steps) gets almost no CPU and never
    becomes ready. One OpenMP thread per 4 cores of `cores` (at least one) leaves room for the gateway and a
    second pod; `local.vllm.env` overrides both (e.g. VLLM_CPU_OMP_THREADS_BIND=0-7 on a dedicated machine).
    """
    env = {k: v for k, v in base.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV") and not k.startswith("FLEETGATE_")}
    env.update(VLLM_ENV)
    env["VLLM_CPU_OMP_THREADS_BIND"] = "nobind"
    env["OMP_NUM_THREADS"] = str(max(1, cores // 4))
    env.update(overrides)
    return env


def has_vllm(python: str) -> bool:
    """Whether `python` can import vllm (without importing it: that takes seconds)."""
    if Path(python) == Path(sys.executable):
        return importlib.util.find_spec("vllm") is not None
    try:
        done = subprocess.run([python, "-c", "import importlib.util, sys; "
                               "sys.exit(importlib.util.find_spec('vllm') is None)"],
                              capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


@dataclass(frozen=True)
class Plan:
    """What one revision runs: checked in full before anything starts."""

    model: str
    environment: str
    track: str
    replicas: int
    engine: str  # vllm | simulator
    timeout_s: int | None  # local.readinessTimeoutSeconds
    python: str
    vllm_model: str
    vllm_args: tuple[str, ...]
    vllm_env: Mapping[str, str]
    simulator: Mapping[str, Any]

    def argv(self, port: int) -> list[str]:
        if self.engine == "vllm":
            return vllm_argv(self.python, self.vllm_model, self.model, port, self.vllm_args)
        return simulator_argv(self.python, self.model, port, self.simulator)

    def env(self) -> dict[str, str]:
        if self.engine == "vllm":
            return vllm_env(os.environ, self.vllm_env, len(os.sched_getaffinity(0)))
        return {**{k: v for k, v in os.environ.items() if not k.startswith("FLEETGATE_")}, "PYTHONUNBUFFERED": "1"}


def track_of(release: str, model: str, env: str) -> str:
    """The track `release` is on, from its name (stable {model}-{env}, canary {model}-{env}-canary).

    Raises:
        DeployInputError: the name belongs to neither track of this model and environment.
    """
    from opsctl.deploy.naming import release_name

    names = {release_name(model, env, track): track for track in TRACKS}
    if release not in names:
        raise DeployInputError(f"release {release!r} is not a release of model {model!r} in {env}: expected "
                               f"{' or '.join(names)}", param="release")
    return names[release]


def make_plan(release: str, values: Mapping[str, Any], *, python: str, vllm_python: str | None,
              vllm_found: Any = has_vllm) -> Plan:
    """Everything a revision of `release` runs, from its merged values.

    Args:
        python: the interpreter that runs the simulator (ours).
        vllm_python: FLEETGATE_VLLM_PYTHON, when set.
        vllm_found: whether an interpreter can import vllm (a seam for engine-choice tests).

    Raises:
        DeployInputError: bad values, naming the field.
    """
    model = value_at(values, "model.name", str, "")
    if not model.strip():
        raise _bad("model.name", "required: the registry model name the pods serve")
    env = value_at(values, "environment", str, "development")
    if env not in ENVIRONMENTS:
        raise _bad("environment", f"unknown environment {env!r}: expected one of {', '.join(ENVIRONMENTS)}")
    track = track_of(release, model, env)
    replicas = value_at(values, "replicaCount", int, 1)
    if not 1 <= replicas <= MAX_REPLICAS:
        raise _bad("replicaCount", f"{replicas} must be between 1 and {MAX_REPLICAS} for local processes")
    engine = value_at(values, "local.engine", str, "auto")
    if engine not in ENGINES:
        raise _bad("local.engine", f"unknown engine {engine!r}: expected one of {', '.join(ENGINES)}")
    timeout = value_at(values, "local.readinessTimeoutSeconds", int, None)
    if timeout is not None and timeout < 1:
        raise _bad("local.readinessTimeoutSeconds", f"{timeout} must be >= 1")
    vllm_model = value_at(values, "local.vllm.model", str, "")
    chosen_python = value_at(values, "local.vllm.python", str, "") or vllm_python or python
    args = value_at(values, "local.vllm.args", list, [])
    if not all(isinstance(a, str) for a in args):
        raise _bad("local.vllm.args", "expected a list of strings")
    extra_env = value_at(values, "local.vllm.env", Mapping, {})
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in extra_env.items()):
        raise _bad("local.vllm.env", "expected a mapping of strings to strings")
    simulator = value_at(values, "local.simulator", Mapping, {})
    if engine == "auto":
        engine = "vllm" if vllm_model and vllm_found(chosen_python) else "simulator"
    elif engine == "vllm":
        if not vllm_model:
            raise _bad("local.vllm.model", "required with engine vllm: the model directory to serve")
        if not vllm_found(chosen_python):
            raise _bad("local.vllm.python", f"{chosen_python} cannot import vllm (set local.vllm.python or "
                                            "FLEETGATE_VLLM_PYTHON to an interpreter that can)")
    plan = Plan(model=model, environment=env, track=track, replicas=replicas, engine=engine, timeout_s=timeout,
                python=chosen_python if engine == "vllm" else python, vllm_model=vllm_model,
                vllm_args=tuple(args), vllm_env=dict(extra_env), simulator=dict(simulator))
    plan.argv(free_port())  # the simulator's settings are checked here, before anything starts
    return plan


def chart_defaults(chart: Path | None, values_files: Sequence[Path],
                   values: Mapping[str, Any]) -> tuple[dict[str, Any], str, str]:
    """The values as Helm would compute them (chart values.yaml, then each file, then `values`), the chart's
    name-version and appVersion ("local", "" without a chart).

    Raises:
        DeployInputError: a missing chart or values file, or one that is not a YAML mapping.
    """
    from opsctl.deploy.helm import check_chart, merge_values

    layers: list[tuple[Path, Any]] = []
    label, app_version = "local", ""
    if chart is not None:
        directory = check_chart(chart)
        meta = _yaml_file(directory / "Chart.yaml")
        label, app_version = f"{meta.get('name', 'chart')}-{meta.get('version', '')}", str(meta.get("appVersion", ""))
        if (directory / "values.yaml").is_file():
            layers.append((directory / "values.yaml", _yaml_file(directory / "values.yaml")))
    for path in values_files:
        if not path.is_file():
            raise DeployInputError(f"values file {path} not found", param="values")
        layers.append((path, _yaml_file(path)))
    merged: dict[str, Any] = {}
    for _, layer in layers:
        merged = merge_values(merged, layer)
    return merge_values(merged, values), label, app_version


def _yaml_file(path: Path) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise DeployInputError(f"{path}: not readable YAML ({' '.join(str(e).split())[:200]})",
                               param="values") from e
    if not isinstance(data, dict):
        raise DeployInputError(f"{path}: expected a mapping of values", param="values")
    return data


def values_version(values: Mapping[str, Any]) -> str:
    """A version for a revision given none and no chart: the same values always make the same one."""
    import hashlib

    digest = hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()
    return f"values-{digest[:10]}"
