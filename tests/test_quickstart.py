"""The README's first command, as a new user runs it: quickstart trains, serves, answers, stops.

Run as a real process of the installed console script, from an empty directory, with
no Redis and no data: what a fresh machine sees.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SERVING = re.compile(r"Serving on (http://\S+) ")
SMALL = ["--users", "300", "--items", "200", "--interactions", "12000"]


def _command() -> list[str]:
    """The installed ``timbral`` script beside this interpreter, else the module (in-place builds)."""
    script = Path(sys.executable).with_name("timbral")
    return [str(script)] if script.exists() else [sys.executable, "-m", "timbral.cli"]


def _get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.status, response.read()


def test_quickstart_trains_serves_a_real_request_and_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if key not in ("REDIS_URL", "TIMBRAL_MODEL_DIR")}
    env["PYTHONUNBUFFERED"] = "1"
    process = subprocess.Popen(
        [*_command(), "quickstart", "--dir", str(tmp_path / "work"), "--port", "0", *SMALL],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        printed = []
        base = None
        deadline = time.monotonic() + 240
        while base is None and time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            printed.append(line)
            found = SERVING.search(line)
            base = found.group(1) if found else None
        assert base is not None, "quickstart never said where it serves:\n" + "".join(printed)
        assert "Held-out metrics" in "".join(printed)

        user = re.search(r"/api/v1/recommendations/([^?]+)\?k=5", "".join(printed)).group(1)
        for _ in range(200):  # the port is announced just before the server binds it
            try:
                status, body = _get(f"{base}/api/v1/recommendations/{user}?k=5")
                break
            except OSError:
                time.sleep(0.1)
        else:
            pytest.fail("the quickstart server never answered")
        answer = json.loads(body)
        assert status == 200
        assert answer["strategy"] == "nmf" and len(answer["recommendations"]) == 5

        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0, process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()
        process.stderr.close()


def test_quickstart_no_serve_stops_after_training(tmp_path: Path) -> None:
    result = subprocess.run(
        [*_command(), "quickstart", "--dir", str(tmp_path / "work"), "--no-serve", *SMALL],
        cwd=tmp_path, capture_output=True, text=True, timeout=240,
    )
    assert result.returncode == 0, result.stderr
    assert "Serve it later with: timbral serve --model" in result.stdout
    assert (tmp_path / "work" / "model" / "metadata.json").is_file()
