"""Frozen towers outside the engine: the placement plan `graphspec compile` prints, bf16 towers, weights
streamed per layer, and the disk cache of their outputs (reused across runs, keyed by weights and inputs)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from graphspec.compiler import build_model
from graphspec.cli import main
from graphspec.runtime.train import run
from graphspec.runtime.tower_cache import TowerCache
from graphspec.runtime.towers import LayerStream

from .plans import distinct_images


def _compile(spec_data, write_spec, tmp_path, capsys, *overrides):
    args = ["compile", str(write_spec(spec_data)), "-o", str(tmp_path / "build")]
    for o in overrides:
        args += ["--set", o]
    assert main(args) == 0
    return capsys.readouterr()


def test_compile_prints_where_every_node_runs(train_spec, write_spec, tmp_path, capsys):
    train_spec["nodes"]["vision_tower"]["freeze"] = True  # input-side: outside
    train_spec["nodes"]["text_tower"]["freeze"] = True  # outside too, but MLM masks its input
    train_spec["nodes"]["fusion"]["freeze"] = {"layers": "0:1"}  # partly frozen, in the engine
    train_spec["nodes"]["pooled"]["freeze"] = True  # frozen whole, but reads fusion: in the engine
    out = _compile(train_spec, write_spec, tmp_path, capsys, "distributed.zero_stage=3",
                   "distributed.world_size=2", "distributed.frozen.dtype=bf16",
                   "distributed.frozen.cache_outputs=true").out
    plan = out[out.index("placement (ZeRO-3, 2 ranks"):]
    lines = {line.split()[0]: line for line in plan.splitlines()[1:] if line.startswith("  ")}
    assert "outside the engine: replicated, no_grad, eval, bf16" in lines["vision_tower"]
    assert lines["vision_tower"].endswith("outputs cached")
    assert "outputs not cached: it reads 'text', which MLM masks anew every step" in lines["text_tower"]
    assert "partly frozen, in the engine" in lines["fusion"]
    assert "frozen, in the engine (reads other nodes' outputs)" in lines["pooled"]
    assert "sharded by ZeRO-3" in lines["pooled"]

    summary = json.loads((tmp_path / "build" / "summary.json").read_text())
    params = summary["params"]
    outside = params["vision_tower"]["total"] + params["text_tower"]["total"]
    inside = params["total"]["total"] - outside
    # ZeRO-3 halves what is in the engine over 2 ranks; the outside towers are whole on each, at 2 bytes
    assert summary["memory_per_rank"]["zero_3"]["weights"] == inside * 4 // 2 + outside * 2


def test_frozen_settings_that_act_on_nothing_are_warned_about(train_spec, write_spec, tmp_path, capsys):
    err = _compile(train_spec, write_spec, tmp_path, capsys, "distributed.frozen.cache_outputs=true").err
    assert "no tower is frozen whole and reads only model inputs" in err
    train_spec["nodes"]["vision_tower"]["freeze"] = True
    err = _compile(train_spec, write_spec, tmp_path, capsys, "distributed.accelerator=cpu",
                   "distributed.frozen.offload=cpu").err
    assert "with accelerator: cpu nothing moves" in err
    train_spec["nodes"]["vision_tower"]["freeze"] = False
    train_spec["nodes"]["text_tower"]["freeze"] = True
    err = _compile(train_spec, write_spec, tmp_path, capsys, "distributed.frozen.cache_outputs=true").err
    assert "no output is cached: text_tower is not cacheable" in err


def _losses(run_dir) -> list[float]:
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
            if "loss" in line and '"split"' not in line]


def test_cached_outputs_are_reused_by_a_later_run_and_change_with_the_weights(train_spec, compile_build, tmp_path):
    train_spec["nodes"]["vision_tower"]["freeze"] = True
    train_spec["train"].update(steps=12, log_every=1, val_every=None)
    cache = f"distributed.frozen.cache_dir={tmp_path / 'cache'}"
    build = compile_build(train_spec)
    plain = run(build, tmp_path / "plain", show_bar=False)
    reads = distinct_images(build.spec, 8, 12)  # a scene drawn twice in a batch is read (or looked up) once
    first = run(compile_build(train_spec, ["distributed.frozen.cache_outputs=true", cache]), tmp_path / "first",
                show_bar=False)
    again = run(compile_build(train_spec, ["distributed.frozen.cache_outputs=true", cache]), tmp_path / "again",
                show_bar=False)
    a, b = first["frozen_cache"]["vision_tower"], again["frozen_cache"]["vision_tower"]
    stored = [f for f in (tmp_path / "cache").rglob("*.safetensors")]
    assert 0 < a["entries"] == len(stored) <= a["misses"]  # a file per distinct sample (one drawn twice: one file)
    assert a["size_mb"] == round(sum(f.stat().st_size for f in stored) / 2**20, 1)
    assert b["misses"] == 0 and b["hits"] == a["hits"] + a["misses"] and b["entries"] == a["entries"]
    # a hit is found by the worker before any image is read: the second run decoded (rendered) none
    assert again["data"]["train_reads"]["images_decoded"] == 0
    assert again["data"]["train_reads"]["decodes_saved"] == reads  # every training image
    assert first["data"]["train_reads"]["decodes_saved"] + first["data"]["train_reads"]["images_decoded"] == reads
    assert _losses(tmp_path / "plain") == _losses(tmp_path / "first") == _losses(tmp_path / "again")
    assert "frozen_cache" not in plain
    other = run(compile_build(train_spec, ["distributed.frozen.cache_outputs=true", cache, "train.seed=1"]),
                tmp_path / "other", show_bar=False)  # other random weights: another key, nothing reused
    c = other["frozen_cache"]["vision_tower"]
    assert c["dir"] != a["dir"] and c["hits"] <= c["misses"]  # hits only where an image repeats within a batch
    cut, altered = stored[:2]  # damage two entries: one cut short, one with a flipped byte and its size kept
    cut.write_bytes(cut.read_bytes()[:40])
    data = bytearray(altered.read_bytes())
    data[-3] ^= 0xFF
    altered.write_bytes(bytes(data))
    (Path(a["dir"]) / "structure.json").write_text("{not json")
    third = run(compile_build(train_spec, ["distributed.frozen.cache_outputs=true", cache]), tmp_path / "third",
                show_bar=False)["frozen_cache"]["vision_tower"]
    assert third["corrupt"] == 2 and third["misses"] >= 2 and third["entries"] == a["entries"]
    assert _losses(tmp_path / "third") == _losses(tmp_path / "plain")  # recomputed, never used


def test_a_cached_row_is_keyed_by_its_inputs_and_read_back_exactly(tmp_path):
    torch.manual_seed(0)
    tower = nn.Linear(6, 4)

    def run_tower(x, mask):
        return {"seq": (tower(x), mask)}

    cache = TowerCache(tmp_path, "t", "abc", "fp32")
    x, mask = torch.randn(5, 3, 6), torch.ones(5, 3, dtype=torch.bool)
    fresh = run_tower(x, mask)
    first = cache.outputs(run_tower, [x, mask])
    second = cache.outputs(run_tower, [x, mask])
    assert (cache.hits, cache.misses) == (5, 5)
    for got in (first, second):
        assert torch.equal(got["seq"][0], fresh["seq"][0]) and torch.equal(got["seq"][1], mask)
    changed = x.clone()
    changed[2, 0, 0] += 1e-3  # one input value of one sample: only that row is computed again
    cache.outputs(run_tower, [changed, mask])
    assert (cache.hits, cache.misses) == (9, 6)
    assert TowerCache(tmp_path, "t", "abd", "fp32").dir != cache.dir  # other weights, another folder
    assert TowerCache(tmp_path, "t", "abc", "bf16").dir != cache.dir


def test_bf16_towers_train_close_to_fp32(train_spec, compile_build, tmp_path):
    train_spec["nodes"]["vision_tower"]["freeze"] = True
    train_spec["train"].update(steps=12, log_every=1, val_every=None)
    run(compile_build(train_spec), tmp_path / "fp32", show_bar=False)
    run(compile_build(train_spec, ["distributed.frozen.dtype=bf16"]), tmp_path / "bf16", show_bar=False)
    fp32, bf16 = _losses(tmp_path / "fp32"), _losses(tmp_path / "bf16")
    assert fp32 != bf16  # the tower really ran in bf16
    assert bf16 == pytest.approx(fp32, rel=0.01)  # measured: at most 0.02% apart over 12 steps


def test_layers_visit_the_device_one_at_a_time(train_spec, compile_build):
    """On the meta device as the 'accelerator': while a layer computes, it alone of the stack is in place, and
    the next layer's copy is on its way (made before the layer computes, put in place when it begins)."""
    train_spec["nodes"]["vision_tower"]["freeze"] = True
    model, _ = build_model(compile_build(train_spec).spec)
    tower = model.get_submodule("vision_tower")
    before = {n: p.detach().clone() for n, p in tower.named_parameters()}
    stream = LayerStream(tower, torch.device("meta"))
    seen = []
    for i, layer in enumerate(stream.layers):
        layer.register_forward_hook(lambda m, a, o, i=i: seen.append(  # before the stream drops the layer
            (i, [j for j, other in enumerate(stream.layers) if next(other.parameters()).is_meta],
             tower.model.patch_embed.proj.weight.is_meta, sorted(stream.ready))), prepend=True)
    with torch.no_grad():
        out = tower(torch.zeros(2, 3, 32, 32, device="meta"))
    assert out["seq"][0].is_meta and len(stream.layers) == 2
    # the embeddings stay for the whole tower forward; while layer 0 computes, layer 1's copy is ready
    assert seen == [(0, [0], True, [1]), (1, [1], True, [])]
    assert not stream.ready  # nothing held once the forward is over
    after = dict(tower.named_parameters())
    assert all(not p.is_meta and torch.equal(p, before[n]) for n, p in after.items())  # back in CPU memory
