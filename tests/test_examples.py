"""The examples in examples/ run as written (against the installed package)."""

import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_python_api_example_runs_end_to_end(tmp_path):
    result = subprocess.run(
        [sys.executable, "-W", "error", str(EXAMPLES / "python_api.py"), str(tmp_path / "work")],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "held-out ranking:" in result.stdout
    assert "(nmf)" in result.stdout and "why the first:" in result.stdout
    assert (tmp_path / "work" / "model" / "metadata.json").is_file()
