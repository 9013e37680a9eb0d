"""helm/gateway rendered by the real Helm engine for every environment: valid Kubernetes, settings the real
gateway accepts, commands the real opsctl parses, secrets only from Secrets, and the production topology."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import helm_python
import pytest

from gateway.settings import Settings, load_settings
from tests.helm.support import (
    ENVIRONMENTS,
    GATEWAY_CHART,
    find,
    lint,
    of_kind,
    opsctl_params,
    render,
    validate,
)

# The development values create their Secret from values; its admin token is given at install time.
DEV_TOKEN = {"devSecret.stringData": {"admin-token": "dev-token"}}
SECRET_SETTINGS = {"database_url", "redis_url", "admin_token", "s3_access_key", "s3_secret_key", "metrics_token"}
CHART_OWNED_SETTINGS = {"state_dir", "host", "port", "workers", "gateway_url"}


def chart(env: str, **extra: object) -> list[dict]:
    base = DEV_TOKEN if env == "development" else {}
    return render(GATEWAY_CHART, f"values-{env}.yaml", set={**base, **extra})


def by_component(manifests: list[dict], kind: str, component: str) -> list[dict]:
    return [m for m in of_kind(manifests, kind) if m["metadata"]["labels"]["app.kubernetes.io/component"] == component]


def gateway_container(manifests: list[dict]) -> dict:
    [deployment] = by_component(manifests, "Deployment", "gateway")
    return deployment["spec"]["template"]["spec"]["containers"][0]


def settings_from(manifests: list[dict], tmp_path: Path, container: dict) -> Settings:
    """Load the rendered fleetgate.toml plus the container's env with the real settings loader."""
    toml = tmp_path / "fleetgate.toml"
    toml.write_text(find(manifests, "ConfigMap")["data"]["fleetgate.toml"])
    fake_secrets = {"FLEETGATE_DATABASE_URL": "postgresql://fleetgate@db/fleetgate",
                    "FLEETGATE_REDIS_URL": "redis://redis:6379/0"}
    env = {e["name"]: fake_secrets.get(e["name"], "secret") for e in container.get("env", [])}
    return load_settings(toml, env=env)


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_every_manifest_is_valid_kubernetes(env: str) -> None:
    manifests = chart(env)
    validate(manifests)
    assert {"ConfigMap", "Deployment", "Service"} <= {m["kind"] for m in manifests}
    base = DEV_TOKEN if env == "development" else None
    assert lint(GATEWAY_CHART, f"values-{env}.yaml", set=base) == []


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_the_gateway_serves_with_workers_sharing_the_port(env: str) -> None:
    manifests = chart(env)
    gateway = gateway_container(manifests)
    assert gateway["command"] == ["opsctl"]
    params = opsctl_params(gateway["args"])
    workers = {"development": 1, "staging": 2, "production": 2}[env]
    assert params == {"host": "0.0.0.0", "port": 8080, "workers": workers, "config": "/etc/fleetgate/fleetgate.toml"}
    assert gateway["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    assert gateway["startupProbe"]["httpGet"] == {"path": "/v1/status/healthz", "port": "http"}
    assert gateway["livenessProbe"]["httpGet"] == {"path": "/v1/status/healthz", "port": "http"}
    assert gateway["readinessProbe"]["httpGet"] == {"path": "/v1/status/readyz", "port": "http"}
    if workers > 1:
        assert gateway["resources"]["requests"]["cpu"] == str(workers), "about one CPU per worker"


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_rendered_settings_are_accepted_by_the_gateway(env: str, tmp_path: Path) -> None:
    manifests = chart(env)
    gateway = gateway_container(manifests)
    settings = settings_from(manifests, tmp_path, gateway)
    state_mount = next(m for m in gateway["volumeMounts"] if m["name"] == "state")
    assert str(settings.state_dir) == state_mount["mountPath"]
    assert settings.default_environment == env
    assert settings.usage_sink == {"development": "spool", "staging": "redis-stream", "production": "redis-stream"}[env]
    if env != "development":
        assert settings.lake_url.startswith("s3://")
        assert settings.database_url.startswith("postgresql://") and settings.redis_url.startswith("redis://")


def test_config_values_reach_the_toml_typed() -> None:
    manifests = chart("production", **{"config.registry_ttl_s": 60, "config.access_log": False,
                                       "config.upstream_timeout_s": 120.5, "config.s3_endpoint": "http://minio:9000"})
    toml = find(manifests, "ConfigMap")["data"]["fleetgate.toml"]
    assert "registry_ttl_s = 60\n" in toml
    assert "access_log = false\n" in toml
    assert "upstream_timeout_s = 120.5\n" in toml
    assert 's3_endpoint = "http://minio:9000"\n' in toml


def test_the_config_schema_offers_exactly_the_non_secret_settings() -> None:
    schema = json.loads((GATEWAY_CHART / "values.schema.json").read_text())
    offered = set(schema["properties"]["config"]["properties"])
    fields = {f.name for f in dataclasses.fields(Settings)}
    assert offered == fields - SECRET_SETTINGS - CHART_OWNED_SETTINGS


@pytest.mark.parametrize("secret_setting", sorted(SECRET_SETTINGS))
def test_secrets_in_config_are_refused(secret_setting: str) -> None:
    with pytest.raises(helm_python.HelmValuesError, match=f"additional properties '{secret_setting}' not allowed"):
        chart("production", **{f"config.{secret_setting}": "x"})


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_secrets_reach_processes_only_from_secret_references(env: str) -> None:
    manifests = chart(env)
    secret_vars = {f"FLEETGATE_{name.upper()}" for name in SECRET_SETTINGS}
    containers = [c for kind in ("Deployment", "Job") for m in of_kind(manifests, kind)
                  for c in m["spec"]["template"]["spec"]["containers"]]
    for container in containers:
        for var in container.get("env", []):
            if var["name"] in secret_vars:
                assert set(var) == {"name", "valueFrom"} and "secretKeyRef" in var["valueFrom"], var
    toml = find(manifests, "ConfigMap")["data"]["fleetgate.toml"]
    assert not any(f"{name} =" in toml for name in SECRET_SETTINGS)


def test_each_process_gets_only_the_secrets_it_needs() -> None:
    manifests = chart("production")
    names = {component: {e["name"] for e in m["spec"]["template"]["spec"]["containers"][0]["env"]}
             for kind in ("Deployment", "Job") for m in of_kind(manifests, kind)
             for component in [m["metadata"]["labels"]["app.kubernetes.io/component"]]}
    assert names["gateway"] == {"FLEETGATE_DATABASE_URL", "FLEETGATE_REDIS_URL", "FLEETGATE_ADMIN_TOKEN",
                                "FLEETGATE_S3_ACCESS_KEY", "FLEETGATE_S3_SECRET_KEY", "FLEETGATE_METRICS_TOKEN"}
    assert names["lake-writer"] == {"FLEETGATE_REDIS_URL", "FLEETGATE_S3_ACCESS_KEY", "FLEETGATE_S3_SECRET_KEY"}
    assert names["migration"] == {"FLEETGATE_STATE_DIR", "FLEETGATE_DATABASE_URL"}


@pytest.mark.parametrize("env", ["staging", "production"])
def test_migration_job_runs_before_install_and_upgrade(env: str) -> None:
    [job] = of_kind(chart(env), "Job")
    annotations = job["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert "before-hook-creation" in annotations["helm.sh/hook-delete-policy"]
    migrate = job["spec"]["template"]["spec"]["containers"][0]
    assert migrate["command"] == ["opsctl"] and migrate["args"][:2] == ["store", "migrate"]
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"


def test_migration_command_is_a_real_opsctl_command() -> None:
    [job] = of_kind(chart("production"), "Job")
    params = opsctl_params(job["spec"]["template"]["spec"]["containers"][0]["args"])
    assert params["output"].value == "json"  # its log shows the versions applied


def test_no_migration_job_without_an_external_database() -> None:
    assert of_kind(chart("development"), "Job") == []


def test_the_dev_secret_exists_before_the_migration_hook() -> None:
    manifests = chart("development", **{"secrets.databaseUrl": {"name": "fleetgate-dev", "key": "database-url"},
                                        "devSecret.stringData": {"admin-token": "t", "database-url": "postgresql://db/x"}})
    secret, job = find(manifests, "Secret"), find(manifests, "Job")
    assert secret["metadata"]["annotations"]["helm.sh/hook"] == job["metadata"]["annotations"]["helm.sh/hook"]
    assert int(secret["metadata"]["annotations"]["helm.sh/hook-weight"]) < int(
        job["metadata"]["annotations"]["helm.sh/hook-weight"])


@pytest.mark.parametrize("env", ["staging", "production"])
def test_lake_writer_consumes_the_usage_stream(env: str, tmp_path: Path) -> None:
    manifests = chart(env)
    [writer] = by_component(manifests, "Deployment", "lake-writer")
    container = writer["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["opsctl"]
    assert opsctl_params(container["args"])["config"] == "/etc/fleetgate/fleetgate.toml"
    settings = settings_from(manifests, tmp_path, container)
    assert settings.usage_sink == "redis-stream" and settings.redis_url and settings.lake_url.startswith("s3://")


def test_lake_writer_needs_the_redis_stream_sink() -> None:
    with pytest.raises(helm_python.HelmRenderError, match="lakeWriter.enabled needs config.usage_sink=redis-stream"):
        chart("production", **{"config.usage_sink": "spool"})
    assert by_component(chart("development"), "Deployment", "lake-writer") == []


def test_production_is_highly_available() -> None:
    manifests = chart("production")
    [deployment] = by_component(manifests, "Deployment", "gateway")
    hpa = find(manifests, "HorizontalPodAutoscaler")
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    assert hpa["spec"]["minReplicas"] >= 2
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": deployment["metadata"]["name"]}
    assert hpa["spec"]["metrics"] == [{"type": "Resource", "resource": {
        "name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}}]
    pdb = find(manifests, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    assert 1 <= pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"]
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    [spread] = deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert spread["topologyKey"] == "kubernetes.io/hostname"
    assert spread["labelSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]


def test_staging_runs_two_replicas_and_development_one() -> None:
    assert by_component(chart("staging"), "Deployment", "gateway")[0]["spec"]["replicas"] == 2
    development = chart("development")
    assert by_component(development, "Deployment", "gateway")[0]["spec"]["replicas"] == 1
    assert of_kind(development, "PodDisruptionBudget") == of_kind(development, "HorizontalPodAutoscaler") == []


@pytest.mark.parametrize("env", ["staging", "production"])
def test_service_monitor_and_network_policy_select_the_gateway_pods(env: str) -> None:
    manifests = chart(env)
    [deployment] = by_component(manifests, "Deployment", "gateway")
    selector = deployment["spec"]["selector"]["matchLabels"]
    service = find(manifests, "Service")
    assert service["spec"]["selector"] == selector
    monitor = find(manifests, "ServiceMonitor")
    assert monitor["spec"]["selector"]["matchLabels"] == selector
    [endpoint] = monitor["spec"]["endpoints"]
    assert (endpoint["port"], endpoint["path"], endpoint["interval"]) == ("http", "/metrics", "30s")
    assert endpoint["relabelings"] == [{"action": "replace", "targetLabel": "environment", "replacement": env}]
    assert endpoint["honorLabels"] is True, "the gateway's own endpoint/environment labels must survive"
    policy = find(manifests, "NetworkPolicy")
    assert policy["spec"]["podSelector"]["matchLabels"] == selector
    [rule] = policy["spec"]["ingress"]
    assert rule["ports"] == [{"port": "http", "protocol": "TCP"}]
    assert {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
            "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}} in rule["from"]


def test_the_metrics_token_is_sent_by_the_service_monitor() -> None:
    [endpoint] = find(chart("production"), "ServiceMonitor")["spec"]["endpoints"]
    assert endpoint["authorization"] == {"type": "Bearer",
                                         "credentials": {"name": "fleetgate-metrics-token", "key": "token"}}
    assert "authorization" not in find(chart("staging"), "ServiceMonitor")["spec"]["endpoints"][0]


def test_network_policy_clients_come_from_values() -> None:
    clients = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}]
    rule = find(chart("production", **{"networkPolicy.clients": clients}), "NetworkPolicy")["spec"]["ingress"][0]
    assert rule["from"][0] == clients[0] and len(rule["from"]) == 2


def test_a_config_change_rolls_the_gateway_and_the_writer() -> None:
    def checksums(**extra: object) -> set[str]:
        return {m["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
                for m in of_kind(chart("production", **extra), "Deployment")}

    [before] = checksums()
    [after] = checksums(**{"config.log_level": "debug"})
    assert before != after


@pytest.mark.parametrize(("values", "field"), [
    ({"replicaCount": "two"}, "/replicaCount"),
    ({"workers": 0}, "/workers"),
    ({"port": "http"}, "/port"),
    ({"config.usage_sink": "kafka"}, "/config/usage_sink"),
    ({"config.registry_ttl_s": 0}, "/config/registry_ttl_s"),
    ({"config.lake_url": "/var/lake"}, "/config/lake_url"),
    ({"config.no_such_setting": 1}, "additional properties 'no_such_setting'"),
    ({"secrets.redisUrl": {"name": "Bad_Name", "key": "url"}}, "/secrets/redisUrl/name"),
    ({"autoscaling.targetCPUUtilizationPercentage": 150}, "/autoscaling/targetCPUUtilizationPercentage"),
    ({"probes.readiness.path": "v1/status/readyz"}, "/probes/readiness/path"),
    ({"replicas": 3}, "additional properties 'replicas'"),
])
def test_bad_values_are_refused_by_the_schema_naming_the_field(values: dict, field: str) -> None:
    with pytest.raises(helm_python.HelmValuesError) as refused:
        chart("production", **values)
    assert field in str(refused.value)


@pytest.mark.parametrize(("env", "values", "message"), [
    ("production", {"secrets.adminToken": {"name": "", "key": "token"}}, "secrets.adminToken.name is required"),
    ("development", {"workers": 2}, "workers=2 needs secrets.redisUrl"),
    ("development", {"replicaCount": 2}, "2 replicas need secrets.redisUrl"),
    ("production", {"secrets.databaseUrl": {"name": "", "key": "url"}}, "need secrets.databaseUrl (PostgreSQL)"),
    ("development", {"config.usage_sink": "redis-stream"}, "config.usage_sink=redis-stream needs secrets.redisUrl"),
    ("production", {"devSecret.create": True}, "devSecret.create is for development only"),
    ("development", {"devSecret.stringData": {}}, "set devSecret.stringData.admin-token"),
    ("production", {"podDisruptionBudget.minAvailable": 3}, "minAvailable=3 with 3 replica(s) would block"),
    ("production", {"resources.requests": {"cpu": None}}, "autoscaling on CPU needs resources.requests.cpu"),
])
def test_unsafe_combinations_fail_the_render_with_a_clear_message(env: str, values: dict, message: str) -> None:
    with pytest.raises(helm_python.HelmRenderError) as refused:
        chart(env, **values)
    assert message in str(refused.value)
