"""`opsctl deployment status|history MODEL --env ENV`: a model's release as the deployer sees it.

`status` puts the deployer's view (release, revision, pods) beside the registry's (endpoints, weights,
health) from the admin API. `--deployer local` (the default, as for rollouts) reads the LocalDeployer's
history from the gateway and its processes on this machine; `--deployer helm` asks Helm. The deployer and
its engine load inside the commands, never at start-up.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import urlsplit

import typer

from opsctl.client import path_part
from opsctl.common import (
    ConfigOpt,
    GatewayOpt,
    Output,
    OutputOpt,
    TokenOpt,
    admin_client,
    handle_errors,
    new_app,
    render,
)

if TYPE_CHECKING:
    from opsctl.deploy import Deployer, DeploymentStatus

deployment_app = new_app("A model's release as the deployer (local processes or Helm) sees it.")

DEFAULT_CHART = Path("helm/vllm-deployment")
NO_CHART = "local"  # the chart name of a LocalDeployer release applied without a chart (opsctl up's pods)
HISTORY_COLUMNS = ("revision", "status", "chart", "app_version", "updated", "description")
ENDPOINT_COLUMNS = ("endpoint", "release", "weight", "status", "health", "this_release")

EnvOpt = Annotated[str, typer.Option("--env", help="development, staging or production")]
# The default is opsctl.deploy.DEFAULT_DEPLOYER, spelled out here: importing opsctl.deploy costs start-up time.
DeployerOpt = Annotated[str, typer.Option("--deployer", envvar="FLEETGATE_DEPLOYER",
                                          help="local (processes on this machine) or helm")]
KubeContextOpt = Annotated[str | None, typer.Option(
    "--kube-context", envvar="FLEETGATE_KUBE_CONTEXT", help="kubeconfig context (default: the current one)")]
NamespaceOpt = Annotated[str | None, typer.Option(
    "--namespace", envvar="FLEETGATE_NAMESPACE", help="Kubernetes namespace (default: the context's)")]
KubeconfigOpt = Annotated[Path | None, typer.Option(
    "--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, else ~/.kube/config)")]


def _deployer(kind: str, kubeconfig: Path | None, kube_context: str | None, namespace: str | None,
              gateway: str | None, token: str | None, config: str | None) -> Deployer:
    """The deployer of `kind`; the local one keeps its history in the gateway that --gateway, the settings
    or the state dir name, and its processes' files in the state dir."""
    from opsctl.client import find_admin_token, find_gateway_url
    from opsctl.common import load_cli_settings
    from opsctl.deploy import DeployerOptions, make_deployer

    settings = load_cli_settings(config)
    url = find_gateway_url(settings, gateway)[0]
    return make_deployer(kind, DeployerOptions(
        kubeconfig=kubeconfig, kube_context=kube_context, namespace=namespace, state_dir=Path(settings.state_dir),
        gateway_url=url, admin_token=find_admin_token(settings, token, gateway_url=url)))


def _release(model: str, env: str) -> str:
    from opsctl.deploy import check_environment
    from opsctl.deploy.naming import release_name

    return release_name(model, check_environment(env))


def _local_chart(chart: Path | None) -> str | None:
    """name-version of the chart in the working tree (to compare with the deployed one); None when the
    default chart directory is absent (`--chart` given and absent is an error)."""
    import yaml

    from opsctl.deploy import DeployInputError
    from opsctl.deploy.helm import check_chart

    if chart is None and not (DEFAULT_CHART / "Chart.yaml").is_file():
        return None
    directory = check_chart(chart or DEFAULT_CHART)
    try:
        meta = yaml.safe_load((directory / "Chart.yaml").read_text())
        return f"{meta['name']}-{meta['version']}"
    except (yaml.YAMLError, TypeError, KeyError) as e:
        raise DeployInputError(f"{directory / 'Chart.yaml'} has no chart name and version", param="chart") from e


def _registry_entry(model: str, env: str, gateway: str | None, token: str | None,
                    config: str | None) -> dict[str, Any] | None:
    from gateway.errors import FleetgateError

    with admin_client(gateway, token, config) as client:
        try:
            return client.get(f"/admin/v1/models/{path_part(env)}/{path_part(model)}")
        except FleetgateError as e:
            if e.status == 404:
                return None
            raise


