"""`graphspec cost`, `graphspec calibrate --from` and the prediction a run sets beside what it measured; the
meta-device step's known values (Shadows) and what activation checkpointing changes in the count."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import graphspec
from graphspec.cli import main
from graphspec.compiler.pipeline import build_weights, compile_spec
from graphspec.compiler.placement import frozen_dtype
from graphspec.cost import machine
from graphspec.cost.predict import estimate
from graphspec.cost.sample import sample_batch
from graphspec.cost.shadow import Shadows
from graphspec.cost.step import count_step
from tests.conftest import TINY

ROOT = Path(__file__).resolve().parents[2]
FIELDS = {"flops_per_step", "step_s", "step_s_low", "step_s_high", "peak_memory_mb", "model_state_mb",
          "activation_mb", "machine", "nodes"}


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """Machine profiles of this test only (none calibrated at first)."""
    monkeypatch.setenv("GRAPHSPEC_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_cost_json_of_experiment_1_offline_in_a_fresh_process(tmp_path, cache):
    env = {**os.environ, "GRAPHSPEC_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "graphspec", "cost", str(ROOT / "specs/paper/exp1_two_tower.yaml"),
                           "--json", "-o", str(tmp_path / "build")], capture_output=True, text=True, env=env,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert FIELDS <= set(report)
    assert {"name", "calibrated", "source", "date"} <= set(report["machine"]) and not report["machine"]["calibrated"]
    assert any("not calibrated" in n and "graphspec calibrate" in n for n in report["notes"])
    assert set(report["nodes"]) == {"text_tower", "vision_tower", "fusion", "pooled", "heads.itm", "heads.mlm"}
    for row in report["nodes"].values():
        assert {"fwd_flops", "bwd_flops", "params", "trainable", "activation_mb"} <= set(row)
    nodes = report["nodes"]
    assert report["flops_per_step"] >= sum(r["fwd_flops"] + r["bwd_flops"] for r in nodes.values()) > 0
    assert nodes["fusion"]["bwd_flops"] > nodes["fusion"]["fwd_flops"] > 0
    assert report["step_s_low"] < report["step_s"] < report["step_s_high"]
    assert report["peak_memory_mb"] > report["model_state_mb"] + report["activation_mb"]
    # its data are the built-in scenes: read here, text padded to the longest caption of the batch
    assert report["text"]["padded_to"] == "longest" and report["text"]["length"] < 50
    assert (tmp_path / "build" / "cost.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "build" / "cost.json").read_text())["spec_digest"]


def test_freezing_a_tower_removes_its_backward_and_a_frozen_tower_outside_saves_nothing(cache):
    spec = graphspec.loads(yaml.safe_dump(TINY))
    base, frozen = (_count(graphspec.loads(yaml.safe_dump(TINY), overrides=sets))
                    for sets in ([], ["nodes.vision_tower.freeze=true"]))
    assert base.nodes["vision_tower"].bwd_flops > 0 and frozen.nodes["vision_tower"].bwd_flops == 0
    assert frozen.nodes["vision_tower"].fwd_flops == base.nodes["vision_tower"].fwd_flops
    assert frozen.nodes["vision_tower"].saved_bytes == 0 < base.nodes["vision_tower"].saved_bytes
    assert frozen.flops < base.flops and spec.name == "tiny"


def _count(spec, rows: int = 4):
    c = compile_spec(spec)
    meta = build_weights(spec, c.plan, meta=True)
    sampled = sample_batch(spec, meta, c.shared_images[0], rows)
    outside = [n for n, r in c.placed.items() if r["where"] == "outside"]
    return count_step(meta, c.plan, outside, sampled.task.losses, sampled.batch, spec.train.precision,
                      frozen_dtype(spec), "meta")


def test_checkpointing_costs_a_forward_and_saves_activation_memory(cache):
    data = copy.deepcopy(TINY)
    data["nodes"]["fusion"]["dropout"] = 0.1
    plain = _count(graphspec.loads(yaml.safe_dump(data)))
    data["nodes"]["fusion"]["checkpoint"] = True
    again = _count(graphspec.loads(yaml.safe_dump(data)))
    fusion, other = again.nodes["fusion"], plain.nodes["fusion"]
    assert fusion.fwd_flops == other.fwd_flops
    assert fusion.bwd_flops == pytest.approx(other.bwd_flops + other.fwd_flops, rel=0.02)  # the recomputation
    assert fusion.saved_bytes < other.saved_bytes / 2
    assert again.peak_live_bytes < plain.peak_live_bytes


def test_known_values_answer_what_the_meta_device_cannot():
    shadows = Shadows()
    with shadows:
        labels = shadows.meta(torch.tensor([[-100, 5, -100, 7], [3, -100, -100, -100]]))
        hidden = torch.empty(2, 4, 8, device="meta")
        picked = hidden[labels != -100]  # the MLM head's decode of the labelled positions
        target = labels[labels != -100]
        mask = shadows.meta(torch.ones(2, 4, dtype=torch.long))
        everywhere = bool((mask == 1).all())  # transformers' "is the mask all ones?"
    assert picked.shape == (3, 8) and picked.device.type == "meta"
    assert target.shape == (3,) and everywhere


def test_a_run_reports_its_prediction_and_calibrate_from_refits_it(tmp_path, cache, monkeypatch, capsys):
    data = copy.deepcopy(TINY)
    data["data"] = {"train": {"samples": 32}}
    data["nodes"]["text_tower"]["size"]["vocab_size"] = 128
    data["train"].update(steps=6, log_every=6)
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(data))
    monkeypatch.setenv("GRAPHSPEC_COST", "on")
    run = tmp_path / "run"
    assert main(["run", str(tmp_path / "spec.yaml"), "--run-dir", str(run), "--build-dir",
                 str(tmp_path / "build")]) == 0
    summary = json.loads((run / "summary.json").read_text())
    p = summary["predicted"]
    assert p["step_s"]["measured"] == summary["step_time_s"] and p["peak_memory_mb"]["measured"] == summary[
        "peak_rss_mb"]
    assert p["step_s"]["error"] == pytest.approx(p["step_s"]["predicted"] / p["step_s"]["measured"] - 1, abs=1e-3)
    assert "predicted (" in capsys.readouterr().out
    assert not json.loads((run / "build" / "cost.json").read_text())["machine"]["calibrated"]
    assert main(["calibrate", "--from", str(run)]) == 0
    refitted, note = machine.resolve("this")
    assert note is None and refitted.calibrated and "refitted from a run" in refitted.source
    again = estimate(graphspec.load(tmp_path / "spec.yaml"))  # this machine's prediction, now refitted
    assert again["machine"]["calibrated"]
    assert again["step_s"] == pytest.approx(summary["step_time_s"], rel=0.03)
    # a second refit from the same run scales the profile as it is now (not by the first prediction's error)
    assert main(["calibrate", "--from", str(run)]) == 0
    assert estimate(graphspec.load(tmp_path / "spec.yaml"))["step_s"] == pytest.approx(summary["step_time_s"],
                                                                                       rel=0.03)


def test_cost_errors_name_the_fix(tmp_path, cache, capsys):
    assert main(["cost", str(ROOT / "specs/quickstart.yaml"), "--machine", "tpu-v9"]) == 2
    assert "a100-40gb" in capsys.readouterr().err
    assert main(["calibrate"]) == 2
    assert "graphspec calibrate SPEC" in capsys.readouterr().err
    assert main(["calibrate", "--from", str(tmp_path)]) == 2
    assert "summary.json" in capsys.readouterr().err


def test_a_depthwise_convolution_counts_its_weight_gradient_per_group():
    """torch's formula ignores `groups` in a convolution's weight gradient (EfficientNet's backward came out 40
    times its forward); the counter used here counts each group's: forward, input and weight gradient alike."""
    from torch.utils.flop_counter import FlopCounterMode

    from graphspec.cost.kernels import flop_counter

    for groups, ours in ((64, 3), (1, 3)):
        conv = torch.nn.Conv2d(64, 64, 3, groups=groups, padding=1)
        x = torch.randn(2, 64, 16, 16, requires_grad=True)
        with FlopCounterMode(display=False) as forward:
            y = conv(x)
        with flop_counter() as step:
            conv(x).sum().backward()
        assert step.get_total_flops() == ours * forward.get_total_flops()


