"""Rollout playbooks: the YAML that says which steps a rollout takes and which gates each traffic step must pass.

Loading resolves params (CLI flags, then --set), substitutes "${param}" and checks everything before anything is
deployed, so a typo fails up front with the file, line and field in the message. playbooks/README.md is the
reference for the format; `Playbook.to_spec()` is what the rollout record stores, so `resume` needs no file.
"""

from __future__ import annotations

import copy
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from opsctl.deploy import ENVIRONMENTS
from opsctl.rollout.source import (
    KeyPath,
    PlaybookError,
    Source,
    integer,
    mapping,
    number,
    parse,
    string,
    type_name,
    yaml_value,
)

if TYPE_CHECKING:
    from analytics_lake.slo import SloBook

KINDS = ("canary", "blue-green", "promote", "rollback")
TRAFFIC_KINDS = ("canary", "blue-green", "promote")  # kinds that deploy a new release and shift traffic to it
STEP_KINDS = ("deploy", "wait_ready", "register", "smoke", "shadow", "weight", "pause", "finalize", "rollback")
SMOKE_KINDS = ("chat", "completions", "embeddings")
PARAM_TYPES: Mapping[str, type] = {"str": str, "int": int, "float": float, "bool": bool}
SPEC_FORMAT = 1  # bump when to_spec changes shape; from_spec refuses other formats

TOP_KEYS = ("kind", "description", "params", "values", "readiness_timeout_s", "steps", "analysis")
PARAM_KEYS = ("default", "type", "required", "description")
# Params each kind's engine code reads (a playbook must declare them or the CLI must give them).
NEEDED_PARAMS: Mapping[str, tuple[str, ...]] = {
    "canary": ("model", "env", "version"), "blue-green": ("model", "env", "version"),
    "promote": ("model", "from", "to"), "rollback": ("model", "env")}
ENV_PARAMS = ("env", "from", "to")  # params naming an environment: checked against ENVIRONMENTS

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_REF = re.compile(r"\$\{([^}]*)\}")
_BOOL_WORDS = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}


@dataclass(frozen=True)
class Gates:
    """Thresholds an analysis window must meet (see analysis.evaluate). None disables a comparison gate."""

    interval_s: float = 30.0
    min_requests: int = 20
    timeout_s: float = 300.0  # how long to wait for min_requests before failing the gate
    max_error_rate: float = 0.02
    max_error_rate_increase: float | None = 0.01  # new − stable
    max_p95_latency_ratio: float | None = 1.5  # new p95 ≤ ratio × stable p95 + latency_slack_ms
    latency_slack_ms: float = 50.0
    max_p95_ttft_ratio: float | None = 1.5  # same for TTFT (+ latency_slack_ms)
    tolerated_errors: int = 0  # max_error_rate passes with this many errors whatever their rate (tiny windows)
    max_p95_latency_ms: float | None = None  # new p95 latency ≤ this (absolute; from the SLO's latency threshold)
    # Where SLO-derived gates came from (gate → "slo.toml: availability 99.9 % …"); see slo_gates.
    sources: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Step:
    """One step of a playbook: its kind, its args with every default filled in, and (shadow/weight) its gates."""

    kind: str
    args: Mapping[str, Any]
    gates: Gates | None = None
    line: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "args": copy.deepcopy(dict(self.args)),
                "gates": None if self.gates is None else self.gates.to_dict(), "line": self.line}


