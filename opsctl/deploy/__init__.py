"""Deployers: how a model's release reaches its pods (Helm on Kubernetes, or local processes).

The rollout engine and `opsctl deployment` talk to the `Deployer` protocol only; the kind is chosen by name
from `DEPLOYER_KINDS`, whose factories import their implementation lazily (the Helm engine is 244 MB).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from gateway.errors import FleetgateError, InvalidRequest, NotFound

# Environments a model can be deployed to: the vLLM chart ships values-<env>.yaml for each.
ENVIRONMENTS = ("development", "staging", "production")

# A release in one of these states has an operation that never finished (or is running right now);
# Helm refuses to upgrade it until someone rolls it back or uninstalls it.
PENDING_STATES = frozenset({"pending-install", "pending-upgrade", "pending-rollback"})
# A model has one stable release per environment, and during a rollout a canary release beside it.
TRACKS = ("stable", "canary")


class DeployError(FleetgateError):
    """A deployer operation failed (cluster unreachable, Helm refused, timeout): the CLI exits 1."""

    status = 502
    code = "deploy_failed"


class DeployInputError(InvalidRequest):
    """The request cannot be deployed as given (bad name, chart or values): the CLI exits 2."""

    code = "invalid_deploy_input"


class ReleaseNotFound(NotFound):
    """The release does not exist in that namespace: the CLI exits 2."""

    code = "release_not_found"


class ReleaseStuck(DeployError):
    """The release's last operation never finished; the message carries the command that recovers it."""

    code = "release_stuck"


@dataclass(frozen=True)
class Revision:
    """One entry of a release's history, as `helm history` lists it."""

    revision: int
    status: str  # deployed, superseded, failed, uninstalled, pending-install|upgrade|rollback, ...
    chart: str  # name-version, e.g. vllm-deployment-0.1.0
    app_version: str
    updated: str  # RFC 3339, as Helm reports it
    description: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Pod:
    name: str
    phase: str
    ready: bool
    restarts: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class DeploymentStatus:
    """What the deployer knows about one release right now.

    `pods` is None when the engine cannot say (helm-python-sdk drops the resources Helm fetched), never a
    guess. `recovery` is set when the release is stuck in a pending state: the command that unsticks it.
    """

    release: str
    namespace: str | None
    current: Revision
    pods: tuple[Pod, ...] | None
    engine: str
    recovery: str | None = None
    # Every pod ready (and at least one); without pod status (helm-python-sdk): the revision is deployed.
    ready: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"release": self.release, "namespace": self.namespace, **self.current.to_dict(),
                "pods": None if self.pods is None else [p.to_dict() for p in self.pods],
                "pods_ready": self.pods_ready, "ready": self.ready, "engine": self.engine,
                "recovery": self.recovery}

    @property
    def pods_ready(self) -> str | None:
        """Ready pods over all pods, e.g. "1/2"; None when pod status is unknown."""
        if self.pods is None:
            return None
        return f"{sum(p.ready for p in self.pods)}/{len(self.pods)}"


class Deployer(Protocol):
    """Puts a chart's release in place and reports on it. Implementations: HelmDeployer, LocalDeployer.

    Every method raises DeployInputError for bad input, ReleaseNotFound for an unknown release,
    ReleaseStuck when a pending operation blocks the change, DeployError when the operation fails.
    Registering the release's endpoints in the gateway is the caller's job (opsctl/deploy/registry_sync.py).
    """

    def apply(self, release: str, chart: Path | None, values: Mapping[str, Any], *,
              values_files: Sequence[Path] = (), description: str | None = None, timeout_s: int | None = None,
              version: str | None = None) -> Revision:
        """Install or upgrade `release` to `chart` with `values` layered over `values_files`; wait until ready.

        Args:
            timeout_s: how long to wait for readiness (None: the deployer options' timeout).
            version: what this revision deploys (the rollout's --version), kept in the release history as
                its app_version (Helm: the chart's appVersion; the version goes into the description).

        Returns:
            The revision now deployed.
        """
        ...

    def status(self, release: str) -> DeploymentStatus: ...

    def history(self, release: str) -> list[Revision]:
        """Revisions, oldest first."""
        ...

    def rollback(self, release: str, revision: int, *, timeout_s: int | None = None) -> Revision:
        """Return `release` to `revision` (this makes a new revision); wait until ready."""
        ...

    def uninstall(self, release: str) -> None: ...

    def endpoints(self, release: str) -> list[str]:
        """The URLs the registry should route to for the release's deployed revision (empty: none deployed).

        Helm: the release's Service, http://{service}.{namespace}.svc.{clusterDomain}:{port}.
        """
        ...

    def prune(self, release: str) -> None:
        """Stop what superseded revisions of `release` still run (Helm replaces pods itself: a no-op).

        Call it once the registry routes to `endpoints(release)` only: until then the previous revision
        keeps serving beside the new one.
        """
        ...


@dataclass(frozen=True)
class DeployerOptions:
    """Where a deployer acts, from the command line or FLEETGATE_* (None: the tool's own default)."""

    kubeconfig: Path | None = None
    kube_context: str | None = None
    namespace: str | None = None
    timeout_s: int = 900  # vLLM loads large models for minutes; Helm's own 5-minute default is too short
    # LocalDeployer: where its processes' logs and pid files live, and the gateway whose admin API
    # (/admin/v1/releases) keeps its revision history.
    state_dir: Path | None = None
    gateway_url: str | None = None
    admin_token: str | None = None


def _helm(options: DeployerOptions) -> Deployer:
    from opsctl.deploy.helm import HelmDeployer

    return HelmDeployer.from_options(options)


def _local(options: DeployerOptions) -> Deployer:
    from opsctl.deploy.local import LocalDeployer

    return LocalDeployer.from_options(options)


# Kind name → factory; the first is the default of the commands that deploy (FLEETGATE_DEPLOYER overrides it).
DEPLOYER_KINDS: Mapping[str, Callable[[DeployerOptions], Deployer]] = {"local": _local, "helm": _helm}
DEFAULT_DEPLOYER = "local"


def make_deployer(kind: str, options: DeployerOptions) -> Deployer:
    """The deployer of `kind` acting where `options` say.

    Raises:
        DeployInputError: unknown kind.
    """
    try:
        factory = DEPLOYER_KINDS[kind]
    except KeyError:
        raise DeployInputError(f"unknown deployer {kind!r}: expected one of {', '.join(DEPLOYER_KINDS)}",
                               param="deployer") from None
    return factory(options)


def check_environment(env: str) -> str:
    """`env` if models can be deployed to it.

    Raises:
        DeployInputError: any other name.
    """
    if env not in ENVIRONMENTS:
        raise DeployInputError(f"unknown environment {env!r}: expected one of {', '.join(ENVIRONMENTS)}",
                               param="env")
    return env
