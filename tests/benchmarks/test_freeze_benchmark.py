"""The freeze benchmark runs end to end (on the tiny spec: its figures mean nothing, its code paths are the
benchmark's): every configuration asked for is measured and compared with nothing frozen."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "freeze.py"


@pytest.mark.integration
def test_the_benchmark_measures_and_compares_each_configuration(tiny, tmp_path):
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(tiny))
    out = tmp_path / "figures.json"
    done = subprocess.run([sys.executable, str(SCRIPT), "--spec", str(tmp_path / "tiny.yaml"), "--steps", "2",
                           "--warmup", "1", "--only", "both+cache,renaissance-vision", "--profile", "both+cache",
                           "--rate-rounds", "1", "--json", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = {r["config"]: r for r in json.loads(out.read_text())["results"]}
    assert list(results) == ["none", "both+cache", "renaissance-vision"]
    assert results["both+cache"]["cache"]["vision_tower"] == {"hits": 2 * 32, "misses": 0}  # filled beforehand
    assert results["both+cache"]["trainable"] < results["renaissance-vision"]["trainable"] < results["none"]["trainable"]
    assert results["both+cache"]["optimizer_mb"] < results["none"]["optimizer_mb"]
    assert all(r["gflop_per_step"] > 0 and r["step_s"] > 0 for r in results.values())
    assert "| both+cache |" in done.stdout and "both+cache / none:" in done.stdout
    assert "with no tower cost at all" in done.stdout
    shapes = results["none"]["gemm_shapes"]  # the products a step runs, most FLOPs first
    assert shapes and [s["gflop"] for s in shapes] == sorted((s["gflop"] for s in shapes), reverse=True)
    assert "GEMM rate at the model's own shapes" in done.stdout
    ops = results["both+cache"]["ops"]  # profiled: a table of operations, the rest summed in the last row
    assert ops[-1]["op"] == "(the rest)" and any(o["op"] == "aten::addmm" for o in ops) and not results["none"]["ops"]
    assert "both+cache: one step under torch's profiler" in done.stdout
