"""HelmDeployer: releases on Kubernetes through the real Helm engine, a `helm` binary or helm-python-sdk.

Both engines do the same things (`upgrade --install --wait --atomic`, rollback, history, status, get values,
uninstall), one by building argv, the other keyword calls; the builders are separate from the running so tests
can assert the exact contract. helm_python (244 MB of native library) is imported only inside the SDK engine's methods.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from gateway.errors import FleetgateError
from opsctl.deploy import (
    PENDING_STATES,
    DeployError,
    DeployerOptions,
    DeployInputError,
    DeploymentStatus,
    Pod,
    ReleaseNotFound,
    ReleaseStuck,
    Revision,
)

# Where `helm status -o json` (Helm 4; Helm 3 with --show-resources) puts the pods of the release's workloads.
RELATED_PODS = "v1/Pod(related)"
READ_TIMEOUT_S = 120  # history/status: Helm itself has no deadline for reads
ERROR_MAX = 500  # characters of Helm's message kept in a one-line error


class HelmEngine(Protocol):
    """What HelmDeployer needs from Helm. Failures raise our errors (DeployError and subclasses)."""

    name: str

    def render(self, release: str, chart: Path, values_files: Sequence[Path], values: Mapping[str, Any]) -> str:
        """`helm template`: the manifests, offline (no cluster)."""
        ...

    def upgrade(self, release: str, chart: Path, values_files: Sequence[Path], values: Mapping[str, Any], *,
                install: bool, description: str | None, timeout_s: int | None = None) -> None:
        """timeout_s: Helm's --timeout for this change (None: the options')."""
        ...

    def rollback(self, release: str, revision: int, *, timeout_s: int | None = None) -> None: ...

    def history(self, release: str) -> list[Revision]: ...

    def values(self, release: str, revision: int) -> dict[str, Any]:
        """`helm get values --all`: the values `revision` was rendered with (chart defaults included)."""
        ...

    def pods(self, release: str) -> tuple[Pod, ...] | None:
        """The pods Helm reports for the release's workloads; None when this engine cannot tell."""
        ...

    def uninstall(self, release: str) -> None: ...


