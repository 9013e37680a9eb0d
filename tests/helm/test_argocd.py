"""helm/argocd: an AppProject and an Application per chart and environment, rendered with the real Helm engine.

kubernetes_validate has no schema for Argo CD's custom resources, so their fields are asserted here; and each
Application's own source (chart path, values files, inline values) is rendered as Argo CD would render it, to
show that it deploys valid manifests of kinds its project allows, into its own namespace.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import helm_python
import pytest
import yaml

from tests.helm.support import ENVIRONMENTS, HELM_DIR, REPO_ROOT, find, lint, of_kind, render, validate

ARGOCD_CHART = HELM_DIR / "argocd"
ARGO_API = "argoproj.io/v1alpha1"
AUTO_SYNCED = {"development": True, "staging": True, "production": False}


@pytest.fixture(scope="module")
def manifests() -> list[dict[str, Any]]:
    return render(ARGOCD_CHART, namespace="argocd")


def applications(manifests: list[dict[str, Any]], env: str | None = None) -> list[dict[str, Any]]:
    return [a for a in of_kind(manifests, "Application")
            if env is None or a["metadata"]["labels"]["fleetgate.io/environment"] == env]


def render_application(app: dict[str, Any], tmp_path: Path) -> list[dict[str, Any]]:
    """The manifests Argo CD deploys for `app`: its chart with its values files, then its inline values."""
    source, helm = app["spec"]["source"], app["spec"]["source"]["helm"]
    inline = tmp_path / f"{app['metadata']['name']}-values.yaml"
    inline.write_text(yaml.safe_dump(helm.get("valuesObject", {})))
    return render(REPO_ROOT / source["path"], *helm["valueFiles"], inline,
                  release=helm["releaseName"], namespace=app["spec"]["destination"]["namespace"])


def test_chart_lints_and_renders_one_project_and_an_application_per_chart_and_environment(manifests):
    assert lint(ARGOCD_CHART, namespace="argocd") == []
    validate(manifests)
    assert {m["apiVersion"] for m in manifests} == {ARGO_API}
    project = find(manifests, "AppProject")
    charts = {a["spec"]["source"]["path"] for a in applications(manifests)}
    assert {"helm/gateway", "helm/vllm-deployment"} <= charts
    for env in ENVIRONMENTS:
        assert sorted(a["spec"]["source"]["path"] for a in applications(manifests, env)) == sorted(charts), env
    for app in applications(manifests):
        assert app["metadata"]["namespace"] == project["metadata"]["namespace"] == "argocd"
        assert app["spec"]["project"] == project["metadata"]["name"]


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_sync_policy_is_automatic_with_self_heal_and_prune_except_in_production(manifests, env):
    for app in applications(manifests, env):
        policy = app["spec"]["syncPolicy"]
        if AUTO_SYNCED[env]:
            assert policy["automated"] == {"prune": True, "selfHeal": True}, app["metadata"]["name"]
        else:
            assert "automated" not in policy, f"{app['metadata']['name']} must wait for a manual sync"
            assert "finalizers" not in app["metadata"], "deleting a production Application must not cascade"
        assert "CreateNamespace=true" in policy["syncOptions"]


def test_project_allows_only_this_repo_the_environments_namespaces_and_listed_kinds(manifests):
    spec = find(manifests, "AppProject")["spec"]
    apps = applications(manifests)
    assert spec["sourceRepos"] == sorted({a["spec"]["source"]["repoURL"] for a in apps}) != ["*"]
    destinations = {(d["server"], d["namespace"]) for d in spec["destinations"]}
    assert destinations == {(a["spec"]["destination"]["server"], a["spec"]["destination"]["namespace"]) for a in apps}
    assert len({ns for _, ns in destinations}) == len(ENVIRONMENTS), "one namespace per environment"
    allowed = spec["namespaceResourceWhitelist"]
    assert allowed and all("*" not in (r["group"], r["kind"]) for r in allowed)
    assert [r["kind"] for r in spec["clusterResourceWhitelist"]] == ["Namespace"] * len(ENVIRONMENTS)
    assert {r["name"] for r in spec["clusterResourceWhitelist"]} == {ns for _, ns in destinations}


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_each_application_deploys_valid_manifests_its_project_allows(manifests, env, tmp_path):
    allowed = {(r["group"], r["kind"]) for r in find(manifests, "AppProject")["spec"]["namespaceResourceWhitelist"]}
    for app in applications(manifests, env):
        name, helm = app["metadata"]["name"], app["spec"]["source"]["helm"]
        chart = REPO_ROOT / app["spec"]["source"]["path"]
        assert helm["valueFiles"][0] == f"values-{env}.yaml" and (chart / helm["valueFiles"][0]).is_file(), name
        deployed = render_application(app, tmp_path)
        validate(deployed)
        kinds = {(m["apiVersion"].rpartition("/")[0], m["kind"]) for m in deployed}
        assert kinds <= allowed, f"{name} renders kinds its AppProject refuses: {sorted(kinds - allowed)}"
        namespace = app["spec"]["destination"]["namespace"]
        assert {m["metadata"].get("namespace", namespace) for m in deployed} == {namespace}, name


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_vllm_registers_with_the_gateway_service_of_its_own_environment(manifests, env, tmp_path):
    """The registration Job's FLEETGATE_GATEWAY_URL names the Service the gateway Application creates."""
    rendered = {a["spec"]["source"]["path"]: render_application(a, tmp_path) for a in applications(manifests, env)}
    services = {s["metadata"]["name"] for s in of_kind(rendered["helm/gateway"], "Service")}
    jobs = [j for j in of_kind(rendered["helm/vllm-deployment"], "Job")
            if j["metadata"]["annotations"]["helm.sh/hook"].startswith("post-install")]
    assert jobs, "no registration Job rendered"
    for job in jobs:
        env_vars = {e["name"]: e.get("value") for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
        host = urlparse(env_vars["FLEETGATE_GATEWAY_URL"]).hostname
        # A short name resolves in the Job's own namespace, which is the gateway's (one per environment).
        assert host in services, f"{job['metadata']['name']} calls {host}, gateway Services: {sorted(services)}"


def test_an_environment_can_be_pinned_to_a_release_tag():
    rendered = render(ARGOCD_CHART, set={"environments.production.targetRevision": "v1.4.0"})
    revisions = {a["metadata"]["labels"]["fleetgate.io/environment"]: a["spec"]["source"]["targetRevision"]
                 for a in applications(rendered)}
    assert revisions == {"development": "main", "staging": "main", "production": "v1.4.0"}


@pytest.mark.parametrize(("values", "message"), [
    ({"environments.production.autoSync": "no"}, "/environments/production/autoSync"),
    ({"repoURL": "*"}, "/repoURL"),
    ({"project.namespaceResources": [{"group": "*", "kind": "Deployment"}]}, "/project/namespaceResources/0/group"),
    ({"environments.staging.namespace": "Fleetgate Staging"}, "/environments/staging/namespace"),
    ({"applications.fleetgate-gateway.chart": "helm/gateway"}, "/applications/fleetgate-gateway"),
    ({"environments.staging.namespace": "fleetgate-production"}, "both deploy to namespace \"fleetgate-production\""),
])
def test_bad_values_are_refused_naming_the_field(values, message):
    with pytest.raises((helm_python.HelmValuesError, helm_python.HelmRenderError)) as e:
        render(ARGOCD_CHART, set=values)
    assert message in str(e.value)
