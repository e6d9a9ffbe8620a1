"""Log lines for people on a terminal, JSON lines for machines (``--log-format``, ``LOG_FORMAT``)."""

from __future__ import annotations

import io
import json
import logging

import pytest

from timbral.cli import main
from timbral.exceptions import ValidationError
from timbral.logs import configure_logging


def _emit(log_format: str) -> str:
    stream = io.StringIO()
    handler = configure_logging("INFO", stream, log_format=log_format)
    try:
        logging.getLogger("timbral.test").info("fitted model", extra={"n_iter": 15, "path": "a b"})
    finally:
        logging.getLogger().removeHandler(handler)
    return stream.getvalue()


def test_text_lines_are_short_and_carry_the_fields_as_key_value() -> None:
    line = _emit("text").strip()
    assert "INFO" in line and "fitted model" in line and "n_iter=15" in line and "path='a b'" in line
    with pytest.raises(ValueError):
        json.loads(line)


def test_json_lines_carry_the_service_and_the_fields() -> None:
    entry = json.loads(_emit("json"))
    assert entry["service"] == "timbral-ml" and entry["message"] == "fitted model" and entry["n_iter"] == 15


def test_an_unknown_format_is_refused_with_the_choices() -> None:
    with pytest.raises(ValidationError, match="log_format must be one of json, text; got 'xml'"):
        configure_logging("INFO", io.StringIO(), log_format="xml")


def test_cli_log_format_follows_the_flag_then_the_environment(tmp_path, capsys, monkeypatch) -> None:
    out = tmp_path / "plays.csv"
    assert main(["--log-level", "INFO", "--log-format", "text", "generate", str(out), "--users", "20",
                 "--items", "10", "--interactions", "100"]) == 0
    monkeypatch.setenv("LOG_FORMAT", "yaml")
    assert main(["generate", str(out), "--users", "20", "--items", "10", "--interactions", "100"]) == 2
    assert "LOG_FORMAT" in capsys.readouterr().err