class HelmDeployer:
    """The Deployer for Kubernetes: one kube context and namespace, one engine.

    Every change is checked offline first (the chart renders with these values and its schema accepts
    them), and refused while the release is stuck in a pending state, with the command that recovers it.
    """

    def __init__(self, engine: HelmEngine, options: DeployerOptions) -> None:
        self.engine = engine
        self.options = options

    @classmethod
    def from_options(cls, options: DeployerOptions) -> HelmDeployer:
        """The `helm` binary on PATH when there is one (its status reports pods, and it is the Helm the
        operator uses by hand), else helm-python-sdk. Without a namespace, the kube context's, as Helm's
        CLI takes it (helm-python-sdk 0.2.2 would take "default"), so both engines act on the same one.

        Raises:
            DeployError: neither is available.
        """
        if options.namespace is None:
            # Read here, at construction, as Helm and kubectl do: KUBECONFIG may list several files.
            kubeconfigs = ([options.kubeconfig] if options.kubeconfig
                           else _kubeconfig_files(os.environ.get("KUBECONFIG")))
            options = replace(options, namespace=context_namespace(kubeconfigs, options.kube_context))
        binary = shutil.which("helm")
        if binary:
            return cls(HelmCli(binary, options), options)
        if importlib.util.find_spec("helm_python") is None:
            raise DeployError("no Helm engine: install helm-python-sdk (pip install 'fleetgate[helm]') "
                              "or put a helm binary on PATH")
        return cls(HelmSdk(options), options)

    def render(self, release: str, chart: Path, values: Mapping[str, Any], *,
               values_files: Sequence[Path] = ()) -> str:
        """The manifests `apply` would send, rendered offline.

        Raises:
            DeployInputError: missing chart or values file, values the chart's schema refuses, a template error.
        """
        _check_files(chart, values_files)
        return self.engine.render(release, chart, values_files, values)

    def apply(self, release: str, chart: Path | None, values: Mapping[str, Any], *,
              values_files: Sequence[Path] = (), description: str | None = None, timeout_s: int | None = None,
              version: str | None = None) -> Revision:
        """Helm keeps no version of its own beside the chart's appVersion: `version` goes into the description
        (unless one is given), so `helm history` still says what each revision deployed."""
        if chart is None:
            raise DeployInputError("the Helm deployer needs a chart directory", param="chart")
        self.render(release, chart, values, values_files=values_files)
        try:
            history = self.history(release)
        except ReleaseNotFound:
            history = []
        self._refuse_if_stuck(release, history)
        if description is None and version:
            description = f"version {version}"
        self.engine.upgrade(release, chart, values_files, values, install=not history, description=description,
                            timeout_s=timeout_s)
        return self.history(release)[-1]

    def status(self, release: str) -> DeploymentStatus:
        history = self.history(release)
        pods = self.engine.pods(release)
        current = history[-1]
        deployed = current.status == "deployed"
        ready = deployed if pods is None else deployed and bool(pods) and all(p.ready for p in pods)
        return DeploymentStatus(release=release, namespace=self.options.namespace, current=current,
                                pods=pods, engine=self.engine.name,
                                recovery=recovery_command(release, history, self.options), ready=ready)

    def endpoints(self, release: str) -> list[str]:
        """The Service of the deployed revision, from the values Helm rendered it with (the chart's
        `vllm.endpointURL`: name, namespace, cluster domain and port); empty when no revision is deployed."""
        deployed = [r for r in self.history(release) if r.status == "deployed"]
        if not deployed:
            return []
        values = self.engine.values(release, deployed[-1].revision)
        return [service_url(values, self.options.namespace or "default")]

    def prune(self, release: str) -> None:
        """Nothing to do: Kubernetes replaced the pods of superseded revisions during the upgrade."""
        self.history(release)  # an unknown release is still an error, as for every other operation

    def history(self, release: str) -> list[Revision]:
        history = self.engine.history(release)
        if not history:  # every revision purged: Helm answers "not found" for it elsewhere
            raise _not_found(release, self.options)
        return history

    def rollback(self, release: str, revision: int, *, timeout_s: int | None = None) -> Revision:
        """Allowed on a stuck release: rolling back is how it is recovered."""
        history = self.history(release)
        if revision not in {r.revision for r in history}:
            known = ", ".join(str(r.revision) for r in history)
            raise DeployInputError(f"release {release} has no revision {revision} (it has {known})",
                                   param="revision")
        self.engine.rollback(release, revision, timeout_s=timeout_s)
        return self.history(release)[-1]

    def uninstall(self, release: str) -> None:
        self.engine.uninstall(release)

    def _refuse_if_stuck(self, release: str, history: list[Revision]) -> None:
        command = recovery_command(release, history, self.options)
        if command is None:
            return
        current = history[-1]
        raise ReleaseStuck(
            f"release {release} is stuck in {current.status} (revision {current.revision}, {current.updated}); "
            f"if no other helm or opsctl operation is still running on it, recover with: {command}")


def recovery_command(release: str, history: Sequence[Revision], options: DeployerOptions) -> str | None:
    """The command that unsticks a release left pending, or None when its last revision is not pending.

    Back to the last revision that was deployed (Helm itself refuses any upgrade meanwhile); a release that
    was never deployed can only be uninstalled, then applied again.
    """
    if not history or history[-1].status not in PENDING_STATES:
        return None
    earlier = history[:-1]
    good = [r for r in earlier if r.status == "deployed"] or [r for r in earlier if r.status == "superseded"]
    action = ["rollback", release, str(good[-1].revision)] if good else ["uninstall", release]
    return shlex.join(["helm", *action, *_target_flags(options)])


def service_url(values: Mapping[str, Any], namespace: str) -> str:
    """The chart's `vllm.endpointURL` for these (computed) values: http://{service}.{ns}.svc.{domain}:{port}.

    Raises:
        DeployError: the values lack what the chart needs to name its Service (not a release of this chart).
    """
    from opsctl.deploy.naming import service_name

    model = values.get("model") if isinstance(values.get("model"), Mapping) else {}
    service = values.get("service") if isinstance(values.get("service"), Mapping) else {}
    name, env = model.get("name"), values.get("environment")
    if not isinstance(name, str) or not name or not isinstance(env, str) or not env:
        raise DeployError("the release's values name no model.name and environment: is it a release of "
                          "the vllm-deployment chart?")
    host = service_name(name, str(env), name_suffix=str(values.get("nameSuffix") or ""),
                        kubernetes_name_override=str(model.get("kubernetesName") or ""))
    domain = values.get("clusterDomain") or "cluster.local"
    port = service.get("port") or 8000
    return f"http://{host}.{namespace}.svc.{domain}:{int(port)}"


SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def _kubeconfig_files(kubeconfig_env: str | None) -> list[Path]:
    if kubeconfig_env:
        return [Path(p) for p in kubeconfig_env.split(os.pathsep) if p]
    return [Path.home() / ".kube" / "config"]


def context_namespace(kubeconfigs: Sequence[Path], kube_context: str | None) -> str:
    """The namespace of `kube_context` (else the current context) in these kubeconfig files, merged the way
    client-go merges them (the first file to name a context wins); in a pod without a kubeconfig, the service
    account's; else "default". Unreadable files are skipped: Helm itself reports them."""
    import yaml

    contexts: dict[str, Any] = {}
    current = None
    found = False
    for path in kubeconfigs:
        try:
            config = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError):
            continue
        if not isinstance(config, dict):
            continue
        found = True
        current = current or config.get("current-context")
        for entry in config.get("contexts") or ():
            if isinstance(entry, dict) and isinstance(entry.get("name"), str):
                contexts.setdefault(entry["name"], entry.get("context") or {})
    if not found and SERVICE_ACCOUNT_NAMESPACE.is_file():
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or "default"
    context = contexts.get(kube_context or current or "")
    namespace = context.get("namespace") if isinstance(context, dict) else None
    return namespace if isinstance(namespace, str) and namespace else "default"


def _target_flags(options: DeployerOptions) -> list[str]:
    flags = ["--kubeconfig", str(options.kubeconfig)] if options.kubeconfig else []
    if options.namespace:
        flags += ["--namespace", options.namespace]
    if options.kube_context:
        flags += ["--kube-context", options.kube_context]
    return flags


def check_chart(chart: Path) -> Path:
    """`chart` if it is a chart directory.

    Raises:
        DeployInputError: it is not.
    """
    if not (chart / "Chart.yaml").is_file():
        raise DeployInputError(f"chart directory {chart} not found (no {chart / 'Chart.yaml'})", param="chart")
    return chart


def _check_files(chart: Path, values_files: Sequence[Path]) -> None:
    check_chart(chart)
    for path in values_files:
        if not path.is_file():
            raise DeployInputError(f"values file {path} not found", param="values")


def _one_line(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= ERROR_MAX else line[:ERROR_MAX - 1] + "…"


def _where(options: DeployerOptions) -> str:
    parts = [f"context {options.kube_context}" if options.kube_context else "the current kube context"]
    if options.namespace:
        parts.append(f"namespace {options.namespace}")
    return ", ".join(parts)


def _unreachable(options: DeployerOptions, detail: str) -> DeployError:
    return DeployError(f"cannot reach the Kubernetes API ({_where(options)}): {_one_line(detail)}")


def _not_found(release: str, options: DeployerOptions) -> ReleaseNotFound:
    return ReleaseNotFound(f"release {release} not found ({_where(options)})", param="release")


def parse_history(entries: Sequence[Mapping[str, Any]]) -> list[Revision]:
    """`helm history -o json` → revisions, oldest first."""
    revisions = [Revision(revision=int(e["revision"]), status=str(e.get("status", "")),
                          chart=str(e.get("chart", "")), app_version=str(e.get("app_version", "")),
                          updated=str(e.get("updated", "")), description=str(e.get("description", "")))
                 for e in entries]
    return sorted(revisions, key=lambda r: r.revision)


def parse_pods(release_json: Mapping[str, Any]) -> tuple[Pod, ...] | None:
    """The related pods of `helm status -o json`; None when the output carries no resources at all."""
    resources = (release_json.get("info") or {}).get("resources")
    if resources is None:
        return None
    return tuple(_pod(p) for p in resources.get(RELATED_PODS) or ())


def _pod(pod: Mapping[str, Any]) -> Pod:
    status = pod.get("status") or {}
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or ())
    restarts = sum(int(c.get("restartCount", 0)) for c in status.get("containerStatuses") or ())
    return Pod(name=str((pod.get("metadata") or {}).get("name", "")), phase=str(status.get("phase", "")),
               ready=ready, restarts=restarts)


