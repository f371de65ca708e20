"""The bounded fuzzing run of CI: each target of tests/fuzz/targets.py under atheris for a fixed number
of inputs (the long run, 10^6 inputs each, is in docs/fuzzing.md). A finding fails the test with the
input's traceback; the runner writes the input to crash-<sha1> in the test's directory."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fuzz.targets import TARGETS

ROOT = Path(__file__).resolve().parents[2]
#: Inputs per target in CI: seconds each (agent-calls, the slowest, ~2,500 inputs/s).
RUNS = {"node-frames": 50_000, "node-args": 50_000, "agent-frames": 50_000, "agent-calls": 20_000}


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_fuzz_target_survives_a_bounded_run(target: str, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tests.fuzz.run", target, f"-runs={RUNS[target]}", "-max_len=4096", "-seed=14",
         "-timeout=20", f"-artifact_prefix={tmp_path}/"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    done = re.search(r"Done (\d+) runs in (\d+) second", output)
    assert done is not None and int(done.group(1)) == RUNS[target], output[-2000:]
    coverage = re.findall(r"cov: (\d+)", output)
    print(f"\n{target}: {done.group(1)} inputs in {done.group(2)} s, coverage {coverage[-1]} edges, no finding")