def _endpoint_rows(entry: dict[str, Any], release: str, service: str) -> list[dict[str, Any]]:
    """The registry's endpoints; `this_release` marks those labelled with the release's name or whose host
    is the release's Service."""
    def mine(e: dict[str, Any]) -> bool:
        return e["release"] == release or (urlsplit(e["url"]).hostname or "").split(".")[0] == service

    return [{"endpoint": e["url"], "release": e["release"], "weight": e["weight"], "status": e["status"],
             "health": e["last_health"], "this_release": "yes" if mine(e) else "no"}
            for e in entry["endpoints"]]


def _status_lines(model: str, env: str, release: str, status: DeploymentStatus | None,
                  local_chart: str | None) -> list[tuple[str, str]]:
    lines = [("model", model), ("env", env)]
    if status is None:
        return [*lines, ("release", f"{release}: not installed")]
    current = status.current
    where = f" (namespace {status.namespace})" if status.namespace else ""
    lines += [("release", f"{release}{where}"),
              ("revision", f"{current.revision} {current.status}, updated {current.updated}"),
              ("chart", f"{current.chart} (app {current.app_version})"),
              ("description", current.description)]
    if local_chart and current.chart != NO_CHART and local_chart != current.chart:
        lines.append(("local chart", f"{local_chart}: differs from the deployed one"))
    if status.pods is None:
        lines.append(("pods", "unknown (Helm reports no pod status)"))
    else:
        lines.append(("pods", f"{status.pods_ready} ready"))
        lines += [("", f"{p.name} {p.phase}{' ready' if p.ready else ''}, {p.restarts} restarts")
                  for p in status.pods]
    if status.recovery:
        lines.append(("stuck", f"{current.status}: if no helm or opsctl operation is still running on it, "
                               f"recover with: {status.recovery}"))
    return [*lines, ("ready", "yes" if status.ready else "no"), ("engine", status.engine)]


@deployment_app.command("status")
@handle_errors
def deployment_status(
    model: str, env: EnvOpt, deployer: DeployerOpt = "local", kube_context: KubeContextOpt = None,
    namespace: NamespaceOpt = None, kubeconfig: KubeconfigOpt = None,
    chart: Annotated[Path | None, typer.Option(
        "--chart", help=f"chart to compare the deployed one with (default {DEFAULT_CHART} when present)")] = None,
    output: OutputOpt = Output.table, gateway: GatewayOpt = None, admin_token: TokenOpt = None,
    config: ConfigOpt = None,
) -> None:
    """The release, revision and pods the deployer reports, beside the registry's endpoints."""
    from opsctl.deploy import ReleaseNotFound
    from opsctl.deploy.naming import service_name

    release = _release(model, env)
    local_chart = _local_chart(chart)
    target = _deployer(deployer, kubeconfig, kube_context, namespace, gateway, admin_token, config)
    try:
        status = target.status(release)
    except ReleaseNotFound:
        status = None
    entry = _registry_entry(model, env, gateway, admin_token, config)
    endpoints = _endpoint_rows(entry, release, service_name(model, env)) if entry else []
    if output is Output.json:
        render({"model": model, "env": env, "release": release,
                "deployment": status.to_dict() if status else None, "local_chart": local_chart,
                "registry": entry}, output)
        return
    lines = _status_lines(model, env, release, status, local_chart)
    lines.append(("registry", f"{entry['status']}, {len(endpoints)} endpoint(s)" if entry else "not registered"))
    width = max(len(key) for key, _ in lines)
    for key, value in lines:
        typer.echo(f"{key.ljust(width)}  {value}".rstrip())
    if endpoints:
        typer.echo("")
        render(endpoints, output, columns=ENDPOINT_COLUMNS)


@deployment_app.command("history")
@handle_errors
def deployment_history(
    model: str, env: EnvOpt, deployer: DeployerOpt = "local", kube_context: KubeContextOpt = None,
    namespace: NamespaceOpt = None, kubeconfig: KubeconfigOpt = None, output: OutputOpt = Output.table,
    gateway: GatewayOpt = None, admin_token: TokenOpt = None, config: ConfigOpt = None,
) -> None:
    """The release's revisions, oldest first."""
    release = _release(model, env)
    revisions = _deployer(deployer, kubeconfig, kube_context, namespace, gateway, admin_token, config).history(release)
    render([r.to_dict() for r in revisions], output, columns=HISTORY_COLUMNS)
