"""The examples in examples/ run as written (against the installed package)."""

import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from ipykernel.kernelspec import write_kernel_spec
from nbclient import NotebookClient

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


@pytest.mark.slow
def test_quickstart_notebook_runs_top_to_bottom(tmp_path, monkeypatch):
    """The notebook a data scientist opens first, run as they would (a fresh kernel, its
    working directory elsewhere), against the installed package, within a time limit."""
    notebook = nbformat.read(EXAMPLES / "quickstart.ipynb", as_version=4)
    assert all(not cell.get("outputs") and cell.get("execution_count") is None
               for cell in notebook.cells if cell.cell_type == "code"), "commit it with outputs stripped"
    # A kernel on this interpreter: a kernelspec named python3 elsewhere may be another Python.
    write_kernel_spec(tmp_path / "kernels" / "timbral-test")
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path))
    client = NotebookClient(notebook, timeout=120, kernel_name="timbral-test",
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError, with the cell and its traceback, on any error

    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    text = "".join(output.get("text", "") for output in outputs)
    assert "rows read" in text.lower()
    assert any("image/png" in output.get("data", {}) for output in outputs), "no figure was drawn"
    assert "strategy: fold_in" in text
    assert "service: ok" in text
    assert "same answer as in the notebook: True" in text
    assert "service stopped, exit code 0" in text
