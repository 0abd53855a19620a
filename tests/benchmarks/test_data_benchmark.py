"""The input-pipeline benchmark's own parts work (its full run, 14 trainings, is too long for the tests): the
tables and shards it writes are read by graphspec's readers, and its loader and shard measurements run."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "data.py"


def _benchmark():
    spec = importlib.util.spec_from_file_location("data_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_benchmark_data_reads_and_its_measurements_run(tmp_path):
    from graphspec.runtime.data.arrow import read_arrow

    bench = _benchmark()
    size = bench.write_table(tmp_path / "table", 8)
    assert size > 8 * 20_000  # 640x480 JPEGs of photographs, not blank ones
    rows = list(read_arrow(tmp_path / "table", "coco_caption_karpathy", "train", refs=True))
    assert len(rows) == 16  # two captions an image
    array, original = rows[0]["image"].load(224)
    assert original == (640, 480) and array.shape[2] == 3

    bench.write_shards(tmp_path / "shards", 8, per_shard=4)
    assert sorted(p.name for p in (tmp_path / "shards").iterdir()) == ["00000.tar", "00001.tar"]
    assert bench.shard_rate(f"{tmp_path / 'shards'}/*.tar", 6) > 0

    assert bench.loader_rate(f"arrow:{tmp_path / 'table'}", 0, 1) > 0
