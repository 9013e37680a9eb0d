"""helm/vllm-deployment rendered by the real Helm engine for every environment and checked against the
Kubernetes schemas, the registry's endpoint convention, the gateway chart and the real opsctl CLI."""

from __future__ import annotations

import helm_python
import promql_parser
import pytest

from tests.helm.support import (
    DNS_1035_LABEL,
    ENVIRONMENTS,
    GATEWAY_CHART,
    NAMESPACE,
    VLLM_CHART,
    find,
    lint,
    of_kind,
    opsctl_params,
    render,
    validate,
)

MODEL = "meta-llama/Llama-3.1-8B"
BASE = {"model.name": MODEL, "model.source.pvc.claimName": "llama-weights"}
# What the development gateway chart needs to render (its dev Secret's admin token).
GATEWAY_DEV = {"devSecret.stringData": {"admin-token": "dev-token"}}


def chart(env: str, **extra: object) -> list[dict]:
    return render(VLLM_CHART, f"values-{env}.yaml", set={**BASE, **extra})


def container(manifests: list[dict]) -> dict:
    return find(manifests, "Deployment")["spec"]["template"]["spec"]["containers"][0]


def register_job(manifests: list[dict]) -> dict:
    [job] = [j for j in of_kind(manifests, "Job")
             if j["metadata"]["annotations"]["helm.sh/hook"] == "post-install,post-upgrade"]
    return job


def flag(args: list[str], name: str) -> str:
    """The value after `name` in an argument list (each flag must appear once)."""
    assert args.count(name) == 1, f"{name} appears {args.count(name)} times in {args}"
    return args[args.index(name) + 1]


def probe_window(probe: dict) -> int:
    """Seconds before a probe gives up on a pod that never answers."""
    return probe.get("initialDelaySeconds", 0) + probe["periodSeconds"] * probe["failureThreshold"]


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_every_manifest_is_valid_kubernetes(env: str) -> None:
    manifests = chart(env)
    validate(manifests)
    kinds = {m["kind"] for m in manifests}
    assert {"Deployment", "Service", "ConfigMap", "Job"} <= kinds
    assert lint(VLLM_CHART, f"values-{env}.yaml", set=BASE) == []


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_pods_request_gpus_and_tolerate_gpu_nodes(env: str) -> None:
    manifests = chart(env, **{"nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-L4"}})
    pod = find(manifests, "Deployment")["spec"]["template"]["spec"]
    resources = pod["containers"][0]["resources"]
    assert resources["requests"]["nvidia.com/gpu"] == 1
    assert resources["limits"]["nvidia.com/gpu"] == 1
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-L4"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    shm = next(v for v in pod["volumes"] if v["name"] == "shm")
    assert shm["emptyDir"]["medium"] == "Memory"


def test_gpu_count_and_resource_name_come_from_values() -> None:
    vllm = container(chart("production", **{"resources.gpu.count": 4, "resources.gpu.resourceName": "amd.com/gpu",
                                            "vllm.tensorParallelSize": 4}))
    assert vllm["resources"]["requests"]["amd.com/gpu"] == vllm["resources"]["limits"]["amd.com/gpu"] == 4
    assert "nvidia.com/gpu" not in vllm["resources"]["limits"]
    assert flag(vllm["args"], "--tensor-parallel-size") == "4"


