"""The service installs as ``timbral.server``: one top-level name in site-packages."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import subprocess
import sys
from pathlib import PurePosixPath

import pytest
from server_support import ROOT

INSTALLED = os.environ.get("TIMBRAL_TEST_INSTALLED") == "1"


def test_the_distribution_adds_exactly_one_top_level_name():
    if not INSTALLED:
        pytest.skip("reads the installed wheel's RECORD; an editable install records a path "
                    "hook instead (scripts/test sets TIMBRAL_TEST_INSTALLED=1)")
    files = importlib.metadata.distribution("timbral").files
    top = {PurePosixPath(str(f)).parts[0] for f in files}
    top = {name for name in top if name != ".." and not name.endswith(".dist-info")}  # scripts
    assert top == {"timbral"}
    assert any(str(f) == "timbral/server/openapi.json" for f in files)
    assert importlib.util.find_spec("server") is None


def test_the_service_entry_point_is_timbral_server_and_its_usage_points_at_the_readme():
    cwd = None if INSTALLED else ROOT
    result = subprocess.run([sys.executable, "-m", "timbral.server", "--help"], cwd=cwd,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.startswith("usage: python -m timbral.server")
    assert "README" in result.stderr