def test_a_named_accelerator_is_a_datasheet_prior_said_to_be_uncalibrated(tmp_path, cache, capsys):
    assert main(["cost", str(ROOT / "specs/quickstart.yaml"), "--machine", "h200", "--world-size", "2", "--json",
                 "-o", str(tmp_path / "build")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["machine"]["name"] == "h200" and report["machine"]["kind"] == "cuda"
    assert not report["machine"]["calibrated"] and any("h200 is uncalibrated" in n for n in report["notes"])
    assert report["memory_fits"] is True and report["peak_memory_kind"] == "device memory of each rank"
    assert 0 < report["flop_utilisation"] < 0.15  # against the datasheet's peak, as the prior assumes
    assert report["run"]["ranks"] == 2 and report["run"]["accelerator_hours"] == pytest.approx(
        2 * report["run"]["machine_hours"], abs=0.002)  # each rounded to 3 decimals


def test_attention_on_the_meta_device_takes_the_kernel_the_cpu_would():
    """On the meta device torch always takes SDPA's math path (four products in the backward); the CPU takes its
    flash kernel where it can (counted as five: it recomputes the scores). Without dropout it can: the meta
    step must count what the CPU runs."""
    import torch.nn.functional as F

    from graphspec.cost.kernels import flop_counter, kernels_of

    def count(device: str, patched: bool) -> int:
        q, k, v = (torch.randn(2, 4, 10, 16, device=device, requires_grad=True) for _ in range(3))
        with flop_counter() as counter:
            if patched:
                with kernels_of("cpu"):
                    F.scaled_dot_product_attention(q, k, v).sum().backward()
            else:
                F.scaled_dot_product_attention(q, k, v).sum().backward()
        return counter.get_total_flops()

    real = count("cpu", False)
    assert count("meta", True) == real
    assert count("meta", False) < real  # what the meta device alone would have counted