def test_production_replicas_prefer_different_nodes() -> None:
    deployment = find(chart("production"), "Deployment")
    [term] = deployment["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert term["podAffinityTerm"]["labelSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    assert "affinity" not in find(chart("staging"), "Deployment")["spec"]["template"]["spec"]


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_startup_probe_covers_model_load_before_liveness_and_readiness(env: str) -> None:
    vllm = container(chart(env))
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert vllm[probe]["httpGet"] == {"path": "/health", "port": "http"}, probe
    startup, readiness = vllm["startupProbe"], vllm["readinessProbe"]
    assert probe_window(startup) >= 600, "large models need ~10 minutes to load"
    assert probe_window(startup) > probe_window(readiness)
    assert readiness["periodSeconds"] <= 10


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_vllm_arguments_come_from_values(env: str) -> None:
    manifests = chart(env, **{"vllm.maxModelLen": 16384, "vllm.gpuMemoryUtilization": 0.8,
                              "vllm.extraArgs": ["--enable-prefix-caching", "--dtype", "bfloat16"]})
    vllm = container(manifests)
    args = vllm["args"]
    assert vllm["image"].startswith("vllm/vllm-openai:")
    assert "command" not in vllm, "arguments follow the image's own entrypoint"
    assert flag(args, "--served-model-name") == MODEL
    assert flag(args, "--model") == "/models"
    assert flag(args, "--port") == "8000"
    assert flag(args, "--max-model-len") == "16384"
    assert flag(args, "--gpu-memory-utilization") == "0.8"
    assert flag(args, "--tensor-parallel-size") == "1"
    assert args[-3:] == ["--enable-prefix-caching", "--dtype", "bfloat16"]
    assert vllm["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
    config = find(manifests, "ConfigMap")
    assert vllm["envFrom"] == [{"configMapRef": {"name": config["metadata"]["name"]}}]
    assert config["data"]["HF_HUB_OFFLINE"] == "1"


def test_weights_from_a_read_only_pvc() -> None:
    pod = find(chart("production", **{"model.path": "llama-3.1-8b"}), "Deployment")["spec"]["template"]["spec"]
    assert flag(pod["containers"][0]["args"], "--model") == "/models/llama-3.1-8b"
    assert {"name": "model", "persistentVolumeClaim": {"claimName": "llama-weights", "readOnly": True}} in pod["volumes"]
    assert "initContainers" not in pod


def test_weights_downloaded_from_object_storage_by_an_init_container() -> None:
    pod = find(chart("staging", **{"model.source.type": "objectStorage",
                                   "model.source.objectStorage.uri": "s3://models/llama-3.1-8b",
                                   "model.source.objectStorage.endpoint": "http://minio.storage:9000",
                                   "model.source.objectStorage.credentialsSecret": "model-store"}),
               "Deployment")["spec"]["template"]["spec"]
    download = pod["initContainers"][0]
    assert download["command"][:5] == ["aws", "s3", "sync", "s3://models/llama-3.1-8b", "/models"]
    assert flag(download["command"], "--endpoint-url") == "http://minio.storage:9000"
    assert download["envFrom"] == [{"secretRef": {"name": "model-store"}}]
    model_volume = next(v for v in pod["volumes"] if v["name"] == "model")
    assert model_volume["emptyDir"]["sizeLimit"] == "64Gi"
    assert flag(pod["containers"][0]["args"], "--model") == "/models"


@pytest.mark.parametrize(("model", "kubernetes_name"), [
    ("meta-llama/Llama-3.1-8B", "meta-llama-llama-3-1-8b"),
    ("qwen:7b", "qwen-7b"),
    ("Qwen2.5-7B-Instruct", "qwen2-5-7b-instruct"),
    ("01-ai/Yi-34B", "m-01-ai-yi-34b"),
    ("org/" + "very-long-model-name-" * 4 + "v2", None),
])
@pytest.mark.parametrize("env", ["staging", "production"])
def test_service_and_registration_follow_the_registry_convention(model: str, kubernetes_name: str | None,
                                                                 env: str) -> None:
    manifests = chart(env, **{"model.name": model})
    service = find(manifests, "Service")
    name = service["metadata"]["name"]
    assert DNS_1035_LABEL.fullmatch(name) and len(name) <= 63
    assert name.endswith(f"-{env}")
    if kubernetes_name is not None:
        assert name == f"{kubernetes_name}-{env}"
    assert service["spec"]["ports"][0]["port"] == 8000
    assert service["spec"]["selector"] == find(manifests, "Deployment")["spec"]["selector"]["matchLabels"]

    job = register_job(manifests)
    assert len(job["metadata"]["name"]) <= 63
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[:3] == ["registry", "register", model], "the registry name is registered unchanged"
    assert flag(args, "--endpoint") == f"http://{name}.{NAMESPACE}.svc.cluster.local:8000"
    assert flag(args, "--env") == env
    assert flag(args, "--release") == "stable"
    assert flag(container(manifests)["args"], "--served-model-name") == model


def test_explicit_kubernetes_name_and_canary_suffix() -> None:
    manifests = chart("production", **{"model.kubernetesName": "llama8b", "nameSuffix": "canary",
                                       "registration.release": "canary", "registration.weight": 0})
    service = find(manifests, "Service")
    assert service["metadata"]["name"] == "llama8b-production-canary"
    args = register_job(manifests)["spec"]["template"]["spec"]["containers"][0]["args"]
    assert flag(args, "--endpoint") == f"http://llama8b-production-canary.{NAMESPACE}.svc.cluster.local:8000"
    assert flag(args, "--release") == "canary" and flag(args, "--weight") == "0"
    assert args[2] == MODEL


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_registration_jobs_run_real_opsctl_commands_with_the_token_from_a_secret(env: str) -> None:
    manifests = chart(env, **{"registration.inputPrice": 0.15, "registration.outputPrice": 0.6,
                              "registration.maxTokens": 1024})
    jobs = {job["metadata"]["annotations"]["helm.sh/hook"]: job for job in of_kind(manifests, "Job")}
    assert set(jobs) == {"post-install,post-upgrade", "pre-delete"}
    service = find(manifests, "Service")["metadata"]["name"]

    register = jobs["post-install,post-upgrade"]["spec"]["template"]["spec"]["containers"][0]
    params = opsctl_params(register["args"])
    assert params["model"] == MODEL
    assert params["endpoint"] == f"http://{service}.{NAMESPACE}.svc.cluster.local:8000"
    assert (params["env"], params["release"], params["weight"]) == (env, "stable", 100)
    assert (params["input_price"], params["output_price"], params["max_tokens"]) == (0.15, 0.6, 1024)

    deregister = jobs["pre-delete"]["spec"]["template"]["spec"]["containers"][0]
    params = opsctl_params(deregister["args"])
    assert (params["model"], params["env"], params["endpoint"]) == (
        MODEL, env, f"http://{service}.{NAMESPACE}.svc.cluster.local:8000")

    for job in jobs.values():
        env_vars = {e["name"]: e for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert set(env_vars) == {"FLEETGATE_GATEWAY_URL", "FLEETGATE_ADMIN_TOKEN"}
        assert "value" not in env_vars["FLEETGATE_ADMIN_TOKEN"], "the admin token is never inline"
        assert env_vars["FLEETGATE_ADMIN_TOKEN"]["valueFrom"]["secretKeyRef"]["name"]
        assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"


def test_registration_can_be_left_to_the_rollout_engine() -> None:
    assert of_kind(chart("production", **{"registration.enabled": False}), "Job") == []


@pytest.mark.parametrize("env", ["staging", "production"])
def test_network_policy_admits_only_the_gateway_pods_and_prometheus(env: str) -> None:
    manifests = chart(env)
    policy = find(manifests, "NetworkPolicy")
    deployment = find(manifests, "Deployment")
    assert policy["spec"]["podSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    [rule] = policy["spec"]["ingress"]
    assert rule["ports"] == [{"port": "http", "protocol": "TCP"}]
    gateway_peer, prometheus_peer = rule["from"]
    assert prometheus_peer["namespaceSelector"] == {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}

    # The gateway chart's pods, rendered for the same environment: only its serving pods get in.
    gateway = render(GATEWAY_CHART, f"values-{env}.yaml")
    pods = {m["metadata"]["name"]: m["spec"]["template"]["metadata"]["labels"]
            for m in of_kind(gateway, "Deployment") + of_kind(gateway, "Job")}
    admitted = {name for name, labels in pods.items() if selects(gateway_peer["podSelector"]["matchLabels"], labels)}
    assert admitted == {find(gateway, "Service")["metadata"]["name"]}, pods
    assert "namespaceSelector" not in gateway_peer, "by default the gateway runs in the release's namespace"


def test_network_policy_reaches_a_gateway_in_another_namespace() -> None:
    policy = find(chart("production", **{"gateway.namespace": "fleetgate-system"}), "NetworkPolicy")
    gateway_peer = policy["spec"]["ingress"][0]["from"][0]
    assert gateway_peer["namespaceSelector"] == {"matchLabels": {"kubernetes.io/metadata.name": "fleetgate-system"}}


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_the_gateway_seen_by_this_chart_is_the_gateway_chart(env: str) -> None:
    """URL, admin token Secret and image of the registration Jobs match what the gateway chart deploys."""
    values = helm_python.Chart.load(str(VLLM_CHART)).merge_values(
        helm_python.values_from_yaml((VLLM_CHART / f"values-{env}.yaml").read_text()))["gateway"]
    gateway = render(GATEWAY_CHART, f"values-{env}.yaml", set=GATEWAY_DEV if env == "development" else None,
                     release="fleetgate", namespace="fleetgate")
    service = find(gateway, "Service")
    port = service["spec"]["ports"][0]["port"]
    assert values["url"] == f"http://{service['metadata']['name']}.fleetgate.svc.cluster.local:{port}"
    serving = find(gateway, "Deployment", service["metadata"]["name"])["spec"]["template"]["spec"]["containers"][0]
    token_env = next(e for e in serving["env"] if e["name"] == "FLEETGATE_ADMIN_TOKEN")
    assert token_env["valueFrom"]["secretKeyRef"] == values["adminTokenSecret"]
    assert serving["image"] == f"{values['image']['repository']}:{values['image']['tag']}"


def test_production_keeps_two_replicas_through_drains_and_updates() -> None:
    manifests = chart("production")
    deployment = find(manifests, "Deployment")
    scaler = find(manifests, "ScaledObject")
    assert "replicas" not in deployment["spec"], "the autoscaler owns the replica count"
    assert scaler["spec"]["minReplicaCount"] >= 2
    assert scaler["spec"]["scaleTargetRef"] == {"name": deployment["metadata"]["name"]}
    pdb = find(manifests, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    assert 1 <= pdb["spec"]["minAvailable"] < scaler["spec"]["minReplicaCount"]
    assert deployment["spec"]["strategy"] == {"type": "RollingUpdate",
                                              "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}


def test_development_and_staging_run_one_replica() -> None:
    development, staging = chart("development"), chart("staging")
    assert find(development, "Deployment")["spec"]["replicas"] == 1
    assert find(staging, "Deployment")["spec"]["replicas"] == 1
    assert find(development, "Deployment")["spec"]["strategy"] == {"type": "Recreate"}
    assert find(staging, "Deployment")["spec"]["strategy"]["rollingUpdate"]["maxSurge"] == 0
    assert of_kind(development, "PodDisruptionBudget") == of_kind(staging, "PodDisruptionBudget") == []
    # Staging holds production's SLO settings: the same probes.
    assert container(staging)["startupProbe"] == container(chart("production"))["startupProbe"]
    assert container(staging)["readinessProbe"] == container(chart("production"))["readinessProbe"]


def test_keda_scales_on_the_vllm_queue_of_this_release() -> None:
    trigger = find(chart("production"), "ScaledObject")["spec"]["triggers"][0]
    assert trigger["type"] == "prometheus"
    assert trigger["metadata"]["threshold"] == "5"
    query = promql_parser.parse(trigger["metadata"]["query"])
    assert "vllm:num_requests_waiting" in str(query)
    assert f'namespace="{NAMESPACE}"' in trigger["metadata"]["query"]
    assert 'service="meta-llama-llama-3-1-8b-production"' in trigger["metadata"]["query"]


def test_hpa_mode_scales_on_the_queue_through_a_pods_metric() -> None:
    manifests = chart("production", **{"autoscaling.mode": "hpa"})
    validate(manifests)
    hpa = find(manifests, "HorizontalPodAutoscaler")
    assert of_kind(manifests, "ScaledObject") == []
    assert hpa["spec"]["minReplicas"] == 2
    assert hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] == "vllm_num_requests_waiting"
    assert hpa["spec"]["metrics"][0]["pods"]["target"] == {"type": "AverageValue", "averageValue": "5"}


@pytest.mark.parametrize("env", ["staging", "production"])
def test_service_monitor_scrapes_metrics_every_30_seconds(env: str) -> None:
    manifests = chart(env, **{"serviceMonitor.labels": {"release": "kube-prometheus-stack"}})
    monitor = find(manifests, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["spec"]["selector"]["matchLabels"] == find(manifests, "Service")["spec"]["selector"]
    assert monitor["spec"]["endpoints"] == [{
        "port": "http", "path": "/metrics", "interval": "30s", "scrapeTimeout": "10s", "honorLabels": False,
        "relabelings": [{"action": "replace", "targetLabel": "environment", "replacement": env}]}]


def test_a_config_change_rolls_the_pods() -> None:
    def checksum(**extra: object) -> str:
        return find(chart("staging", **extra), "Deployment")["spec"]["template"]["metadata"]["annotations"][
            "checksum/config"]

    assert checksum() == checksum()
    assert checksum() != checksum(**{"vllm.env": {"VLLM_LOGGING_LEVEL": "DEBUG"}})


@pytest.mark.parametrize(("values", "field"), [
    ({"replicaCount": "two"}, "/replicaCount"),
    ({"resources.gpu.count": -1}, "/resources/gpu/count"),
    ({"model.name": ""}, "/model/name"),
    ({"updateStrategy.type": "BlueGreen"}, "/updateStrategy/type"),
    ({"replicas": 2}, "additional properties 'replicas'"),
    ({"vllm.gpuMemoryUtilization": 1.5}, "/vllm/gpuMemoryUtilization"),
    ({"vllm.tensorParallelSize": 0}, "/vllm/tensorParallelSize"),
    ({"environment": "Prod"}, "/environment"),
    ({"model.kubernetesName": "Llama_8B"}, "/model/kubernetesName"),
    ({"model.source.pvc.claimName": ""}, "/model/source/pvc/claimName"),
    ({"model.source.type": "objectStorage"}, "/model/source/objectStorage/uri"),
    ({"probes.startup.failureThreshold": 0}, "/probes/startup/failureThreshold"),
])
def test_bad_values_are_refused_by_the_schema_naming_the_field(values: dict, field: str) -> None:
    with pytest.raises(helm_python.HelmValuesError) as refused:
        chart("production", **values)
    assert field in str(refused.value)


def test_a_release_without_a_model_is_refused() -> None:
    with pytest.raises(helm_python.HelmValuesError, match="/model/name"):
        render(VLLM_CHART, "values-production.yaml", set={"model.source.pvc.claimName": "weights"})


@pytest.mark.parametrize(("values", "message"), [
    ({"vllm.tensorParallelSize": 2}, "vllm.tensorParallelSize=2 needs 2 GPUs per pod, but resources.gpu.count=1"),
    ({"updateStrategy.rollingUpdate": {"maxSurge": 0, "maxUnavailable": 0}}, "cannot both be 0"),
    ({"autoscaling.minReplicas": 1}, "minAvailable=1 with 1 replica(s) would block every node drain"),
    ({"podDisruptionBudget.maxUnavailable": 1}, "set exactly one of minAvailable and maxUnavailable"),
    ({"autoscaling.maxReplicas": 1}, "autoscaling.minReplicas=2 is above autoscaling.maxReplicas=1"),
    ({"model.name": "///"}, "has no letters or digits"),
])
def test_inconsistent_values_fail_the_render_with_a_clear_message(values: dict, message: str) -> None:
    with pytest.raises(helm_python.HelmRenderError) as refused:
        chart("production", **values)
    assert message in str(refused.value)