class HelmCli:
    """The engine that runs a `helm` binary (Helm 3 or 4).

    `--atomic` rather than Helm 4's `--rollback-on-failure`: Helm 3 knows only the first and Helm 4 still
    accepts it, so a failed upgrade rolls itself back (and a failed first install removes itself) on both.
    Values go in a private temporary file, never on the command line, where `ps` would show them.
    """

    def __init__(self, binary: str, options: DeployerOptions) -> None:
        self.binary = binary
        self.options = options
        self.name = f"helm binary {binary}"

    def _timeout(self, timeout_s: int | None = None) -> list[str]:
        return ["--timeout", f"{timeout_s or self.options.timeout_s}s"]

    def _values(self, values_files: Sequence[Path], values_file: Path) -> list[str]:
        return [arg for path in (*values_files, values_file) for arg in ("--values", str(path))]

    def template_argv(self, release: str, chart: Path, values_files: Sequence[Path], values_file: Path) -> list[str]:
        namespace = ["--namespace", self.options.namespace] if self.options.namespace else []
        return [self.binary, "template", release, str(chart), *self._values(values_files, values_file), *namespace]

    def upgrade_argv(self, release: str, chart: Path, values_files: Sequence[Path], values_file: Path,
                     description: str | None, timeout_s: int | None = None) -> list[str]:
        described = ["--description", description] if description else []
        return [self.binary, "upgrade", release, str(chart), "--install", "--reset-values",
                *self._values(values_files, values_file), "--wait", "--atomic", *self._timeout(timeout_s),
                *described, *_target_flags(self.options)]

    def rollback_argv(self, release: str, revision: int, timeout_s: int | None = None) -> list[str]:
        return [self.binary, "rollback", release, str(revision), "--wait", *self._timeout(timeout_s),
                *_target_flags(self.options)]

    def values_argv(self, release: str, revision: int) -> list[str]:
        return [self.binary, "get", "values", release, "--all", "--revision", str(revision), "--output", "json",
                *_target_flags(self.options)]

    def history_argv(self, release: str) -> list[str]:
        return [self.binary, "history", release, "--output", "json", *_target_flags(self.options)]

    def status_argv(self, release: str) -> list[str]:
        return [self.binary, "status", release, "--output", "json", *_target_flags(self.options)]

    def uninstall_argv(self, release: str) -> list[str]:
        return [self.binary, "uninstall", release, "--wait", *self._timeout(), *_target_flags(self.options)]

    def render(self, release: str, chart: Path, values_files: Sequence[Path], values: Mapping[str, Any]) -> str:
        with _values_file(values) as values_file:
            argv = self.template_argv(release, chart, values_files, values_file)
            return self._run(argv, release, input_error=True)

    def upgrade(self, release: str, chart: Path, values_files: Sequence[Path], values: Mapping[str, Any], *,
                install: bool, description: str | None, timeout_s: int | None = None) -> None:
        # `upgrade --install` decides install-or-upgrade itself, exactly as Helm's users know it.
        with _values_file(values) as values_file:
            argv = self.upgrade_argv(release, chart, values_files, values_file, description, timeout_s)
            self._run(argv, release, timeout=(timeout_s or self.options.timeout_s) + 60)

    def rollback(self, release: str, revision: int, *, timeout_s: int | None = None) -> None:
        self._run(self.rollback_argv(release, revision, timeout_s), release,
                  timeout=(timeout_s or self.options.timeout_s) + 60)

    def history(self, release: str) -> list[Revision]:
        return parse_history(self._json(self.history_argv(release), release))

    def values(self, release: str, revision: int) -> dict[str, Any]:
        values = self._json(self.values_argv(release, revision), release)
        return values if isinstance(values, dict) else {}

    def pods(self, release: str) -> tuple[Pod, ...] | None:
        return parse_pods(self._json(self.status_argv(release), release))

    def uninstall(self, release: str) -> None:
        self._run(self.uninstall_argv(release), release, timeout=self.options.timeout_s + 60)

    def _json(self, argv: list[str], release: str) -> Any:
        out = self._run(argv, release)
        try:
            return json.loads(out)
        except ValueError as e:
            raise DeployError(f"helm {argv[1]} {release} printed no JSON: {_one_line(out)}") from e

    def _run(self, argv: list[str], release: str, *, timeout: float = READ_TIMEOUT_S,
             input_error: bool = False) -> str:
        """Run helm; its `Error: …` line becomes our error (input_error: a rendering problem, exit 2)."""
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as e:
            raise DeployError(f"helm {argv[1]} {release} did not finish within {timeout:.0f} s") from e
        except OSError as e:
            raise DeployError(f"cannot run {self.binary}: {e.strerror or e}") from e
        if done.returncode == 0:
            return done.stdout
        raise self._error(argv[1], release, _helm_error(done.stderr) or f"exit {done.returncode}", input_error)

    def _error(self, action: str, release: str, detail: str, input_error: bool) -> FleetgateError:
        if "cluster unreachable" in detail.lower():
            return _unreachable(self.options, detail)
        if detail.endswith("not found") and action in ("history", "status", "rollback", "uninstall", "get"):
            return _not_found(release, self.options)
        if input_error:
            return DeployInputError(f"the chart does not render: {_one_line(detail)}", param="values")
        return DeployError(f"helm {action} {release} failed: {_one_line(detail)}")


