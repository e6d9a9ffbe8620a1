"""The `timbral` command end to end on generated data, its errors, and JSON logging."""

from __future__ import annotations

import io
import json
import logging

import pytest
from cli_support import generated_plays_csv

from timbral.cli import main
from timbral.logs import configure_logging
from timbral.recommender import Recommender

FAST = ["--components", "6", "--iterations", "4", "--threads", "1"]


@pytest.fixture(scope="module")
def plays(tmp_path_factory):
    return generated_plays_csv(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def model_dir(plays, tmp_path_factory):
    out = tmp_path_factory.mktemp("models") / "model"
    assert main(["train", str(plays), "--output", str(out), *FAST]) == 0
    return out


def test_generate_prints_what_it_wrote(tmp_path, capsys):
    path = tmp_path / "plays.parquet"
    assert main(["generate", str(path), "--users", "50", "--items", "30", "--interactions", "500"]) == 0
    out = capsys.readouterr().out
    assert "Wrote 500 interactions (50 users × 30 items, seed 0)" in out and path.exists()


def test_train_writes_a_loadable_model(model_dir, capsys):
    rec = Recommender.load(model_dir)
    assert rec.n_users == 150 and rec.n_items == 80
    assert rec.metadata["evaluation"]["final_model"] == "refitted on all data"
    assert set(rec.metadata["metrics"]) >= {"precision@10", "ndcg@10"}
    assert rec.metadata["data"]["rows_read"] == 3000


def test_train_json(plays, tmp_path, capsys):
    assert main(["train", str(plays), "-o", str(tmp_path / "m"), "--json", "--no-eval", *FAST]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["path"] == str(tmp_path / "m") and summary["metrics"] == {}
    assert summary["n_components"] == 6 and summary["n_iter"] <= 4


def test_recommend(model_dir, capsys):
    assert main(["recommend", str(model_dir), "7", "-k", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("Top 3 for user 7, model ") and len(lines) == 4
    assert main(["recommend", str(model_dir), "7", "-k", "3", "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["user_id"] == 7 and answer["strategy"] == "nmf" and len(answer["recommendations"]) == 3
    assert main(["recommend", str(model_dir), "nobody", "-k", "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["strategy"] == "popularity"


def test_evaluate_json(plays, capsys):
    assert main(["evaluate", str(plays), "--json", "-k", "5", "--test-fraction", "0.25", *FAST]) == 0
    report = json.loads(capsys.readouterr().out)
    assert "precision@5" in report["metrics"] and "ndcg@5" in report["metrics"]
    assert all(0.0 <= v <= 1.0 for v in report["metrics"].values())
    assert report["evaluation"]["test_fraction"] == 0.25
    assert report["params"]["n_components"] == 6
    assert report["data"]["rows_read"] == 3000


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "the following arguments are required: COMMAND (see `timbral --help`)"),
        (["train", "DATA"], "train needs --output DIR, --register, or both (see `timbral train --help`)"),
        (["train", "x.csv", "-o", "m", "--components", "0"],
         "argument --components: expected a positive integer, got '0'"),
        (["evaluate", "x.csv", "--test-fraction", "1.5"], "expected a number strictly between 0 and 1, got '1.5'"),
        (["recommend", "m", "u", "-k", "many"], "argument -k: expected a positive integer, got 'many'"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
    ],
)
def test_bad_usage_exits_2_with_one_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("timbral: error: ") and message in err and err.count("\n") == 1


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "{tmp}/missing.csv", "-o", "{tmp}/m"], "missing.csv"),
        (["recommend", "{tmp}/nowhere", "1"], "does not exist or is not a directory"),
        (["generate", "{tmp}/plays.xlsx"], "use a .parquet, .csv or .tsv extension"),
        (["serve", "--model", "{tmp}/nowhere"], "is not a directory; pass the --output of `timbral train`"),
    ],
)
def test_bad_input_exits_2_without_traceback(argv, message, tmp_path, capsys):
    assert main([a.replace("{tmp}", str(tmp_path)) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("timbral: error: ") and message in err
    assert "Traceback" not in err and err.count("\n") == 1


def test_damaged_model_is_a_user_error(model_dir, tmp_path, capsys):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "metadata.json").write_text("{}")
    (broken / "arrays.npz").write_bytes(b"")
    assert main(["recommend", str(broken), "1"]) == 2
    assert "format_version" in capsys.readouterr().err


def test_quickstart_without_serving(tmp_path, capsys):
    argv = ["quickstart", "--dir", str(tmp_path), "--users", "120", "--items", "60",
            "--interactions", "2400", "--no-serve", *FAST]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "1. Generated 2,400 plays" in out and "/api/v1/recommendations/" in out
    assert f"timbral serve --model {tmp_path / 'model'}" in out
    assert Recommender.load(tmp_path / "model").n_items == 60


def test_json_logging_fields():
    stream = io.StringIO()
    handler = configure_logging("INFO", stream)
    try:
        logging.getLogger("timbral.test").info("fitted", extra={"n_iter": 3, "seconds": 0.5})
        logging.getLogger("timbral.test").debug("hidden")
    finally:
        logging.getLogger().removeHandler(handler)
    (line,) = stream.getvalue().splitlines()
    entry = json.loads(line)
    assert entry["service"] == "timbral-ml" and entry["level"] == "INFO" and entry["message"] == "fitted"
    assert entry["n_iter"] == 3 and entry["seconds"] == 0.5
    assert entry["timestamp"].endswith("Z") and "T" in entry["timestamp"]


def test_training_defaults_come_from_the_service_environment(plays, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NMF_N_COMPONENTS", "7")
    monkeypatch.setenv("NMF_RANDOM_STATE", "3")
    out = tmp_path / "env-model"
    quick = ["--iterations", "4", "--threads", "1"]
    assert main(["train", str(plays), "--output", str(out), "--no-eval", *quick]) == 0
    metadata = json.loads((out / "metadata.json").read_text())
    assert metadata["params"]["n_components"] == 7 and metadata["params"]["random_state"] == 3
    monkeypatch.setenv("NMF_N_COMPONENTS", "many")
    assert main(["train", str(plays), "--output", str(out), *quick]) == 2
    assert "NMF_N_COMPONENTS: expected a positive integer, got 'many'" in capsys.readouterr().err
