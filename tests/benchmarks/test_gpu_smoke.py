"""The GPU smoke script, dry: every spec and override it would train validates for a GPU, every command line
parses, its scripts exist, and the tests that need a GPU collect (so a session that has one can run it as is)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.integration
def test_the_gpu_smoke_script_dry_run_finds_everything_it_would_run(tmp_path):
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_smoke.sh"), "--dry-run", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = [line for line in done.stdout.splitlines() if line.startswith(("PASS", "FAIL"))]
    assert len(lines) >= 15 and all(line.startswith("PASS") for line in lines)
    assert "PASS spec resume:" in done.stdout and "PASS GPU tests collect: " in done.stdout
    assert ", 0 failed in " in done.stdout