def _helm_error(stderr: str) -> str:
    """Helm's last `Error: …` (it may run over several lines), without the warnings printed before it."""
    lines = stderr.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("Error:")]
    kept = lines[starts[-1]:] if starts else lines
    return " ".join(" ".join(kept).removeprefix("Error:").split())


@contextmanager
def _values_file(values: Mapping[str, Any]) -> Iterator[Path]:
    """The values as a file only this user can read (JSON is YAML), removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="opsctl-helm-") as directory:  # created 0700
        path = Path(directory, "values.yaml")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(values, f)
        yield path


@dataclass(frozen=True)
class SdkCall:
    """One helm_python.Config method call: what the SDK engine sends, and what contract tests assert."""

    method: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)


class HelmSdk:
    """The engine that runs Helm 4 in-process through helm-python-sdk (no helm binary, no Go toolchain).

    helm-python-sdk 0.2.2 returns release summaries without the resources Helm's status fetched and without
    descriptions: descriptions come from one `get_all` per revision; pods are reported unknown (None).
    """

    def __init__(self, options: DeployerOptions) -> None:
        import helm_python

        self.options = options
        self.name = f"helm-python-sdk {helm_python.__version__} (Helm {helm_python.EXPECTED_HELM_SDK_VERSION})"

    def config_kwargs(self) -> dict[str, Any]:
        pairs = {"kubeconfig_path": self.options.kubeconfig and str(self.options.kubeconfig),
                 "kube_context": self.options.kube_context, "namespace": self.options.namespace}
        return {k: v for k, v in pairs.items() if v}

    def _change(self, timeout_s: int | None = None) -> dict[str, Any]:
        return {"wait": "watcher", "timeout": timeout_s or self.options.timeout_s}

    def install_call(self, release: str, chart: Path, values: Mapping[str, Any], description: str | None,
                     timeout_s: int | None = None) -> SdkCall:
        return SdkCall("install", (str(chart), release, dict(values)),
                       {**self._change(timeout_s), "rollback_on_failure": True, "description": description})

    def upgrade_call(self, release: str, chart: Path, values: Mapping[str, Any], description: str | None,
                     timeout_s: int | None = None) -> SdkCall:
        return SdkCall("upgrade", (str(chart), release, dict(values)),
                       {**self._change(timeout_s), "reset_values": True, "rollback_on_failure": True,
                        "description": description})

    def rollback_call(self, release: str, revision: int, timeout_s: int | None = None) -> SdkCall:
        return SdkCall("rollback", (release,), {"version": revision, **self._change(timeout_s)})

    def values_call(self, release: str, revision: int) -> SdkCall:
        return SdkCall("get_values", (release,), {"all_values": True, "revision": revision})

    def history_call(self, release: str) -> SdkCall:
        return SdkCall("history", (release,))

    def get_all_call(self, release: str, revision: int) -> SdkCall:
        return SdkCall("get_all", (release,), {"revision": revision})

    def status_call(self, release: str) -> SdkCall:
        return SdkCall("status", (release,))

    def uninstall_call(self, release: str) -> SdkCall:
        return SdkCall("uninstall", (release,), self._change())

    def render(self, release: str, chart: Path, values_files: Sequence[Path], values: Mapping[str, Any]) -> str:
        import helm_python

        merged = self._merged(values_files, values)
        try:
            with helm_python.Chart.load(os.fspath(chart)) as loaded:
                rendered = loaded.render(merged, name=release, namespace=self.options.namespace or "default",
                                         is_install=True)
        except helm_python.HelmError as e:
            raise DeployInputError(f"the chart does not render: {_one_line(e.detail)}", param="values") from e
        return "".join(f"---\n# Source: {path}\n{text.strip()}\n" for path, text in sorted(rendered.items())
                       if not path.endswith("NOTES.txt") and text.strip())

    def upgrade(self, release: str, chart: Path, values_files: Sequence[Path], values: Mapping[str, Any], *,
                install: bool, description: str | None, timeout_s: int | None = None) -> None:
        merged = self._merged(values_files, values)
        build = self.install_call if install else self.upgrade_call
        self._call(build(release, chart, merged, description, timeout_s), release)

    def rollback(self, release: str, revision: int, *, timeout_s: int | None = None) -> None:
        self._call(self.rollback_call(release, revision, timeout_s), release)

    def values(self, release: str, revision: int) -> dict[str, Any]:
        values = self._call(self.values_call(release, revision), release)
        return values if isinstance(values, dict) else {}

    def history(self, release: str) -> list[Revision]:
        with self._session("history", release) as config:
            summaries = self.invoke(config, self.history_call(release))
            return sorted((self._revision(config, release, s) for s in summaries), key=lambda r: r.revision)

    def pods(self, release: str) -> tuple[Pod, ...] | None:
        summary = self._call(self.status_call(release), release)
        # Helm's status fetched the resources, but the 0.2.2 summary has no "resources": unknown (None).
        return parse_pods({"info": summary})

    def uninstall(self, release: str) -> None:
        self._call(self.uninstall_call(release), release)

    @staticmethod
    def invoke(config: Any, call: SdkCall) -> Any:
        return getattr(config, call.method)(*call.args, **call.kwargs)

    def _call(self, call: SdkCall, release: str) -> Any:
        with self._session(call.method, release) as config:
            return self.invoke(config, call)

    def _revision(self, config: Any, release: str, summary: Mapping[str, Any]) -> Revision:
        number = int(summary["revision"])
        info = self.invoke(config, self.get_all_call(release, number)).get("info") or {}
        return Revision(revision=number, status=str(summary.get("status", "")),
                        chart=f"{summary.get('chart_name', '')}-{summary.get('chart_version', '')}",
                        app_version=str(summary.get("app_version", "")),
                        updated=str(summary.get("deployed_at", "")), description=str(info.get("description", "")))

    def _merged(self, values_files: Sequence[Path], values: Mapping[str, Any]) -> dict[str, Any]:
        """Like `helm -f A -f B` with `values` last: mappings merge key by key, anything else is replaced."""
        import helm_python

        merged: dict[str, Any] = {}
        for path in values_files:
            try:
                layer = helm_python.values_from_yaml(path.read_text())
            except helm_python.HelmError as e:
                raise DeployInputError(f"values file {path}: {_one_line(e.detail)}", param="values") from e
            merged = merge_values(merged, layer)
        return merge_values(merged, values)

    @contextmanager
    def _session(self, action: str, release: str) -> Iterator[Any]:
        """A helm_python.Config for this target, closed afterwards; Helm's errors become ours."""
        import helm_python

        try:
            with helm_python.Config(**self.config_kwargs()) as config:
                yield config
        except helm_python.HelmKubeError as e:
            raise _unreachable(self.options, e.detail) from e
        except helm_python.HelmNotFoundError as e:
            raise _not_found(release, self.options) from e
        except (helm_python.HelmValuesError, helm_python.HelmRenderError, helm_python.HelmChartLoadError) as e:
            raise DeployInputError(f"helm {action} {release}: {_one_line(e.detail)}", param="values") from e
        except helm_python.HelmError as e:
            raise DeployError(f"helm {action} {release} failed: {_one_line(e.detail)}") from e


def merge_values(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Helm's coalescing of values files: mappings merge key by key, anything else is replaced."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge_values(merged[key], value)
        else:
            merged[key] = value
    return merged
