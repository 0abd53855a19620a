"""Model-state bytes `graphspec cost` predicts per rank (weights, gradients kept, fp32 partitions, optimizer
state, buffers, buckets: graphspec.cost.memory) are the tensor bytes DeepSpeed's engine holds after a step, within
1%, at ZeRO 0-3, on one rank and on two (each rank its own process, as a run's)."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import TINY

SCRIPT = Path(__file__).with_name("engine_bytes.py")


def _spec(tmp_path: Path) -> Path:
    data = copy.deepcopy(TINY)
    data["data"] = {"train": {"samples": 32}}
    data["nodes"]["text_tower"]["size"]["vocab_size"] = 128
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _engines(tmp_path: Path, world: int, precision: str, freeze: str) -> list[dict]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT",
                                                             "MASTER_ADDR")}
    head = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(world)] if world > 1 else \
        [sys.executable]
    done = subprocess.run([*head, str(SCRIPT), "0,1,2,3", precision, freeze, str(_spec(tmp_path))],
                          capture_output=True, text=True, env={**env, "OMP_NUM_THREADS": "1"}, timeout=600,
                          cwd=Path(__file__).resolve().parents[2])
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert done.returncode == 0 and len(rows) == 4 * world, done.stdout[-2000:] + done.stderr[-4000:]
    return rows


@pytest.mark.parametrize("world, precision, freeze", [(1, "fp32", "text_tower"), (2, "bf16", "vision_tower")],
                         ids=["1 rank fp32 text frozen", "2 ranks bf16 vision frozen outside"])
def test_model_state_bytes_are_the_engines(tmp_path, world, precision, freeze):
    for row in _engines(tmp_path, world, precision, freeze):
        assert row["predicted"] == pytest.approx(row["measured"], rel=0.01), row
