"""The deployment files wire PostgreSQL in: compose service, k8s Secret, migration Job."""

from __future__ import annotations

from pathlib import Path

import pytest

from timbral.server.config import ENV_NAMES, Config

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[1]


def load(path: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all((ROOT / path).read_text()) if doc]


def test_compose_runs_postgresql_and_points_the_service_at_it():
    (compose,) = load("docker-compose.yml")
    service, postgres = compose["services"]["timbral"], compose["services"]["postgres"]
    assert postgres["image"].startswith("postgres:")
    assert service["environment"]["DATABASE_URL"].startswith("postgresql://timbral:")
    assert service["environment"]["DATABASE_URL"].endswith("@postgres:5432/timbral")
    assert service["depends_on"]["postgres"] == {"condition": "service_healthy"}
    assert "pg_isready" in postgres["healthcheck"]["test"]


def test_k8s_takes_the_database_url_and_ingest_token_from_secrets():
    (deployment,) = load("deploy/k8s/deployment.yaml")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {item["name"]: item for item in container["env"]}
    assert env["DATABASE_URL"]["valueFrom"]["secretKeyRef"]["name"] == "timbral-database"
    assert env["TIMBRAL_INGEST_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "timbral-ingest"
    assert set(env) <= set(ENV_NAMES.values())
    secrets = {doc["metadata"]["name"]: doc for doc in load("deploy/k8s/secret.example.yaml")}
    assert {"timbral-database", "timbral-ingest"} <= set(secrets)
    assert all(doc["kind"] == "Secret" for doc in secrets.values())
    (configmap,) = load("deploy/k8s/configmap.yaml")
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert configmap["data"]["TIMBRAL_MODEL_CACHE_DIR"] in mounts
    url = secrets["timbral-database"]["stringData"]["url"]
    Config.from_env({**configmap["data"], "DATABASE_URL": url,
                     "TIMBRAL_INGEST_TOKEN": secrets["timbral-ingest"]["stringData"]["token"]})


def test_the_migration_job_runs_db_upgrade_with_the_secret():
    (job,) = load("deploy/k8s/migrate-job.yaml")
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["command"][:3] == ["timbral", "db", "upgrade"]
    assert container["env"][0]["valueFrom"]["secretKeyRef"]["name"] == "timbral-database"


def test_the_image_installs_the_postgres_driver():
    assert '".[postgres]"' in (ROOT / "Dockerfile").read_text()
