"""Fixtures of the deployment checks: the operators' own tools, found where deploy/ensure-tools.sh
puts them (`make test` runs it first). A missing tool fails the test, naming how to get it."""
from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
PROMETHEUS_BIN = ROOT / "var" / "tools" / "prometheus" / "usr" / "bin"
VENV_BIN = pathlib.Path(sys.executable).parent


def tool(name: str, *candidates: pathlib.Path) -> str:
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which(name)
    if found:
        return found
    pytest.fail(f"{name} is missing: run deploy/ensure-tools.sh (make test does)", pytrace=False)


def run(*command: str, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    """Run a tool; its output is in the failure message when it fails."""
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, **kwargs)
    assert done.returncode == 0, f"{' '.join(command)}: exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="session")
def promtool() -> str:
    return tool("promtool", PROMETHEUS_BIN / "promtool")


@pytest.fixture(scope="session")
def prometheus_server() -> str:
    return tool("prometheus", PROMETHEUS_BIN / "prometheus")


@pytest.fixture(scope="session")
def kubectl() -> str:
    return tool("kubectl", VENV_BIN / "kubectl")
