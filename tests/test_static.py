"""The linter and the type checker, as tests: `./run-tests` (and so CI) fails on any finding.

Both read their configuration from pyproject.toml ([tool.ruff], [tool.mypy]) and run from the
venv the tests run in, over the whole checkout's Python.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: mypy's first run on a cold cache takes about a minute on this machine's two cores.
MYPY_TIMEOUT = 600


def _run(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          check=False)


def test_ruff_finds_nothing() -> None:
    result = _run("ruff", "check", "--no-cache", "src", "tests", "bench", "scripts", timeout=120)
    assert result.returncode == 0, f"ruff check found problems:\n{result.stdout}{result.stderr}"


@pytest.mark.slow
@pytest.mark.timeout(MYPY_TIMEOUT + 30)
def test_mypy_finds_nothing() -> None:
    result = _run("mypy", timeout=MYPY_TIMEOUT)
    assert result.returncode == 0, f"mypy (strict, over src/strongroom) found problems:\n{result.stdout}{result.stderr}"
