"""A client's malformed HTTP is the client's problem: aiohttp's parser answers 400, and
the log says so in one JSON line at WARNING, without a traceback; real server errors
on the same logger keep their ERROR and traceback."""

from __future__ import annotations

import json
import logging
import socket
import time

import pytest
from aiohttp.http_exceptions import BadHttpMessage, InvalidHeader
from server_support import ServerProcess

from timbral.server.app import ClientErrorFilter, quiet_client_errors

SECRET = "s3cret-bearer-value"


def _raw_request(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def _parser_lines(server: ServerProcess, count: int, within: float = 10.0) -> list[dict]:
    deadline = time.monotonic() + within
    while True:
        lines = [json.loads(line) for line in server.output().splitlines()
                 if line.startswith("{") and '"aiohttp.server"' in line]
        if len(lines) >= count or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


def test_a_nul_in_a_header_is_a_400_logged_in_one_line_without_traceback(model_dir, tmp_path):
    env = {"TIMBRAL_MODEL_DIR": str(model_dir), "LOG_LEVEL": "INFO"}
    with ServerProcess(tmp_path, env) as server:
        requests = [b"GET /ping HTTP/1.1\r\nHost: x\r\nX-Trace: a\x00b\r\n\r\n",
                    f"GET /ping HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {SECRET}\x00\r\n\r\n".encode()]
        answers = [_raw_request(server.port, request) for request in requests]
        lines = _parser_lines(server, len(requests))
        output = server.output()
        ping = _raw_request(server.port, b"GET /ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert [answer.split(b"\r\n", 1)[0].split(b" ", 1)[1] for answer in answers] == [b"400 Bad Request"] * 2
    assert ping.startswith(b"HTTP/1.1 200")  # the service carries on
    assert len(lines) == 2, output
    for line in lines:
        assert line["level"] == "WARNING" and line["service"] == "timbral-ml"
        assert line["message"] == "refused a malformed HTTP request (answered 400)"
        assert line["error"] in ("BadHttpMessage", "InvalidHeader") and line["reason"]
        assert "exception" not in line
    assert "Traceback" not in output and SECRET not in output
    assert not any('"level": "ERROR"' in line or '"level":"ERROR"' in line for line in output.splitlines())


@pytest.fixture
def records():
    """What the ``aiohttp.server`` logger lets through, with the filter installed."""
    quiet_client_errors()
    quiet_client_errors()  # idempotent: one filter however many apps are built
    logger = logging.getLogger("aiohttp.server")
    assert sum(isinstance(f, ClientErrorFilter) for f in logger.filters) == 1
    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    handler, level = Keep(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield seen
    logger.removeHandler(handler)
    logger.setLevel(level)


def test_real_server_errors_keep_their_error_level_and_traceback(records):
    logger = logging.getLogger("aiohttp.server")
    for error in (RuntimeError("handler bug"), InvalidHeader(b"X-Bad"), BadHttpMessage("Bad header")):
        logger.exception("Error handling request from %s", "127.0.0.1", exc_info=error)
    bug, header, message = records
    assert (bug.levelname, bug.exc_info[0], bug.getMessage()) == (
        "ERROR", RuntimeError, "Error handling request from 127.0.0.1")
    for record in (header, message):
        assert record.levelname == "WARNING" and record.exc_info is None
    assert header.error == "InvalidHeader" and message.reason == "Bad header"


def test_quieter_records_are_left_as_they_are(records):
    logging.getLogger("aiohttp.server").setLevel(logging.DEBUG)
    logging.getLogger("aiohttp.server").debug("Error handling request from %s", "127.0.0.1",
                                              exc_info=BadHttpMessage("not HTTP"))
    assert [(record.levelname, record.exc_info[0]) for record in records] == [("DEBUG", BadHttpMessage)]


def test_demoted_lines_respect_the_configured_level(records):
    logger = logging.getLogger("aiohttp.server")
    logger.setLevel(logging.ERROR)
    logger.exception("Error handling request from %s", "127.0.0.1", exc_info=BadHttpMessage("Bad header"))
    logger.exception("Error handling request from %s", "127.0.0.1", exc_info=RuntimeError("bug"))
    assert [record.levelname for record in records] == ["ERROR"]
