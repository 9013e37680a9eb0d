"""HelmDeployer without a cluster: by contract, by rendering, and against Helm's real read path.

- Contract: the exact argv (helm binary) and keyword calls (helm-python-sdk) for every operation, and what
  HelmCli really executes, recorded by a stand-in `helm` (tests/unit/fixtures/helm/helm_binary.py).
- Rendering: the real vLLM chart through the real Helm engine, validated against the Kubernetes schemas;
  the Service it names is the release name opsctl computes.
- Parsing: Helm's own JSON outputs (fixtures/helm/history.json and status.json are Helm v4.2.3's test data).
- Real engine: helm-python-sdk reads release records from a stand-in Kubernetes API
  (tests/unit/fixtures/helm/kube_api.py): history, status, computed values (the endpoint of a release),
  the pending-upgrade release and its recovery.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from opsctl.deploy import (
    DEPLOYER_KINDS,
    DeployError,
    DeployerOptions,
    DeployInputError,
    Pod,
    ReleaseNotFound,
    ReleaseStuck,
    Revision,
    check_environment,
    make_deployer,
)
from opsctl.deploy.helm import (
    HelmCli,
    HelmDeployer,
    HelmSdk,
    SdkCall,
    context_namespace,
    parse_history,
    parse_pods,
    recovery_command,
    service_url,
)
from opsctl.deploy.naming import kubernetes_name, release_name, service_name
from tests.helm.support import VLLM_CHART, find, render, validate
from tests.support import free_port
from tests.unit.fixtures.helm.helm_binary import HelmBinary, Reply
from tests.unit.fixtures.helm.kube_api import KubeApi

FIXTURES = Path(__file__).parent / "fixtures" / "helm"
NAMESPACE = "fleetgate"
OPTIONS = DeployerOptions(kubeconfig=Path("/etc/kube/config"), kube_context="prod-eu", namespace=NAMESPACE,
                          timeout_s=600)
CHART = Path("/charts/vllm-deployment")
ENV_VALUES = (Path("/charts/vllm-deployment/values-production.yaml"),)
VALUES_FILE = Path("/tmp/opsctl-helm-x/values.yaml")
PVC = {"model": {"source": {"pvc": {"claimName": "weights"}}}}

HOSTILE_MODELS = ["meta-llama/Llama-3.1-8B", "qwen:7b", "01-ai/Yi-34B", "Org__Model..V2", "a", "x" * 40,
                  "mistralai/Mixtral-8x22B-Instruct-v0.1"]


def fixture(name: str):
    return json.loads((FIXTURES / name).read_text())


def chart_values(model: str, env: str) -> dict:
    return {**PVC, "model": {**PVC["model"], "name": model}, "environment": env}


@pytest.fixture
def releases_api():
    with KubeApi(fixture("releases.json")) as api:
        yield api


@pytest.fixture
def sdk_deployer(releases_api, tmp_path):
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(releases_api.kubeconfig())
    options = DeployerOptions(kubeconfig=kubeconfig, namespace=NAMESPACE)
    return HelmDeployer(HelmSdk(options), options)


@pytest.fixture
def unreachable_options(tmp_path):
    """A kubeconfig whose API server is a loopback port nobody listens on."""
    kubeconfig = tmp_path / "unreachable-kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "gone",
        "clusters": [{"name": "gone", "cluster": {"server": f"https://127.0.0.1:{free_port()}"}}],
        "users": [{"name": "gone", "user": {"token": "t"}}],
        "contexts": [{"name": "gone", "context": {"cluster": "gone", "user": "gone"}}]}))
    return DeployerOptions(kubeconfig=kubeconfig, namespace=NAMESPACE, timeout_s=30)


# --- names -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model, expected", [
    ("meta-llama/Llama-3.1-8B", "meta-llama-llama-3-1-8b"), ("qwen:7b", "qwen-7b"),
    ("01-ai/Yi-34B", "m-01-ai-yi-34b"), ("Org__Model..V2", "org-model-v2"), ("-.x.-", "x")])
def test_kubernetes_name_follows_the_chart_rule(model, expected):
    assert kubernetes_name(model) == expected


def test_release_name_is_model_dash_env_and_never_shortened():
    assert release_name("meta-llama/Llama-3.1-8B", "production") == "meta-llama-llama-3-1-8b-production"
    longest = "m" * (53 - len("-staging"))
    assert release_name(longest, "staging") == f"{longest}-staging"
    with pytest.raises(DeployInputError, match=r"makes the release name .* \(54 characters\); Helm allows 53"):
        release_name(longest + "m", "staging")
    with pytest.raises(DeployInputError, match="has no letters or digits"):
        release_name("::__..", "production")


def test_the_canary_release_is_named_after_the_stable_one():
    assert release_name("qwen:7b", "production", track="canary") == "qwen-7b-production-canary"
    assert release_name("qwen:7b", "production", track="stable") == release_name("qwen:7b", "production")
    longest = "m" * (53 - len("-staging-canary"))
    assert release_name(longest, "staging", track="canary") == f"{longest}-staging-canary"
    with pytest.raises(DeployInputError, match=r"\(54 characters\); Helm allows 53") as refused:
        release_name(longest + "m", "staging", track="canary")
    assert refused.value.param == "model"
    with pytest.raises(DeployInputError, match="^unknown track 'blue': expected one of stable, canary$") as refused:
        release_name("qwen:7b", "production", track="blue")
    assert refused.value.param == "track"


@pytest.mark.parametrize("model", ["meta-llama/Llama-3.1-8B", "qwen:7b", "01-ai/Yi-34B"])
def test_the_chart_names_the_canary_service_as_opsctl_names_the_canary_release(model):
    manifests = render(VLLM_CHART, "values-production.yaml", set={
        "model.name": model, "model.source.pvc.claimName": "weights", "nameSuffix": "canary"})
    service = find(manifests, "Service")
    assert service["metadata"]["name"] == release_name(model, "production", track="canary")
    assert service["metadata"]["name"] == service_name(model, "production", name_suffix="canary")
    # and the endpoint the registration Job would register is the URL `endpoints` reports
    assert service["metadata"]["annotations"]["fleetgate.io/endpoint"] == service_url(
        {"model": {"name": model}, "environment": "production", "nameSuffix": "canary",
         "service": {"port": 8000}, "clusterDomain": "cluster.local"}, "fleetgate")


@pytest.mark.parametrize("model", HOSTILE_MODELS + ["y" * 70])
@pytest.mark.parametrize("env", ["development", "production"])
def test_the_chart_names_its_service_as_opsctl_does(model, env):
    manifests = render(VLLM_CHART, f"values-{env}.yaml", set={"model.name": model,
                                                              "model.source.pvc.claimName": "weights"})
    service = find(manifests, "Service")["metadata"]["name"]
    assert service == service_name(model, env)
    if len(model) < 40:  # short enough for a release name: the release and its Service share the name
        assert service == release_name(model, env)


# --- contract: what each engine sends ---------------------------------------------------------------


def test_helm_binary_argv_for_every_operation():
    cli = HelmCli("/usr/local/bin/helm", OPTIONS)
    target = ["--kubeconfig", "/etc/kube/config", "--namespace", NAMESPACE, "--kube-context", "prod-eu"]
    assert cli.upgrade_argv("qwen-7b-production", CHART, ENV_VALUES, VALUES_FILE, "rollout 12") == [
        "/usr/local/bin/helm", "upgrade", "qwen-7b-production", "/charts/vllm-deployment", "--install",
        "--reset-values", "--values", "/charts/vllm-deployment/values-production.yaml",
        "--values", "/tmp/opsctl-helm-x/values.yaml", "--wait", "--atomic", "--timeout", "600s",
        "--description", "rollout 12", *target]
    assert cli.rollback_argv("qwen-7b-production", 2) == [
        "/usr/local/bin/helm", "rollback", "qwen-7b-production", "2", "--wait", "--timeout", "600s", *target]
    assert cli.history_argv("qwen-7b-production") == [
        "/usr/local/bin/helm", "history", "qwen-7b-production", "--output", "json", *target]
    assert cli.status_argv("qwen-7b-production") == [
        "/usr/local/bin/helm", "status", "qwen-7b-production", "--output", "json", *target]
    assert cli.uninstall_argv("qwen-7b-production") == [
        "/usr/local/bin/helm", "uninstall", "qwen-7b-production", "--wait", "--timeout", "600s", *target]
    assert cli.template_argv("qwen-7b-production", CHART, (), VALUES_FILE) == [
        "/usr/local/bin/helm", "template", "qwen-7b-production", "/charts/vllm-deployment",
        "--values", "/tmp/opsctl-helm-x/values.yaml", "--namespace", NAMESPACE]  # offline: no cluster flags
    assert cli.values_argv("qwen-7b-production", 4) == [
        "/usr/local/bin/helm", "get", "values", "qwen-7b-production", "--all", "--revision", "4", "--output",
        "json", *target]


def test_helm_binary_argv_with_a_timeout_of_its_own():
    cli = HelmCli("helm", OPTIONS)
    upgrade = cli.upgrade_argv("r", CHART, (), VALUES_FILE, None, timeout_s=45)
    assert upgrade[upgrade.index("--timeout"):upgrade.index("--timeout") + 2] == ["--timeout", "45s"]
    assert cli.rollback_argv("r", 2, timeout_s=45)[5:7] == ["--timeout", "45s"]
    assert cli.rollback_argv("r", 2)[5:7] == ["--timeout", "600s"]  # None: the options'


def test_helm_binary_argv_leaves_unset_targets_to_helm():
    cli = HelmCli("helm", DeployerOptions())
    assert cli.history_argv("r") == ["helm", "history", "r", "--output", "json"]
    assert "--description" not in cli.upgrade_argv("r", CHART, (), VALUES_FILE, None)


def test_sdk_calls_for_every_operation():
    sdk = HelmSdk(OPTIONS)
    assert sdk.config_kwargs() == {"kubeconfig_path": "/etc/kube/config", "kube_context": "prod-eu",
                                   "namespace": NAMESPACE}
    values = {"model": {"name": "qwen:7b"}}
    assert sdk.install_call("qwen-7b-production", CHART, values, None) == SdkCall(
        "install", ("/charts/vllm-deployment", "qwen-7b-production", values),
        {"wait": "watcher", "timeout": 600, "rollback_on_failure": True, "description": None})
    assert sdk.upgrade_call("qwen-7b-production", CHART, values, "rollout 12") == SdkCall(
        "upgrade", ("/charts/vllm-deployment", "qwen-7b-production", values),
        {"wait": "watcher", "timeout": 600, "reset_values": True, "rollback_on_failure": True,
         "description": "rollout 12"})
    assert sdk.rollback_call("qwen-7b-production", 2) == SdkCall(
        "rollback", ("qwen-7b-production",), {"version": 2, "wait": "watcher", "timeout": 600})
    assert sdk.uninstall_call("qwen-7b-production") == SdkCall(
        "uninstall", ("qwen-7b-production",), {"wait": "watcher", "timeout": 600})
    assert sdk.history_call("r") == SdkCall("history", ("r",))
    assert sdk.status_call("r") == SdkCall("status", ("r",))
    assert sdk.get_all_call("r", 3) == SdkCall("get_all", ("r",), {"revision": 3})
    assert sdk.values_call("r", 3) == SdkCall("get_values", ("r",), {"all_values": True, "revision": 3})
    assert sdk.upgrade_call("r", CHART, values, None, timeout_s=45).kwargs["timeout"] == 45
    assert sdk.install_call("r", CHART, values, None, timeout_s=45).kwargs["timeout"] == 45
    assert sdk.rollback_call("r", 2, timeout_s=45).kwargs == {"version": 2, "wait": "watcher", "timeout": 45}
    assert HelmSdk(DeployerOptions()).config_kwargs() == {}


def test_apply_through_the_helm_binary_runs_exactly_this(tmp_path, monkeypatch):
    history = (FIXTURES / "history.json").read_text()
    helm = HelmBinary.install(tmp_path / "bin", {
        "template": [Reply(stdout="---\nkind: Service\n")],
        "history": [Reply(code=1, stderr="Error: release: not found\n"), Reply(stdout=history)],
        "upgrade": [Reply(stdout="{}")]})
    env_values = tmp_path / "values-production.yaml"
    env_values.write_text("replicaCount: 2\n")
    chart = tmp_path / "chart"
    chart.mkdir()
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: c\nversion: 0.1.0\n")
    options = DeployerOptions(namespace=NAMESPACE, kube_context="prod-eu", timeout_s=600)
    cli = HelmCli(str(helm.path), options)
    values = {"model": {"name": "qwen:7b"}, "secretish": "s3cr3t-value"}

    revision = HelmDeployer(cli, options).apply("qwen-7b-production", chart, values, values_files=[env_values])

    assert revision == parse_history(json.loads(history))[-1]
    calls = helm.calls()
    assert [c["argv"][0] for c in calls] == ["template", "history", "upgrade", "history"]
    upgrade = calls[2]
    values_path = Path(upgrade["argv"][upgrade["argv"].index("--values", 5) + 3])
    assert [str(helm.path), *upgrade["argv"]] == cli.upgrade_argv("qwen-7b-production", chart, [env_values],
                                                                  values_path, None)
    assert json.loads(upgrade["values"][str(values_path)]) == values  # the file helm read held the values
    assert upgrade["values"][str(env_values)] == "replicaCount: 2\n"
    assert not any("s3cr3t" in arg for call in calls for arg in call["argv"])  # never on the command line
    assert not values_path.exists() and not values_path.parent.exists()  # removed afterwards


def test_apply_with_a_timeout_and_a_version_through_the_helm_binary(tmp_path):
    helm = HelmBinary.install(tmp_path / "bin", {
        "template": [Reply(stdout="---\n")],
        "history": [Reply(stdout=(FIXTURES / "history.json").read_text())],
        "upgrade": [Reply(stdout="{}")]})
    options = DeployerOptions(namespace=NAMESPACE, timeout_s=600)
    deployer = HelmDeployer(HelmCli(str(helm.path), options), options)
    deployer.apply("qwen-7b-production-canary", VLLM_CHART, {"nameSuffix": "canary"}, timeout_s=45, version="v2")
    upgrade = next(c["argv"] for c in helm.calls() if c["argv"][0] == "upgrade")
    assert upgrade[upgrade.index("--timeout") + 1] == "45s"
    assert upgrade[upgrade.index("--description") + 1] == "version v2"  # Helm keeps no version of its own
    with pytest.raises(DeployInputError, match="needs a chart directory") as refused:
        deployer.apply("qwen-7b-production", None, {})
    assert refused.value.param == "chart"


def test_endpoints_through_the_helm_binary_are_the_deployed_revisions_service(tmp_path):
    computed = {"model": {"name": "qwen:7b", "kubernetesName": ""}, "environment": "production",
                "nameSuffix": "canary", "service": {"port": 8001}, "clusterDomain": "cluster.example"}
    helm = HelmBinary.install(tmp_path / "bin", {
        "history": [Reply(stdout=(FIXTURES / "history.json").read_text())],
        "get": [Reply(stdout=json.dumps(computed))]})
    options = DeployerOptions(namespace=NAMESPACE, kube_context="prod-eu")
    deployer = HelmDeployer(HelmCli(str(helm.path), options), options)
    assert deployer.endpoints("qwen-7b-production-canary") == [
        "http://qwen-7b-production-canary.fleetgate.svc.cluster.example:8001"]
    get = [c["argv"] for c in helm.calls() if c["argv"][0] == "get"]
    assert get == [["get", "values", "qwen-7b-production-canary", "--all", "--revision", "4", "--output", "json",
                    "--namespace", NAMESPACE, "--kube-context", "prod-eu"]]  # revision 4 is the deployed one
    deployer.prune("qwen-7b-production-canary")  # Kubernetes replaced the pods itself: nothing to run
    assert [c["argv"][0] for c in helm.calls()][-1] == "history"


def test_no_endpoints_while_no_revision_is_deployed(tmp_path):
    pending = json.loads((FIXTURES / "history-pending-upgrade.json").read_text())
    never = [{**pending[0], "status": "failed"}, {**pending[-1], "revision": 2}]
    helm = HelmBinary.install(tmp_path / "bin", {"history": [Reply(stdout=json.dumps(never))]})
    deployer = HelmDeployer(HelmCli(str(helm.path), DeployerOptions()), DeployerOptions())
    assert deployer.endpoints("qwen-7b-production") == []
    assert "get" not in [c["argv"][0] for c in helm.calls()]


def test_service_url_follows_the_chart_rule():
    assert service_url({"model": {"name": "meta-llama/Llama-3.1-8B"}, "environment": "staging"}, "ml") == (
        "http://meta-llama-llama-3-1-8b-staging.ml.svc.cluster.local:8000")
    assert service_url({"model": {"name": "x", "kubernetesName": "short"}, "environment": "staging",
                        "service": {"port": 9000}}, "ml") == "http://short-staging.ml.svc.cluster.local:9000"
    with pytest.raises(DeployError, match="no model.name and environment"):
        service_url({"environment": "staging"}, "ml")


def test_helm_binary_errors_become_one_line(tmp_path):
    helm = HelmBinary.install(tmp_path / "bin", {
        "history": [Reply(code=1, stderr='Error: Kubernetes cluster unreachable: Get "https://10.0.0.1:6443'
                                         '/version": dial tcp 10.0.0.1:6443: i/o timeout\n')],
        "status": [Reply(code=1, stderr="Error: release: not found\n")],
        "rollback": [Reply(code=1, stderr="WARNING: x\nError: UPGRADE FAILED:\n  context deadline exceeded\n")],
        "template": [Reply(code=1, stderr="Error: values don't meet the specifications of the schema(s)\n")]})
    cli = HelmCli(str(helm.path), DeployerOptions(kube_context="prod-eu"))
    with pytest.raises(DeployError, match=r"^cannot reach the Kubernetes API \(context prod-eu\): Kubernetes "
                                          r"cluster unreachable: .*i/o timeout$"):
        cli.history("r")
    with pytest.raises(ReleaseNotFound, match=r"^release r not found \(context prod-eu\)$"):
        cli.pods("r")
    with pytest.raises(DeployError, match="^helm rollback r failed: UPGRADE FAILED: context deadline exceeded$") \
            as failed:
        cli.rollback("r", 1)
    assert "\n" not in failed.value.message
    with pytest.raises(DeployInputError, match="^the chart does not render: values don't meet"):
        cli.render("r", CHART, (), {})
    missing = HelmCli(str(tmp_path / "no-helm"), DeployerOptions())
    with pytest.raises(DeployError, match="^cannot run .*no-helm"):
        missing.history("r")


def test_a_failed_upgrade_through_the_helm_binary(tmp_path):
    helm = HelmBinary.install(tmp_path / "bin", {
        "template": [Reply(stdout="---\n")],
        "history": [Reply(stdout=(FIXTURES / "history.json").read_text())],
        "upgrade": [Reply(code=1, stderr='Error: UPGRADE FAILED: release foo failed, and has been rolled back due '
                                         'to atomic being set: context deadline exceeded\n')]})
    options = DeployerOptions(namespace=NAMESPACE)
    with pytest.raises(DeployError, match=r"^helm upgrade foo failed: UPGRADE FAILED: release foo failed, and has "
                                          r"been rolled back due to atomic being set: context deadline exceeded$"):
        HelmDeployer(HelmCli(str(helm.path), options), options).apply("foo", VLLM_CHART, {"a": 1})
    upgrade = helm.calls()[-1]
    assert upgrade["argv"][0] == "upgrade" and not any(Path(p).exists() for p in upgrade["values"])


def test_helm_binary_output_that_is_not_what_helm_prints(tmp_path):
    helm = HelmBinary.install(tmp_path / "bin", {"history": [Reply(stdout="[]"), Reply(stdout="<html>")]})
    deployer = HelmDeployer(HelmCli(str(helm.path), DeployerOptions()), DeployerOptions())
    with pytest.raises(ReleaseNotFound, match="^release r not found"):
        deployer.status("r")  # an empty history: every revision was purged
    with pytest.raises(DeployError, match="^helm history r printed no JSON: <html>$"):
        deployer.history("r")


# --- Helm's JSON outputs ------------------------------------------------------------------------------


def test_parse_helms_history_json():
    assert parse_history(fixture("history.json")) == [
        Revision(3, "superseded", "foo-0.1.0-beta.1", "1.0", "1977-09-02T22:04:05Z", "Release mock"),
        Revision(4, "deployed", "foo-0.1.0-beta.1", "1.0", "1977-09-02T22:04:05Z", "Release mock")]


def test_parse_pods_from_helm_status_json():
    assert parse_pods(fixture("status.json")) is None  # no resources in the output: unknown, not "0 pods"
    assert parse_pods(fixture("status-with-pods.json")) == (
        Pod("qwen-7b-production-7d9c6b5f4-2xkqp", "Running", ready=True, restarts=0),
        Pod("qwen-7b-production-7d9c6b5f4-9wz7n", "Running", ready=False, restarts=3))
    assert parse_pods({"info": {"resources": {"v1/Service": []}}}) == ()


def test_status_through_the_helm_binary_reports_pods(tmp_path):
    helm = HelmBinary.install(tmp_path / "bin", {
        "history": [Reply(stdout=json.dumps(fixture("history-pending-upgrade.json")[:2]))],
        "status": [Reply(stdout=(FIXTURES / "status-with-pods.json").read_text())]})
    options = DeployerOptions(namespace=NAMESPACE)
    status = HelmDeployer(HelmCli(str(helm.path), options), options).status("qwen-7b-production")
    assert (status.current.revision, status.current.status, status.pods_ready, status.recovery) == (
        2, "deployed", "1/2", None)
    assert status.ready is False and status.to_dict()["ready"] is False  # one pod is not ready


@pytest.mark.parametrize("statuses, command", [
    (["superseded", "deployed", "pending-upgrade"], "helm rollback r 2 --namespace fleetgate"),
    (["deployed", "failed", "pending-rollback"], "helm rollback r 1 --namespace fleetgate"),
    (["superseded", "superseded", "pending-upgrade"], "helm rollback r 2 --namespace fleetgate"),
    (["pending-install"], "helm uninstall r --namespace fleetgate"),
    (["failed", "pending-install"], "helm uninstall r --namespace fleetgate"),
    (["superseded", "deployed"], None),
    (["deployed", "failed"], None),
])
def test_recovery_command(statuses, command):
    history = [Revision(i + 1, s, "c-1", "1", "t", "d") for i, s in enumerate(statuses)]
    assert recovery_command("r", history, DeployerOptions(namespace=NAMESPACE)) == command


def test_a_pending_upgrade_from_the_helm_binary_stops_apply_with_the_recovery_command(tmp_path):
    helm = HelmBinary.install(tmp_path / "bin", {
        "template": [Reply(stdout="---\n")],
        "history": [Reply(stdout=(FIXTURES / "history-pending-upgrade.json").read_text())]})
    options = DeployerOptions(namespace=NAMESPACE, kube_context="prod-eu")
    with pytest.raises(ReleaseStuck) as stuck:
        HelmDeployer(HelmCli(str(helm.path), options), options).apply("qwen-7b-production", VLLM_CHART, {})
    assert stuck.value.message == (
        "release qwen-7b-production is stuck in pending-upgrade (revision 3, 2026-11-03T11:00:00Z); if no other "
        "helm or opsctl operation is still running on it, recover with: "
        "helm rollback qwen-7b-production 2 --namespace fleetgate --kube-context prod-eu")
    assert "upgrade" not in [c["argv"][0] for c in helm.calls()]


# --- the real engine: helm-python-sdk against a stand-in API server ------------------------------------


def test_sdk_history_decodes_helms_release_records(sdk_deployer, releases_api):
    assert sdk_deployer.history("meta-llama-llama-3-1-8b-staging") == [
        Revision(1, "superseded", "vllm-deployment-0.1.0", "v0.11.0", "2026-11-01T09:00:00Z", "Install complete"),
        Revision(2, "failed", "vllm-deployment-0.2.0", "v0.11.0", "2026-11-02T09:00:00Z",
                 'Upgrade "meta-llama-llama-3-1-8b-staging" failed: context deadline exceeded'),
        Revision(3, "deployed", "vllm-deployment-0.1.0", "v0.11.0", "2026-11-02T09:30:00Z", "Rollback to 1")]
    assert all("/namespaces/fleetgate/" in r for r in releases_api.requests if r.startswith("/api/"))


def test_sdk_status_of_a_healthy_release_has_no_pods_to_report(sdk_deployer):
    status = sdk_deployer.status("meta-llama-llama-3-1-8b-staging")
    assert (status.current.revision, status.current.status, status.recovery) == (3, "deployed", None)
    assert status.pods is None and status.pods_ready is None  # helm-python-sdk 0.2.2 drops Helm's resources
    assert status.ready is True  # without pods: ready means deployed
    assert status.engine.startswith("helm-python-sdk ")


def test_sdk_status_of_a_pending_upgrade_names_the_recovery(sdk_deployer):
    status = sdk_deployer.status("qwen-7b-production")
    assert status.current.status == "pending-upgrade" and status.ready is False
    assert status.recovery.startswith("helm rollback qwen-7b-production 2 --kubeconfig ")
    assert status.recovery.endswith(" --namespace fleetgate")


def test_apply_to_a_stuck_release_is_refused_before_any_change(sdk_deployer, releases_api):
    with pytest.raises(ReleaseStuck, match=r"stuck in pending-install \(revision 1, 2026-11-04T08:00:00Z\).*"
                                           r"recover with: helm uninstall m-01-ai-yi-34b-development "):
        sdk_deployer.apply("m-01-ai-yi-34b-development", VLLM_CHART,
                           chart_values("01-ai/Yi-34B", "development"))
    with pytest.raises(ReleaseStuck, match="helm rollback qwen-7b-production 2 "):
        sdk_deployer.apply("qwen-7b-production", VLLM_CHART, chart_values("qwen:7b", "production"))
    assert all(r.startswith(("/version", "/api/v1/namespaces/fleetgate/secrets")) for r in releases_api.requests)


def test_sdk_endpoints_from_the_values_helm_computed(tmp_path):
    """The release record holds the chart's default values and the user's: Helm coalesces them."""
    import yaml

    chart_values_yaml = yaml.safe_load((VLLM_CHART / "values.yaml").read_text())
    records = [{
        "name": "qwen-7b-production-canary", "namespace": NAMESPACE, "version": number,
        "info": {"first_deployed": "2026-11-01T09:00:00Z", "last_deployed": "2026-11-01T09:00:00Z",
                 "description": "Install complete", "status": status},
        "chart": {"metadata": {"apiVersion": "v2", "name": "vllm-deployment", "version": "0.1.0",
                               "appVersion": "v0.11.0", "type": "application"}, "values": chart_values_yaml},
        "config": {"model": {"name": "qwen:7b"}, "environment": "production", "nameSuffix": "canary",
                   "service": {"port": 8000 + number}},
        "manifest": ""} for number, status in ((1, "deployed"), (2, "failed"))]
    with KubeApi(records) as api:
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(api.kubeconfig())
        options = DeployerOptions(kubeconfig=kubeconfig, namespace=NAMESPACE)
        deployer = HelmDeployer(HelmSdk(options), options)
        assert deployer.endpoints("qwen-7b-production-canary") == [
            "http://qwen-7b-production-canary.fleetgate.svc.cluster.local:8001"]  # revision 1 serves
        with pytest.raises(ReleaseNotFound):
            deployer.endpoints("nope-production")


def test_sdk_unknown_release_and_revision(sdk_deployer):
    with pytest.raises(ReleaseNotFound, match=r"^release nope-production not found \(the current kube context, "
                                              r"namespace fleetgate\)$"):
        sdk_deployer.status("nope-production")
    with pytest.raises(DeployInputError, match=r"has no revision 7 \(it has 1, 2, 3\)"):
        sdk_deployer.rollback("qwen-7b-production", 7)


def test_sdk_against_an_unreachable_cluster_fails_in_one_line(unreachable_options):
    deployer = HelmDeployer(HelmSdk(unreachable_options), unreachable_options)
    for operation in (lambda: deployer.history("qwen-7b-production"), lambda: deployer.status("qwen-7b-production"),
                      lambda: deployer.apply("qwen-7b-production", VLLM_CHART, chart_values("qwen:7b", "production"),
                                             values_files=[VLLM_CHART / "values-production.yaml"])):
        with pytest.raises(DeployError) as failed:
            operation()
        assert failed.value.message.startswith("cannot reach the Kubernetes API (the current kube context, "
                                               "namespace fleetgate): ")
        assert "connection refused" in failed.value.message and "\n" not in failed.value.message


# --- rendering the real chart -------------------------------------------------------------------------


@pytest.mark.parametrize("env", ["development", "staging", "production"])
def test_apply_renders_the_real_chart_offline_into_valid_manifests(env):
    import yaml

    options = DeployerOptions(namespace=NAMESPACE)
    deployer = HelmDeployer(HelmSdk(options), options)
    release = release_name("meta-llama/Llama-3.1-8B", env)
    manifest = deployer.render(release, VLLM_CHART, chart_values("meta-llama/Llama-3.1-8B", env),
                               values_files=[VLLM_CHART / f"values-{env}.yaml"])
    documents = [d for d in yaml.safe_load_all(manifest) if d]
    validate(documents)
    assert find(documents, "Service")["metadata"]["name"] == release
    assert find(documents, "Deployment")["metadata"]["labels"]["fleetgate.io/environment"] == env


def test_bad_values_or_chart_are_refused_offline(unreachable_options, tmp_path):
    deployer = HelmDeployer(HelmSdk(unreachable_options), unreachable_options)
    values = chart_values("qwen:7b", "production")
    with pytest.raises(DeployInputError, match="^the chart does not render: .*replicaCount"):
        deployer.apply("qwen-7b-production", VLLM_CHART, {**values, "replicaCount": "two"})
    with pytest.raises(DeployInputError, match=f"^chart directory {tmp_path} not found"):
        deployer.apply("qwen-7b-production", tmp_path, values)
    with pytest.raises(DeployInputError, match="^values file .*values-qa.yaml not found"):
        deployer.apply("qwen-7b-production", VLLM_CHART, values, values_files=[VLLM_CHART / "values-qa.yaml"])
    broken = tmp_path / "broken.yaml"
    broken.write_text("a: [1\n")
    with pytest.raises(DeployInputError, match="^values file .*broken.yaml: "):
        deployer.apply("qwen-7b-production", VLLM_CHART, values, values_files=[broken])


def test_sdk_merges_values_files_like_helm(tmp_path):
    first, second = tmp_path / "a.yaml", tmp_path / "b.yaml"
    first.write_text("model: {name: a, source: {type: pvc}}\nreplicaCount: 1\nextra: [1, 2]\n")
    second.write_text("model: {name: b}\nextra: [3]\n")
    merged = HelmSdk(DeployerOptions())._merged([first, second], {"replicaCount": 3})
    assert merged == {"model": {"name": "b", "source": {"type": "pvc"}}, "replicaCount": 3, "extra": [3]}


# --- choosing a deployer and an engine ----------------------------------------------------------------


def test_deployer_kinds_and_environments():
    assert set(DEPLOYER_KINDS) == {"local", "helm"}
    with pytest.raises(DeployInputError, match="^unknown deployer 'nope': expected one of local, helm$"):
        make_deployer("nope", DeployerOptions())
    with pytest.raises(DeployInputError, match="local deployer needs a state dir and the gateway URL"):
        make_deployer("local", DeployerOptions())
    assert check_environment("staging") == "staging"
    with pytest.raises(DeployInputError, match="^unknown environment 'qa': expected one of development, "
                                               "staging, production$"):
        check_environment("qa")


def _kubeconfig(path: Path, current: str, contexts: dict[str, str | None]) -> Path:
    path.write_text(json.dumps({"apiVersion": "v1", "kind": "Config", "current-context": current, "contexts": [
        {"name": name, "context": {"cluster": "c", **({"namespace": ns} if ns else {})}}
        for name, ns in contexts.items()]}))
    return path


def test_the_namespace_defaults_to_the_kube_contexts_as_in_helm(tmp_path):
    first = _kubeconfig(tmp_path / "a", "prod", {"prod": "fleetgate", "dev": None})
    second = _kubeconfig(tmp_path / "b", "other", {"prod": "ignored", "other": "team-b"})
    assert context_namespace([first], None) == "fleetgate"
    assert context_namespace([first], "dev") == "default"
    assert context_namespace([first, second], "other") == "team-b"
    assert context_namespace([first, second], "prod") == "fleetgate"  # the first file naming a context wins
    assert context_namespace([second, first], None) == "team-b"  # and the first current-context
    (tmp_path / "bad").write_text("{{{: not yaml")
    assert context_namespace([tmp_path / "bad", tmp_path / "missing"], None) == "default"


def test_a_deployer_built_without_a_namespace_takes_the_contexts(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    kubeconfig = _kubeconfig(tmp_path / "config", "prod", {"prod": "fleetgate", "dev": "sandbox"})
    assert make_deployer("helm", DeployerOptions(kubeconfig=kubeconfig)).options.namespace == "fleetgate"
    monkeypatch.setenv("KUBECONFIG", f"{tmp_path / 'missing'}{os.pathsep}{kubeconfig}")
    assert make_deployer("helm", DeployerOptions(kube_context="dev")).options.namespace == "sandbox"
    assert make_deployer("helm", DeployerOptions(namespace="given")).options.namespace == "given"


def test_the_helm_binary_on_path_is_preferred_else_the_sdk(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    assert shutil.which("helm") is None
    assert isinstance(make_deployer("helm", DeployerOptions()).engine, HelmSdk)
    helm = HelmBinary.install(tmp_path / "bin", {})
    monkeypatch.setenv("PATH", f"{helm.directory}{os.pathsep}/nonexistent")
    engine = make_deployer("helm", DeployerOptions()).engine
    assert isinstance(engine, HelmCli) and engine.binary == str(helm.path)
