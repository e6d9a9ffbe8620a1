"""`timbral db`, `timbral models` and `timbral train --register` against a real PostgreSQL."""

from __future__ import annotations

import json

import pytest
from cli_support import generated_plays_csv

from timbral.cli import main

FAST = ["--components", "6", "--iterations", "4", "--threads", "1", "--no-eval"]


@pytest.fixture(scope="module")
def plays(tmp_path_factory):
    return generated_plays_csv(tmp_path_factory.mktemp("data"))


def run_json(capsys, *argv: str):
    assert main([*argv, "--json"]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def test_the_whole_loop_from_the_command_line(plays, database_url, monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("DATABASE_URL", database_url)
    assert run_json(capsys, "db", "upgrade") == {"applied": ["0001_model_registry", "0002_interactions"]}
    assert run_json(capsys, "db", "upgrade") == {"applied": []}
    assert run_json(capsys, "db", "status") == [{"migration": "0001_model_registry", "applied": True},
                                                {"migration": "0002_interactions", "applied": True}]
    assert main(["train", str(plays), "--register", *FAST]) == 0
    assert "Registered as model version 1 (staged); promote it with `timbral models promote 1`" in \
        capsys.readouterr().out
    summary = run_json(capsys, "train", str(plays), "--register", "-o", str(tmp_path / "m"), *FAST)
    assert summary["registry_version"] == 2 and summary["path"] == str(tmp_path / "m")

    listed = run_json(capsys, "models", "list")
    assert [v["version"] for v in listed] == [2, 1]
    assert {"version", "status", "created_at", "metrics"} <= set(listed[0])
    assert {v["status"] for v in listed} == {"staged"}
    assert listed[0]["lineage"]["source"] == str(plays)
    assert run_json(capsys, "models", "promote", "1")["status"] == "production"
    assert run_json(capsys, "models", "promote", "2")["status"] == "production"
    assert run_json(capsys, "models", "rollback")["version"] == 1
    shown = run_json(capsys, "models", "show", "2")
    assert shown["status"] == "archived" and set(shown["files"]) == {"arrays.npz", "metadata.json"}
    assert main(["models", "show", "2"]) == 0
    assert "Model version 2 (archived)" in capsys.readouterr().out
    assert main(["models", "list"]) == 0
    assert capsys.readouterr().out.splitlines()[1].split()[:2] == ["1", "production"]
    assert run_json(capsys, "models", "delete", "2")["action"] == "delete"
    assert [v["version"] for v in run_json(capsys, "models", "list")] == [1]


@pytest.mark.parametrize(("argv", "message"), [
    (["models", "promote", "0"], "expected a model version number"),
    (["models", "show", "x"], "expected a model version number"),
    (["models"], "required"),
    (["db"], "required"),
])
def test_bad_usage_exits_2(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_errors_are_one_line_and_name_the_fix(database_url, monkeypatch, capsys, plays):
    monkeypatch.delenv("DATABASE_URL", raising=False)
    assert main(["models", "list"]) == 2
    assert "no registry database: set DATABASE_URL or pass --database-url" in capsys.readouterr().err
    assert main(["train", str(plays), *FAST]) == 2
    assert "train needs --output DIR, --register, or both" in capsys.readouterr().err
    assert main(["models", "list", "--database-url", database_url]) == 2
    assert "run `timbral db upgrade` first" in capsys.readouterr().err
    assert main(["db", "upgrade", "--database-url", database_url]) == 0
    capsys.readouterr()
    assert main(["models", "promote", "7", "--database-url", database_url]) == 2
    err = capsys.readouterr().err
    assert err.startswith("timbral: error: model version 7 is not in the registry") and "Traceback" not in err
    secret = "postgresql://app:hunter2-secret@127.0.0.1:1/db"
    assert main(["models", "list", "--database-url", secret]) == 2
    err = capsys.readouterr().err
    assert "hunter2" not in err and "postgresql://<redacted>@127.0.0.1:1/db" in err
    assert main(["models", "list", "--database-url", "postgresql://127.0.0.1:1/db?user=app&password=hunter2"]) == 2
    err = capsys.readouterr().err  # libpq takes a password in the query string too
    assert "hunter2" not in err and "password=<redacted>" in err
