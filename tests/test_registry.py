"""The model registry on a real PostgreSQL: migrations, register, promote, rollback, delete."""

from __future__ import annotations

import threading
from pathlib import Path

import psycopg
import pytest

from timbral.exceptions import ArtifactError, RegistryError
from timbral.recommender import Recommender
from timbral.registry import CHANNEL, Registry, migrations, redact, store


@pytest.fixture
def registry(database_url: str):
    with Registry(database_url) as reg:
        reg.upgrade()
        yield reg


def test_upgrade_applies_every_migration_once_and_records_it(database_url):
    with Registry(database_url) as reg:
        assert [m.version for m in reg.pending_migrations()] == [m.version for m in migrations.available()]
        applied = reg.upgrade()
        assert [m.version for m in applied] == [m.version for m in migrations.available()]
        assert reg.upgrade() == [] and reg.pending_migrations() == []
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT version, name, sha256 FROM timbral_schema_migrations").fetchall()
    assert rows == [(m.version, m.name, m.sha256) for m in migrations.available()]


def test_concurrent_upgrades_apply_each_migration_once(database_url):
    results: list[object] = []

    def run() -> None:
        with Registry(database_url) as reg:
            results.append(len(reg.upgrade()))

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(results) == len(migrations.available())  # each applied once, by whoever got there first
    with psycopg.connect(database_url) as conn:
        versions = [v for (v,) in conn.execute("SELECT version FROM timbral_schema_migrations ORDER BY 1")]
    assert versions == [m.version for m in migrations.available()]


def test_an_edited_or_unknown_applied_migration_is_refused(registry, database_url):
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("UPDATE timbral_schema_migrations SET sha256 = 'x' WHERE version = 1")
    with pytest.raises(RegistryError, match=r"migrations \[1\] were applied from different SQL"):
        registry.upgrade()
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("INSERT INTO timbral_schema_migrations (version, name, sha256) VALUES (9999, 'x', 'y')")
    with pytest.raises(RegistryError, match=r"\[9999\] that this timbral does not ship.*pip install -U"):
        registry.upgrade()


def test_registry_before_upgrade_says_to_run_it(database_url):
    with Registry(database_url) as reg, pytest.raises(RegistryError, match="run `timbral db upgrade`"):
        reg.list()


def test_register_records_metadata_hashes_and_files(registry, model_dir, tmp_path):
    meta = Recommender.load(model_dir).metadata
    v = registry.register(model_dir, lineage={"source": "plays.csv"})
    assert v.version == 1 and v.status == "staged" and v.store == "database"
    assert v.model_version == meta["model_version"]
    assert v.params == meta["params"] and v.data_summary["n_users"] == meta["n_users"]
    assert v.lineage["source"] == "plays.csv" and v.lineage["code_version"]
    assert {name: f["sha256"] for name, f in v.files.items()} == {
        name: store.hash_file(model_dir / name).sha256 for name in ("arrays.npz", "metadata.json")}
    out = registry.download(1, tmp_path / "copy")
    for name in ("arrays.npz", "metadata.json"):
        assert (out / name).read_bytes() == (model_dir / name).read_bytes()
    assert Recommender.load(out).model_version == meta["model_version"]
    with pytest.raises(RegistryError, match="already exists; choose a new directory"):
        registry.download(1, out)