@dataclass(frozen=True)
class Playbook:
    """A loaded playbook: params resolved (every required one present), "${…}" substituted, steps checked."""

    path: Path | None
    kind: str
    description: str
    params: Mapping[str, Any]
    values: Mapping[str, Any]
    readiness_timeout_s: int
    steps: tuple[Step, ...]
    gates: Gates

    @property
    def model(self) -> str:
        return str(self.params["model"])

    @property
    def environment(self) -> str:
        """The environment the playbook acts on: `env`, or a promotion's target `to`."""
        return str(self.params["to"] if self.kind == "promote" else self.params["env"])

    @property
    def version(self) -> str | None:
        version = self.params.get("version")
        return None if version is None else str(version)

    @property
    def deployer(self) -> str:
        return str(self.params.get("deployer") or "local")

    @property
    def chart(self) -> str | None:
        chart = self.params.get("chart")
        return None if chart is None else str(chart)

    def to_spec(self) -> dict[str, Any]:
        """The playbook as JSON-able data (stored in the rollout record); from_spec gives it back exactly."""
        return {"format": SPEC_FORMAT, "path": None if self.path is None else str(self.path), "kind": self.kind,
                "description": self.description, "params": copy.deepcopy(dict(self.params)),
                "values": copy.deepcopy(dict(self.values)), "readiness_timeout_s": self.readiness_timeout_s,
                "steps": [s.to_dict() for s in self.steps], "gates": self.gates.to_dict()}

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> Playbook:
        """The playbook a rollout record stored.

        Raises:
            PlaybookError: not a spec this version wrote.
        """
        try:
            if spec.get("format") != SPEC_FORMAT:
                raise PlaybookError(f"unsupported playbook spec format {spec.get('format')!r} "
                                    f"(this opsctl reads format {SPEC_FORMAT})", field="spec")
            steps = tuple(Step(kind=s["kind"], args=copy.deepcopy(dict(s["args"])),
                               gates=None if s["gates"] is None else Gates(**s["gates"]), line=s["line"])
                          for s in spec["steps"])
            return cls(path=None if spec["path"] is None else Path(spec["path"]), kind=spec["kind"],
                       description=spec["description"], params=copy.deepcopy(dict(spec["params"])),
                       values=copy.deepcopy(dict(spec["values"])), readiness_timeout_s=spec["readiness_timeout_s"],
                       steps=steps, gates=Gates(**spec["gates"]))
        except (KeyError, TypeError, AttributeError) as e:
            raise PlaybookError(f"malformed playbook spec: {e!r}", field="spec") from e


# Gate field → check; each returns the normalized value.
def _gate_check(name: str, value: Any, src: Source, keypath: KeyPath) -> Any:
    from opsctl.rollout.slo_gates import SLO, SLO_GATES

    optional = name in ("max_error_rate_increase", "max_p95_latency_ratio", "max_p95_ttft_ratio", "max_p95_latency_ms")
    if value is None and optional:
        return None
    if name in SLO_GATES and isinstance(value, str):
        if value != SLO:
            raise src.error(keypath, f"expected a number or {SLO} (from the SLO of the model), got {value!r}")
        return SLO
    if name in ("min_requests", "tolerated_errors"):
        return integer(value, src, keypath, 0)
    if name in ("interval_s", "timeout_s"):
        return number(value, src, keypath, 0, above=True)
    if name in ("max_error_rate", "max_error_rate_increase"):
        return number(value, src, keypath, 0, 1)
    if name in ("max_p95_latency_ratio", "max_p95_ttft_ratio", "max_p95_latency_ms"):
        return number(value, src, keypath, 0, above=True)
    return number(value, src, keypath, 0)  # latency_slack_ms


GATE_FIELDS = tuple(f.name for f in fields(Gates) if f.name != "sources")  # what a playbook may set


def _gates(raw: Any, src: Source, keypath: KeyPath, base: Gates) -> Gates:
    overrides = mapping(raw, src, keypath, GATE_FIELDS)
    return replace(base, **{k: _gate_check(k, v, src, (*keypath, k)) for k, v in overrides.items()})


# --- params and substitution ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Param:
    type: type
    default: Any
    required: bool


def _param_specs(raw: Any, src: Source) -> dict[str, _Param]:
    specs: dict[str, _Param] = {}
    for name, spec in (raw or {}).items():
        keypath = ("params", name)
        if not _NAME.match(name):
            raise src.error(keypath, f"param names are letters, digits and _, got {name!r}")
        if isinstance(spec, dict):
            mapping(spec, src, keypath, PARAM_KEYS)
            default = spec.get("default")
            type_label = spec.get("type", _type_of(default).__name__)
            if type_label not in PARAM_TYPES:
                raise src.error((*keypath, "type"), f"expected one of {', '.join(PARAM_TYPES)}, got {type_label!r}")
            required = spec.get("required", default is None)
            if not isinstance(required, bool):
                raise src.error((*keypath, "required"), f"expected true or false, got {required!r}")
            kind = PARAM_TYPES[type_label]
            if default is not None:
                default = _coerce(default, kind, src, (*keypath, "default"))
            specs[name] = _Param(kind, default, required)
        elif isinstance(spec, list):
            raise src.error(keypath, "a param's default is a single value (string, number or boolean), got a list")
        else:
            specs[name] = _Param(_type_of(spec), spec, spec is None)
    return specs


