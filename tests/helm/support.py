"""Render charts with the real Helm engine and validate what they produce, without a cluster.

Shared by every test under tests/helm/: the chart tests, the alert-rule tests and the dashboard tests.

    from tests.helm.support import VLLM_CHART, render, validate, find

    manifests = render(VLLM_CHART, "values-production.yaml", set={"model.name": "qwen:7b"})
    validate(manifests)                       # every manifest against Kubernetes 1.37 (strict schemas)
    deployment = find(manifests, "Deployment")

API: `render`, `values_for`, `lint`, `validate`, `metadata_problems`, `find`, `of_kind`, `opsctl_params`;
constants `REPO_ROOT`, `HELM_DIR`, `VLLM_CHART`, `GATEWAY_CHART`, `ENVIRONMENTS`, `KUBE_VERSION`, `CRD_KINDS`, `RELEASE`,
`NAMESPACE`, `DNS_1035_LABEL`.

Kinds with no schema in kubernetes_validate (custom resources) are listed in `CRD_KINDS`; `validate` checks
only their envelope (metadata and a spec) and fails on any other unknown kind. The OpenAPI schemas do not
check names or labels; `validate` also applies the API server's rules for those (`metadata_problems`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import helm_python
import kubernetes_validate
import yaml

from opsctl.deploy.helm import merge_values

REPO_ROOT = Path(__file__).resolve().parents[2]
HELM_DIR = REPO_ROOT / "helm"
VLLM_CHART = HELM_DIR / "vllm-deployment"
GATEWAY_CHART = HELM_DIR / "gateway"
ENVIRONMENTS = ("development", "staging", "production")

# Newest Kubernetes the installed kubernetes_validate ships schemas for (`kubernetes_validate.utils.latest_version()`);
# pinned so a package upgrade cannot silently change what the tests check.
KUBE_VERSION = "1.37.0"

# Custom resources kubernetes_validate has no schema for (it ships only built-in kinds):
# (apiVersion, kind) pairs whose envelope alone is checked.
CRD_KINDS: frozenset[tuple[str, str]] = frozenset(
    {
        ("monitoring.coreos.com/v1", "ServiceMonitor"),
        ("monitoring.coreos.com/v1", "PodMonitor"),
        ("monitoring.coreos.com/v1", "PrometheusRule"),
        ("monitoring.coreos.com/v1alpha1", "AlertmanagerConfig"),
        ("keda.sh/v1alpha1", "ScaledObject"),
        ("keda.sh/v1alpha1", "TriggerAuthentication"),
        ("argoproj.io/v1alpha1", "Application"),
        ("argoproj.io/v1alpha1", "ApplicationSet"),
        ("argoproj.io/v1alpha1", "AppProject"),
    }
)

_DNS_1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
DNS_1035_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_LABEL_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
# Kinds whose name the API server holds to a DNS-1035 label (it becomes a DNS name), not a subdomain.
_DNS_1035_KINDS = frozenset({"Service"})

RELEASE = "test"
NAMESPACE = "fleetgate"


def values_for(chart_dir: str | os.PathLike[str], *values_files: str | os.PathLike[str],
               set: Mapping[str, Any] | None = None) -> dict[str, Any]:  # noqa: A002 - mirrors `helm --set`
    """User values as `helm -f A -f B --set k=v` composes them (the chart's defaults are not included).

    Args:
        chart_dir: the chart; relative values files are looked up in it.
        values_files: YAML files merged in order, later ones winning (deep merge of mappings).
        set: dotted paths to values, applied last and taken verbatim (`{"replicaCount": "two"}` stays a
            string, unlike `--set`, so tests can feed badly typed values to the schema).
    """
    merged: dict[str, Any] = {}
    for values_file in values_files:
        path = Path(chart_dir, values_file)
        merged = merge_values(merged, helm_python.values_from_yaml(path.read_text()))
    for dotted, value in (set or {}).items():
        *parents, leaf = dotted.split(".")
        node = merged
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return merged


def render(chart_dir: str | os.PathLike[str], *values_files: str | os.PathLike[str],
           set: Mapping[str, Any] | None = None,  # noqa: A002 - mirrors `helm --set`
           release: str = RELEASE, namespace: str = NAMESPACE) -> list[dict[str, Any]]:
    """Render a chart like `helm template` and return its manifests (hooks included, NOTES.txt left out).

    Raises:
        helm_python.HelmValuesError: the values break the chart's values.schema.json (the message names the key).
        helm_python.HelmRenderError: a template failed (e.g. a `required` or `fail` call).
    """
    values = values_for(chart_dir, *values_files, set=set)
    with helm_python.Chart.load(os.fspath(chart_dir)) as chart:
        rendered = chart.render(values, name=release, namespace=namespace, is_install=True)
    manifests: list[dict[str, Any]] = []
    for template in sorted(rendered):
        if template.endswith("NOTES.txt"):
            continue
        manifests.extend(doc for doc in yaml.safe_load_all(rendered[template]) if doc)
    return manifests


def lint(chart_dir: str | os.PathLike[str], *values_files: str | os.PathLike[str],
         set: Mapping[str, Any] | None = None,  # noqa: A002 - mirrors `helm --set`
         namespace: str = NAMESPACE) -> list[str]:
    """`helm lint --strict` for the pinned Kubernetes version; returns the warnings and errors (empty = clean).

    Helm's lint mode only logs a template's `fail` and `required`: test those with `render`.
    """
    values = values_for(chart_dir, *values_files, set=set)
    report = helm_python.lint(os.fspath(chart_dir), values, strict=True, namespace=namespace,
                              kube_version=f"v{KUBE_VERSION}")
    findings = [f"{m['path']}: {m['error']}" for m in report["messages"] if m["severity"] >= 2]
    return findings + list(report.get("errors") or [])


def validate(manifests: Iterable[Mapping[str, Any]], *, kube_version: str = KUBE_VERSION) -> None:
    """Validate every manifest against the strict Kubernetes schemas (unknown fields are errors).

    Raises:
        AssertionError: listing every invalid manifest (kind/name and the schema's message), every manifest
            of a kind that is neither built in nor in `CRD_KINDS`, and every duplicated kind/name.
    """
    problems: list[str] = []
    seen: set[tuple[str, str, str]] = set()
    for manifest in manifests:
        label = f"{manifest.get('kind')}/{(manifest.get('metadata') or {}).get('name')}"
        identity = (str(manifest.get("apiVersion")), label, str((manifest.get("metadata") or {}).get("namespace")))
        if identity in seen:
            problems.append(f"{label}: rendered twice")
        seen.add(identity)
        problems.extend(f"{label}: {p}" for p in metadata_problems(manifest))
        if (manifest.get("apiVersion"), manifest.get("kind")) in CRD_KINDS:
            if not isinstance(manifest.get("spec"), dict):
                problems.append(f"{label}: spec is missing or not a mapping")
            continue
        try:
            kubernetes_validate.validate(dict(manifest), kube_version, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(p) for p in e.absolute_path) or "<root>"
            problems.append(f"{label}: {path}: {e.message}")
        except kubernetes_validate.SchemaNotFoundError as e:
            problems.append(f"{label}: {e.message} (add it to CRD_KINDS if it is a custom resource)")
    assert not problems, "invalid manifests:\n  " + "\n  ".join(problems)


def opsctl_params(args: Sequence[str]) -> dict[str, Any]:
    """Parse a container's `opsctl ...` arguments with the real CLI, without running the command.

    Proves that a chart only uses commands, options and value types that opsctl has.

    Returns:
        The command's parameters after conversion, e.g. {"model": "qwen:7b", "weight": 100, ...}.

    Raises:
        LookupError: no such command.
        typer.exceptions.TyperException: (a usage error) an unknown option or a value of the wrong type.
    """
    import typer.core
    import typer.main

    from opsctl.cli import app

    command = typer.main.get_command(app)
    ctx = command.context_class(command, info_name="opsctl")
    name, rest = "opsctl", list(args)
    while isinstance(command, typer.core.TyperGroup):
        if not rest:
            raise LookupError(f"{ctx.command_path}: a subcommand is missing")
        name, rest = rest[0], rest[1:]
        sub = command.get_command(ctx, name)
        if sub is None:
            raise LookupError(f"{ctx.command_path}: no such command {name!r}")
        if isinstance(sub, typer.core.TyperGroup):
            ctx = sub.context_class(sub, info_name=name, parent=ctx)
        command = sub
    return dict(command.make_context(name, rest, parent=ctx).params)


def of_kind(manifests: Iterable[Mapping[str, Any]], kind: str) -> list[dict[str, Any]]:
    """All manifests of one kind, in render order."""
    return [dict(m) for m in manifests if m.get("kind") == kind]


def find(manifests: Iterable[Mapping[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    """The one manifest of `kind` (and `name`, if given); fails if there is none or more than one."""
    matches = [m for m in of_kind(manifests, kind) if name is None or m["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind}{'/' + name if name else ''}, found {len(matches)}"
    return matches[0]


def metadata_problems(manifest: Mapping[str, Any]) -> list[str]:
    """The API server's checks of names and labels, which the OpenAPI schemas leave out.

    Names: a DNS-1123 subdomain (<= 253), or a DNS-1035 label (<= 63) for a Service. Labels (object's and
    pod template's): keys `[prefix/]name` with name <= 63, values <= 63 of `[A-Za-z0-9_.-]` with alphanumeric ends.
    """
    metadata = manifest.get("metadata") or {}
    name = metadata.get("name")
    problems = []
    if manifest.get("kind") in _DNS_1035_KINDS:
        if not isinstance(name, str) or len(name) > 63 or not DNS_1035_LABEL.fullmatch(name):
            problems.append(f"metadata.name {name!r} is not a DNS-1035 label (a-z, 0-9, '-', at most 63)")
    elif not isinstance(name, str) or len(name) > 253 or not _DNS_1123_SUBDOMAIN.fullmatch(name):
        problems.append(f"metadata.name {name!r} is not a DNS-1123 subdomain")
    template = ((manifest.get("spec") or {}).get("template") or {}).get("metadata") or {}
    for where, labels in (("metadata.labels", metadata.get("labels")), ("template labels", template.get("labels"))):
        for key, value in (labels or {}).items():
            prefix, _, label_name = str(key).rpartition("/")
            if len(label_name) > 63 or not _LABEL_NAME.fullmatch(label_name) or (
                    prefix and not _DNS_1123_SUBDOMAIN.fullmatch(prefix)):
                problems.append(f"{where}: key {key!r} is not a valid label key")
            if not isinstance(value, str) or len(value) > 63 or (value and not _LABEL_NAME.fullmatch(value)):
                problems.append(f"{where}: {key}={value!r} is not a valid label value (a string of at most 63)")
    return problems