def test_files_are_stored_in_chunks_never_one_bytes_object(registry, model_dir, monkeypatch):
    monkeypatch.setattr(store, "CHUNK_BYTES", 4096)
    registry.register(model_dir)
    with psycopg.connect(registry.url) as conn:
        sizes = conn.execute("SELECT max(length(data)), count(*) FROM timbral_model_chunks "
                             "WHERE name = 'arrays.npz'").fetchone()
    size = (model_dir / "arrays.npz").stat().st_size
    assert sizes == (4096, -(-size // 4096))


def test_a_damaged_directory_never_enters_the_registry(registry, model_dir, tmp_path):
    import shutil

    broken = Path(shutil.copytree(model_dir, tmp_path / "broken"))
    data = bytearray((broken / "arrays.npz").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (broken / "arrays.npz").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="does not match its sha256"):
        registry.register(broken)
    assert registry.list() == []


def test_promote_rollback_and_at_most_one_production(registry, model_dir, other_model_dir):
    for directory in (model_dir, other_model_dir, model_dir):
        registry.register(directory)
    assert registry.production() is None
    with pytest.raises(RegistryError, match="no production model to roll back from"):
        registry.rollback()
    assert registry.promote(1).status == "production"
    with pytest.raises(RegistryError, match="only production model on record"):
        registry.rollback()
    registry.promote(2)
    registry.promote(3)
    statuses = {v.version: v.status for v in registry.list()}
    assert statuses == {1: "archived", 2: "archived", 3: "production"}
    assert registry.rollback().version == 2  # repeated rollbacks walk back, never toggle
    assert registry.rollback().version == 1
    assert registry.production().version == 1
    assert [v.status for v in registry.list()].count("production") == 1
    with psycopg.connect(registry.url) as conn, pytest.raises(psycopg.errors.UniqueViolation):
        conn.execute("UPDATE timbral_model_versions SET status = 'production' WHERE version = 2")


def test_promotion_notifies_at_commit(registry, model_dir, database_url):
    registry.register(model_dir)
    with psycopg.connect(database_url, autocommit=True) as listener:
        listener.execute(f"LISTEN {CHANNEL}")
        registry.promote(1)
        received = [(n.channel, n.payload) for n in listener.notifies(timeout=5, stop_after=1)]
    assert received == [(CHANNEL, "1")]


def test_concurrent_promotions_leave_one_production(registry, model_dir, database_url):
    for _ in range(4):
        registry.register(model_dir)
    errors: list[BaseException] = []

    def promote(version: int) -> None:
        try:
            with Registry(database_url) as reg:
                for _ in range(5):
                    reg.promote(version)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=promote, args=(v,)) for v in (1, 2, 3, 4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert [v.status for v in registry.list()].count("production") == 1


def test_delete_refuses_production_and_removes_files(registry, model_dir):
    registry.register(model_dir)
    registry.register(model_dir)
    registry.promote(1)
    with pytest.raises(RegistryError, match="is in production; promote another version"):
        registry.delete(1)
    registry.delete(2)
    assert [v.version for v in registry.list()] == [1]
    with psycopg.connect(registry.url) as conn:
        assert conn.execute("SELECT count(*) FROM timbral_model_chunks WHERE version = 2").fetchone() == (0,)
    with pytest.raises(RegistryError, match="model version 2 is not in the registry"):
        registry.get(2)


@pytest.mark.parametrize("version", [0, -1, True, "1", 1.5, None])
def test_bad_versions_are_refused(registry, version):
    with pytest.raises(RegistryError, match="model version must be a positive integer"):
        registry.promote(version)


def test_rollback_skips_deleted_versions(registry, model_dir):
    for _ in range(3):
        registry.register(model_dir)
    registry.promote(1)
    registry.promote(2)
    registry.promote(3)
    registry.delete(2)
    assert registry.rollback().version == 1


def test_object_store_keeps_files_outside_and_hashes_inside(database_url, model_dir, tmp_path):
    root = tmp_path / "store"
    with Registry(database_url, model_store=root.as_uri()) as reg:
        reg.upgrade()
        v = reg.register(model_dir)
        assert v.store == root.as_uri()
        assert (root / "v1" / "arrays.npz").read_bytes() == (model_dir / "arrays.npz").read_bytes()
        with psycopg.connect(database_url) as conn:
            assert conn.execute("SELECT count(*) FROM timbral_model_chunks").fetchone() == (0,)
        assert Recommender.load(reg.download(1, tmp_path / "copy")).n_users > 0
        (root / "v1" / "arrays.npz").write_bytes(b"not the model")
        with pytest.raises(RegistryError, match="'arrays.npz' has 13 bytes .* the stored copy is damaged"):
            reg.download(1, tmp_path / "again")
        assert not (tmp_path / "again").exists()
        reg.register(model_dir)
        reg.promote(2)
        reg.delete(1)
        assert not (root / "v1").exists()


def test_a_corrupted_chunk_is_refused_on_download(registry, model_dir, tmp_path):
    registry.register(model_dir)
    with psycopg.connect(registry.url) as conn:
        conn.execute("UPDATE timbral_model_chunks SET data = overlay(data placing '\\x00'::bytea from 100) "
                     "WHERE name = 'arrays.npz' AND seq = 0")
    with pytest.raises(RegistryError, match="'arrays.npz' has .* the stored copy is damaged"):
        registry.download(1, tmp_path / "copy")
    assert not (tmp_path / "copy").exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("url", ["sqlite:///x.db", "", "http://host/db"])
def test_only_postgresql_urls_are_accepted(url):
    with pytest.raises(RegistryError, match="is not a PostgreSQL URL; expected postgresql://"):
        Registry(url)


def test_connection_errors_never_echo_the_password():
    url = "postgresql://app:s3cret-pass@127.0.0.1:1/db"
    with pytest.raises(RegistryError, match=r"cannot connect to the database at "
                       r"postgresql://<redacted>@127.0.0.1:1/db") as caught:
        Registry(url)
    assert "s3cret" not in str(caught.value)
    assert redact("postgresql://h/db") == "postgresql://h/db"
    # One redaction for the library and the service: the query-string password and
    # unparseable URLs too (timbral.registry's own copy printed both).
    assert redact("postgresql://h/db?user=u&password=s3cret") == "postgresql://h/db?user=u&password=<redacted>"
    assert redact("postgresql://u:s3cret@[::1/db") == "postgresql://<redacted>@[::1/db"


def test_a_bad_model_store_is_refused(database_url):
    with pytest.raises(RegistryError, match="model store 'models' is not a URL; expected file:///"):
        Registry(database_url, model_store="models")