def _type_of(default: Any) -> type:
    return str if default is None else type(default)


def _coerce(value: Any, kind: type, src: Source, keypath: KeyPath, *, field: str | None = None) -> Any:
    """`value` as a param of type `kind`; strings (from the command line) are parsed."""
    try:
        if kind is str:
            if isinstance(value, str | int | float | os.PathLike) and not isinstance(value, bool):
                return os.fspath(value) if isinstance(value, os.PathLike) else str(value)
        elif kind is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.strip().lower() in _BOOL_WORDS:
                return _BOOL_WORDS[value.strip().lower()]
        elif kind is int:
            if isinstance(value, int) and not isinstance(value, bool):
                return value
            if isinstance(value, str):
                return int(value.strip())
        elif kind is float:
            if isinstance(value, int | float) and not isinstance(value, bool):
                return float(value)
            if isinstance(value, str) and math.isfinite(parsed := float(value.strip())):
                return parsed
    except ValueError:
        pass
    expected = {str: "a string", bool: "true or false", int: "an integer", float: "a number"}[kind]
    raise src.error(keypath, f"expected {expected}, got {value!r}", field=field)


def _substitute(value: Any, params: Mapping[str, Any], src: Source, keypath: KeyPath) -> Any:
    """Replace "${name}" by the param's value; a string that is exactly "${name}" takes the param's type.

    "$${" stands for a literal "${".
    """
    if isinstance(value, dict):
        return {k: _substitute(v, params, src, (*keypath, k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, params, src, (*keypath, i)) for i, v in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value
    for name in _REF.findall(value.replace("$${", "")):
        if name not in params:
            known = ", ".join(params) or "none"
            raise src.error(keypath, f"unknown param {name!r} in {value!r} (params: {known})")
    whole = _REF.fullmatch(value)
    if whole is not None:
        return copy.deepcopy(params[whole.group(1)])
    parts = value.split("$${")
    return "${".join(_REF.sub(lambda m: _text(params[m.group(1)]), part) for part in parts)


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


# --- --set ------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Sets:
    params: dict[str, str]
    values: list[tuple[tuple[str, ...], Any, str]]  # (key path under values, value, the --set text)
    analysis: dict[str, Any]


def _split_sets(sets: Sequence[str], specs: Mapping[str, _Param], src: Source) -> _Sets:
    out = _Sets({}, [], {})
    for item in sets:
        name, sep, raw = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise PlaybookError(f"bad --set {item!r}: expected NAME=VALUE, values.KEY.PATH=VALUE or "
                                f"analysis.FIELD=VALUE", path=src.path, field="--set")
        field = f"--set {name}"
        if name.startswith("values."):
            keys = tuple(name.split(".")[1:])
            if not all(keys):
                raise PlaybookError(f"bad key path {name!r}", path=src.path, field=field)
            out.values.append((keys, yaml_value(raw, field, src.path), field))
        elif name.startswith("analysis."):
            gate = name.removeprefix("analysis.")
            if gate not in GATE_FIELDS:
                raise PlaybookError(f"unknown analysis field {gate!r} (fields: {', '.join(GATE_FIELDS)})",
                                    path=src.path, field=field)
            out.analysis[gate] = _checked_gate_set(gate, yaml_value(raw, field, src.path), src.path, field)
        elif name in specs:
            out.params[name] = raw
        else:
            known = ", ".join(specs) or "none"
            raise PlaybookError(f"unknown param {name!r}: this playbook's params are {known} (set chart values "
                                f"with values.KEY=VALUE, gates with analysis.FIELD=VALUE)",
                                path=src.path, line=src.line(("params",)), field=field)
    return out


def _checked_gate_set(gate: str, value: Any, path: Path | None, field: str) -> Any:
    try:
        return _gate_check(gate, value, Source(path), ())
    except PlaybookError as e:
        raise PlaybookError(e.reason, path=path, field=field) from e


def _set_value(values: dict[str, Any], keys: tuple[str, ...], value: Any, src: Source, field: str) -> None:
    target = values
    for i, key in enumerate(keys[:-1]):
        child = target.setdefault(key, {})
        if not isinstance(child, dict):
            raise PlaybookError(f"values.{'.'.join(keys[:i + 1])} is {type_name(child)}, not a mapping",
                                path=src.path, field=field)
        target = child
    target[keys[-1]] = value


# --- steps ------------------------------------------------------------------------------------------------------

# Step kind → (allowed arg keys, the arg a scalar shorthand sets, e.g. `weight: 10`).
STEP_ARGS: Mapping[str, tuple[tuple[str, ...], str | None]] = {
    "deploy": ((), None), "wait_ready": ((), None), "register": ((), None),
    "smoke": (("requests", "kind"), "requests"),
    "shadow": (("percent", "min_requests", "timeout_s", "analysis"), "percent"),
    "weight": (("percent", "analysis"), "percent"), "pause": (("seconds",), "seconds"),
    "finalize": (("drain_timeout_s",), "drain_timeout_s"), "rollback": (("to_revision",), "to_revision")}


def _step(raw: Any, index: int, ctx: _StepContext) -> Step:
    src, keypath = ctx.src, ("steps", index)
    if isinstance(raw, str):
        kind, args, argpath = raw, None, keypath
    elif isinstance(raw, dict) and len(raw) == 1:
        kind, args = next(iter(raw.items()))
        argpath = (*keypath, kind)
    elif isinstance(raw, dict) and raw and next(iter(raw)) in STEP_KINDS:
        first = next(iter(raw))
        others = ", ".join(k for k in raw if k != first)
        raise src.error(keypath, f"a step is a one-key mapping, got {first} and {others}: indent the step's "
                                 f"arguments under it ({first}: {{…, {others}: …}})")
    else:
        raise src.error(keypath, "a step is a name (deploy) or a one-key mapping (weight: {percent: 10})")
    if kind not in STEP_KINDS:
        raise src.error(keypath, f"unknown step {kind!r} (steps: {', '.join(STEP_KINDS)})")
    allowed, shorthand = STEP_ARGS[kind]
    if args is not None and not isinstance(args, dict):
        if shorthand is None:
            raise src.error(argpath, f"{kind} takes no arguments, got {args!r}")
        args = {shorthand: args}  # weight: 10 → weight: {percent: 10}
    args = mapping(args, src, argpath, allowed)
    normalized, gates = _STEP_ARGS_CHECKS[kind](args, src, argpath, ctx)
    return Step(kind=kind, args=normalized, gates=gates, line=src.line(keypath))


@dataclass(frozen=True)
class _StepContext:
    src: Source
    gates: Gates
    params: Mapping[str, Any]


def _no_args(args: dict, src: Source, path: KeyPath, ctx: _StepContext) -> tuple[dict, Gates | None]:
    return {}, None


def _smoke_args(args: dict, src: Source, path: KeyPath, ctx: _StepContext) -> tuple[dict, Gates | None]:
    kind = args.get("kind")
    if kind is not None and kind not in SMOKE_KINDS:
        raise src.error((*path, "kind"), f"expected one of {', '.join(SMOKE_KINDS)}, got {kind!r}")
    return {"requests": integer(args.get("requests", 3), src, (*path, "requests"), 1, 20), "kind": kind}, None


def _shadow_args(args: dict, src: Source, path: KeyPath, ctx: _StepContext) -> tuple[dict, Gates | None]:
    if "percent" not in args:
        raise src.error(path, "shadow needs percent: the share of live requests to mirror (0 < percent ≤ 100)")
    gates = _gates(args.get("analysis"), src, (*path, "analysis"), ctx.gates)
    gates = replace(gates, min_requests=_gate_check("min_requests", args.get("min_requests", gates.min_requests),
                                                    src, (*path, "min_requests")),
                    timeout_s=_gate_check("timeout_s", args.get("timeout_s", gates.timeout_s), src,
                                          (*path, "timeout_s")))
    percent = number(args["percent"], src, (*path, "percent"), 0, 100, above=True)
    return {"percent": percent, "min_requests": gates.min_requests, "timeout_s": gates.timeout_s}, gates


def _weight_args(args: dict, src: Source, path: KeyPath, ctx: _StepContext) -> tuple[dict, Gates | None]:
    if "percent" not in args:
        raise src.error(path, "weight needs percent: the share of live traffic for the new release (1..100)")
    percent = integer(args["percent"], src, (*path, "percent"), 1, 100)
    return {"percent": percent}, _gates(args.get("analysis"), src, (*path, "analysis"), ctx.gates)


def _pause_args(args: dict, src: Source, path: KeyPath, ctx: _StepContext) -> tuple[dict, Gates | None]:
    if "seconds" not in args:
        raise src.error(path, "pause needs seconds (e.g. pause: 60)")
    return {"seconds": number(args["seconds"], src, (*path, "seconds"), 0, above=True)}, None


def _finalize_args(args: dict, src: Source, path: KeyPath, ctx: _StepContext) -> tuple[dict, Gates | None]:
    return {"drain_timeout_s": integer(args.get("drain_timeout_s", 60), src, (*path, "drain_timeout_s"), 0)}, None


def _rollback_args(args: dict, src: Source, path: KeyPath, ctx: _StepContext) -> tuple[dict, Gates | None]:
    revision = args.get("to_revision", ctx.params.get("to_revision"))
    if revision is not None:
        revision = integer(revision, src, (*path, "to_revision"), 1)
    return {"to_revision": revision}, None


_STEP_ARGS_CHECKS = {"deploy": _no_args, "wait_ready": _no_args, "register": _no_args,
                     "smoke": _smoke_args, "shadow": _shadow_args, "weight": _weight_args, "pause": _pause_args,
                     "finalize": _finalize_args, "rollback": _rollback_args}


def _check_order(kind: str, steps: Sequence[Step], src: Source) -> None:
    """The step order a kind needs, so the engine never meets a step it cannot do yet."""
    def at(i: int, message: str) -> PlaybookError:
        return src.error(("steps", i), message)

    names = [s.kind for s in steps]
    if kind == "rollback":
        if names != ["rollback"]:
            raise src.error(("steps",), f"a rollback playbook has exactly one step, rollback; got {', '.join(names)}")
        return
    if "rollback" in names:
        raise at(names.index("rollback"), f"the rollback step belongs in rollback playbooks, not {kind}")
    for needed in ("deploy", "register", "finalize"):
        if needed not in names:
            raise src.error(("steps",), f"a {kind} playbook needs a {needed} step")
        if names.count(needed) > 1:
            raise at(_nth(names, needed, 2), f"{needed} appears twice")
    if names.count("wait_ready") > 1:
        raise at(_nth(names, "wait_ready", 2), "wait_ready appears twice")
    deploy, register, finalize = names.index("deploy"), names.index("register"), names.index("finalize")
    if register < deploy:
        raise at(register, "register must come after deploy (there is nothing to register yet)")
    if "wait_ready" in names and not deploy < names.index("wait_ready") < register:
        raise at(names.index("wait_ready"), "wait_ready goes between deploy and register")
    if finalize != len(steps) - 1:
        raise at(finalize + 1, "nothing may follow finalize")
    weights = [i for i, n in enumerate(names) if n == "weight"]
    for i, name in enumerate(names):
        if name in ("smoke", "shadow", "weight") and i < register:
            raise at(i, f"{name} must come after register (the new release must be in the registry)")
        if name == "shadow" and weights and i > weights[0]:
            raise at(i, "shadow must come before the weight steps (mirroring measures a release that takes no "
                        "live traffic yet)")
    if not weights:
        raise at(finalize, "needs at least one weight step before finalize, the last one at 100")
    for previous, current in zip(weights, weights[1:]):
        before, now = steps[previous].args["percent"], steps[current].args["percent"]
        if now <= before:
            raise at(current, f"weights must increase: {now} after {before} "
                              f"(line {steps[previous].line})")
    if steps[weights[-1]].args["percent"] != 100:
        raise at(weights[-1], f"the last weight must be 100 (finalize moves all traffic to the new release), "
                              f"got {steps[weights[-1]].args['percent']}")
    if kind == "blue-green" and len(weights) != 1:
        raise at(weights[0], "a blue-green playbook switches all traffic at once: exactly one step weight: 100")


def _nth(names: Sequence[str], name: str, n: int) -> int:
    return [i for i, x in enumerate(names) if x == name][n - 1]


# --- loading ----------------------------------------------------------------------------------------------------

def load_playbook(path: Path, sets: Sequence[str] = (), *, params: Mapping[str, Any] = {},  # noqa: B006
                  slos: SloBook | None = None) -> Playbook:
    """Read, resolve and check a playbook.

    Args:
        path: the YAML file.
        sets: --set items: NAME=V (a declared param), values.A.B=V (YAML-typed), analysis.FIELD=V (every gate).
        params: values from the CLI's own flags (model, env, version, deployer, …), applied before `sets`;
            None means "not given". Params the playbook does not declare are kept as given.
        slos: the SLO targets (opsctl passes its own). Given, the gates the playbook leaves out that an SLO can
            set (max_error_rate, max_p95_latency_ms) come from the SLO of the model and environment; None, they
            keep Gates' defaults. A gate set to "slo" comes from the SLO either way (None: the built-in targets).

    Raises:
        PlaybookError: anything wrong, naming the file, the line and the field.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise PlaybookError("no such playbook file", path=path) from e
    except (OSError, UnicodeDecodeError) as e:
        raise PlaybookError(f"cannot read the playbook: {e}", path=path) from e
    src = Source(path)
    return _build(parse(text, src), src, sets, params, slos)


def _build(doc: dict[str, Any], src: Source, sets: Sequence[str], cli_params: Mapping[str, Any],
           slos: SloBook | None = None) -> Playbook:
    from opsctl.rollout.slo_gates import initial, resolve

    mapping(doc, src, (), TOP_KEYS)
    if "kind" not in doc:
        raise src.error((), f"missing kind (one of {', '.join(KINDS)})", field="kind")
    kind = doc["kind"]
    if kind not in KINDS:
        raise src.error(("kind",), f"expected one of {', '.join(KINDS)}, got {kind!r}")
    if not isinstance(doc.get("params") or {}, dict):
        raise src.error(("params",), f"expected a mapping of param: default, got {doc['params']!r}")
    specs = _param_specs(doc.get("params"), src)
    sets_split = _split_sets(sets, specs, src)
    params, origins = _resolve_params(specs, cli_params, sets_split, src)
    _check_params(kind, params, origins, src)

    body = _substitute({k: v for k, v in doc.items() if k not in ("kind", "params")}, params, src, ())
    description = string(body.get("description", ""), src, ("description",))
    readiness = integer(body.get("readiness_timeout_s", 300), src, ("readiness_timeout_s",), 1)
    values = copy.deepcopy(_mapping_of_any(body.get("values"), src, ("values",)))
    gates = _gates(body.get("analysis"), src, ("analysis",), initial(Gates(), from_slo=slos is not None))
    raw_steps = body.get("steps")
    if not isinstance(raw_steps, list) or not raw_steps:
        raise src.error(("steps",), "expected a non-empty list of steps", field="steps")
    ctx = _StepContext(src, gates, params)
    steps = [_step(raw, i, ctx) for i, raw in enumerate(raw_steps)]
    _check_order(kind, steps, src)

    for keys, value, field in sets_split.values:
        _set_value(values, keys, value, src, field)
    if sets_split.analysis:
        gates = replace(gates, **sets_split.analysis)
        steps = [_override_gates(s, sets_split.analysis) for s in steps]
    model, env = str(params["model"]), str(params["to"] if kind == "promote" else params["env"])
    gates = resolve(gates, slos, model, env)
    steps = [s if s.gates is None else replace(s, gates=resolve(s.gates, slos, model, env)) for s in steps]
    return Playbook(path=src.path, kind=kind, description=description, params=params, values=values,
                    readiness_timeout_s=readiness, steps=tuple(steps), gates=gates)


def _mapping_of_any(value: Any, src: Source, keypath: KeyPath) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise src.error(keypath, f"expected a mapping, got {type_name(value)} {value!r}")
    return value


def _resolve_params(specs: Mapping[str, _Param], cli: Mapping[str, Any], sets: _Sets,
                    src: Source) -> tuple[dict[str, Any], dict[str, str]]:
    """Defaults, then the CLI's flags, then --set; with where each value came from (for error messages)."""
    params: dict[str, Any] = {name: spec.default for name, spec in specs.items() if not spec.required}
    origins: dict[str, str] = {name: f"params.{name}" for name in params}
    for name, value in cli.items():
        if value is None:
            continue
        origins[name] = f"params.{name} (from the command line)"
        if name in specs:
            params[name] = _coerce(value, specs[name].type, src, ("params", name), field=origins[name])
        else:  # a flag the playbook does not declare: kept, JSON-able (the spec is stored)
            params[name] = value if isinstance(value, str | int | float | bool) else str(value)
    for name, raw in sets.params.items():
        origins[name] = f"--set {name}"
        params[name] = _coerce(raw, specs[name].type, src, ("params", name), field=origins[name])
    missing = [name for name, spec in specs.items() if spec.required and params.get(name) is None]
    if missing:
        many = len(missing) > 1
        hint = " ".join(f"--set {name}=VALUE" for name in missing)
        raise src.error(("params", missing[0]), f"required param{'s' if many else ''} {', '.join(missing)} not "
                                                f"given (give {'them' if many else 'it'} with {hint})")
    return params, origins


def _check_params(kind: str, params: Mapping[str, Any], origins: Mapping[str, str], src: Source) -> None:
    for name in NEEDED_PARAMS[kind]:
        if params.get(name) is None:
            raise src.error(("params",), f"a {kind} playbook needs param {name!r}: declare it under params",
                            field="params")
    for name in ENV_PARAMS:
        if params.get(name) is not None and params[name] not in ENVIRONMENTS:
            raise src.error(("params", name), f"unknown environment {params[name]!r}: expected one of "
                                              f"{', '.join(ENVIRONMENTS)}", field=origins.get(name))
    if kind == "promote" and params["from"] == params["to"]:
        raise src.error(("params", "to"), f"promotion from {params['from']!r} to itself", field=origins.get("to"))


def _override_gates(step: Step, overrides: Mapping[str, Any]) -> Step:
    """A --set analysis.FIELD wins over every step's own value (the command line is the last word)."""
    if step.gates is None:
        return step
    gates = replace(step.gates, **overrides)
    args = dict(step.args)
    if step.kind == "shadow":
        args.update(min_requests=gates.min_requests, timeout_s=gates.timeout_s)
    return replace(step, gates=gates, args=args)


def default_playbook(kind: str) -> Path:
    """The playbook shipped for `kind` (playbooks/<kind>.yaml next to the opsctl package).

    Raises:
        PlaybookError: unknown kind, or the playbooks directory is not there (an installed wheel without the
            source tree: give --playbook FILE).
    """
    if kind not in KINDS:
        raise PlaybookError(f"no default playbook for {kind!r} (kinds: {', '.join(KINDS)})", field="kind")
    path = Path(__file__).resolve().parents[2] / "playbooks" / f"{kind}.yaml"
    if not path.is_file():
        raise PlaybookError(f"the default {kind} playbook is not installed here; give one with --playbook FILE "
                            f"(see playbooks/ in the Fleetgate source)", path=path)
    return path


def plan(playbook: Playbook) -> list[str]:
    """The --dry-run plan: one numbered line per step with its gates, e.g.
    "4. smoke: 3 chat requests through the gateway to the new release (must all succeed)"."""
    from opsctl.rollout.plan import plan_lines

    return plan_lines(playbook)


def summary(playbook: Playbook) -> str:
    """One line saying what the playbook does, e.g. "canary of demo-chat to version 2 in production (…)"."""
    from opsctl.rollout.plan import summary_line

    return summary_line(playbook)
