"""A run's peak memory is its own: on Linux getrusage's ru_maxrss survives exec, so a process started from a
large one (a study's stage, a calibration's probe run) would report its parent's size."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM is Linux's")
def test_a_child_of_a_large_process_reports_its_own_peak():
    held = torch.ones(400 * 2**20 // 4)  # 400 MiB resident in this process when the child starts
    held += 1
    code = ("import resource; from graphspec.runtime.train import _peak_rss_mb; "
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, _peak_rss_mb())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    inherited, own = float(out[0]), float(out[1])
    assert inherited > 400  # what ru_maxrss says: the parent's pages at the fork
    assert own < inherited - 200, (own, inherited)
    del held
