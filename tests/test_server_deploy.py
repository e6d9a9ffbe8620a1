"""The deployment files agree with the service: port, probes, user, env names."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from timbral.server.config import ENV_NAMES, Config

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[1]
PORT = Config().api_port


def load(path: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all((ROOT / path).read_text()) if doc]


def test_dockerfile_is_multi_stage_non_root_with_a_ping_healthcheck():
    text = (ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM\s+\S+\s+AS\s+(\w+)", text, flags=re.M | re.I)
    assert stages == ["build", "runtime"]
    build, runtime = re.split(r"^FROM .* AS runtime$", text, flags=re.M)
    assert "pip wheel" in build
    assert "COPY --from=build /wheels" in runtime
    user = re.findall(r"^USER\s+(\S+)", runtime, flags=re.M)
    assert user and user[-1] not in ("root", "0")
    assert re.search(rf"^EXPOSE\s+{PORT}$", runtime, flags=re.M)
    healthcheck = re.search(r"^HEALTHCHECK .*?\n(?:.*\\\n)*.*$", runtime, flags=re.M).group(0)
    assert "/ping" in healthcheck
    assert 'CMD ["python", "-m", "timbral.server"]' in runtime
    for name in re.findall(r"^\s*(\w+)=", runtime.split("ENV", 1)[1].split("USER")[0], flags=re.M):
        assert name in ENV_NAMES.values() or name == "PYTHONUNBUFFERED"


def test_compose_runs_the_service_with_redis():
    (compose,) = load("docker-compose.yml")
    service, redis = compose["services"]["timbral"], compose["services"]["redis"]
    assert service["ports"] == [f"{PORT}:{PORT}"]
    assert service["environment"]["REDIS_URL"] == "redis://redis:6379"
    assert set(service["environment"]) <= set(ENV_NAMES.values())
    assert "redis" in service["depends_on"]
    assert redis["image"].startswith("redis:")
    command = redis["command"]
    assert command[command.index("--maxmemory-policy") + 1] == "allkeys-lru"
    assert command[command.index("--maxmemory") + 1].endswith("mb")
    assert int(service["environment"]["CACHE_TTL_SECONDS"]) > 0  # every Redis entry expires


def test_k8s_redis_is_capped_and_evicts_least_recently_used_keys():
    configmap, deployment, service = load("deploy/k8s/redis.yaml")
    conf = dict(line.split(None, 1) for line in configmap["data"]["redis.conf"].splitlines())
    assert conf["maxmemory-policy"] == "allkeys-lru"
    maxmemory_mb = int(conf["maxmemory"].removesuffix("mb"))
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    limit_mb = int(container["resources"]["limits"]["memory"].removesuffix("Gi")) * 1024
    assert maxmemory_mb < limit_mb  # Redis evicts before the kernel kills it
    (app_config,) = load("deploy/k8s/configmap.yaml")
    assert app_config["data"]["REDIS_URL"] == f"redis://{service['metadata']['name']}:6379"
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]


def test_k8s_deployment_probes_the_right_port_and_paths():
    (deployment,) = load("deploy/k8s/deployment.yaml")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["ports"][0]["containerPort"] == PORT
    assert container["livenessProbe"]["httpGet"] == {"path": "/ping", "port": PORT}
    assert container["readinessProbe"]["httpGet"] == {"path": "/api/v1/health", "port": PORT}
    assert container["envFrom"] == [{"configMapRef": {"name": "timbral"}}]
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    (configmap,) = load("deploy/k8s/configmap.yaml")
    # preStop sleeps while endpoints drain; SIGTERM then turns readiness to 503 for the
    # delay, and in-flight requests get the timeout: all within the grace period.
    assert container["lifecycle"]["preStop"]["exec"]["command"][0] == "sleep"
    pre_stop = float(container["lifecycle"]["preStop"]["exec"]["command"][1])
    assert pre_stop >= 3
    data = configmap["data"]
    assert float(data["TIMBRAL_SHUTDOWN_DELAY_SECONDS"]) > 0
    assert grace > pre_stop + float(data["TIMBRAL_SHUTDOWN_DELAY_SECONDS"]) + float(
        data["TIMBRAL_SHUTDOWN_TIMEOUT_SECONDS"])


def test_k8s_configmap_uses_the_service_env_names_and_valid_values():
    (configmap,) = load("deploy/k8s/configmap.yaml")
    assert configmap["kind"] == "ConfigMap"
    assert set(configmap["data"]) <= set(ENV_NAMES.values())
    assert {"API_PORT", "REDIS_URL", "TIMBRAL_MODEL_DIR", "CACHE_TTL_SECONDS"} <= set(configmap["data"])
    assert Config.from_env(configmap["data"]).api_port == PORT


def test_k8s_service_and_hpa_target_the_deployment():
    (service,) = load("deploy/k8s/service.yaml")
    (hpa,) = load("deploy/k8s/hpa.yaml")
    (deployment,) = load("deploy/k8s/deployment.yaml")
    assert service["spec"]["ports"][0]["targetPort"] == PORT
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
