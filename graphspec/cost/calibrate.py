"""`graphspec calibrate`: measure this machine for the cost model, in under a minute; or refit a profile from a
finished run.

What is measured, for the specs given (their towers at random init: no
weights need be on this machine):

- the matrix-product rate at each spec's own GEMM shapes (those holding 80%
  of its step's FLOPs), in bf16 and fp32, each shape's best of a few rounds;
- the traffic rate of everything else: a real forward and backward of each
  spec at a small micro batch, its time less its products at the measured
  rate, over the bytes its other ops move (counted on the meta device);
- the optimizer's cost per trainable parameter: gradients to fp32, AdamW on
  fp32 masters, weights back to the training precision, as DeepSpeed does;
- the process's resident memory before a model (torch and the libraries).

DeepSpeed's one-time op builds are not part of it (nothing here builds one).
"""

from __future__ import annotations

import copy
import datetime
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

import torch

from graphspec.compiler.pipeline import build_weights, compile_spec
from graphspec.compiler.placement import frozen_dtype
from graphspec.language.reading import override
from graphspec.language.schema import Spec

from .machine import Profile, save, this_machine
from .sample import sample_batch
from .step import StepCount, count_step, plain_step, prepare

DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}


def _product(op: str, shapes: tuple, dtype: torch.dtype) -> Callable[[], torch.Tensor]:
    """A callable running one recorded matrix product (mm, addmm, bmm) on random data."""
    ts = [torch.randn(s, dtype=dtype) if len(s) else torch.zeros((), dtype=dtype) for s in shapes]
    if op == "mm":
        return lambda: torch.mm(ts[0], ts[1])
    if op == "addmm":
        return lambda: torch.addmm(ts[0], ts[1], ts[2])
    return lambda: torch.bmm(ts[0], ts[1])


def gemm_rate(counts: list[StepCount], dtype: str, budget_s: float = 6.0, share: float = 0.8) -> float:
    """FLOP/s of the products holding `share` of the counted steps' product FLOPs, timed at their shapes."""
    from torch.utils.flop_counter import mm_flop, addmm_flop, bmm_flop

    flop_of = {"mm": lambda s: mm_flop(s[0], s[1]), "addmm": lambda s: addmm_flop(*s[:3]),
               "bmm": lambda s: bmm_flop(s[0], s[1])}
    shapes: dict[tuple, int] = {}
    for c in counts:
        for (op, operands, _), calls in c.products.items():
            if op in flop_of:
                shapes[(op, operands)] = shapes.get((op, operands), 0) + calls
    ranked = sorted(((flop_of[op](s) * calls, op, s) for (op, s), calls in shapes.items()), reverse=True)
    total = sum(r[0] for r in ranked)
    chosen, covered = [], 0
    for flop, op, s in ranked:
        if covered >= share * total:
            break
        chosen.append((flop, op, s))
        covered += flop
    if not chosen:
        return 0.0
    runs = [(flop, _product(op, s, DTYPES[dtype]), flop_of[op](s)) for flop, op, s in chosen]
    per = budget_s / len(runs) / 3
    seconds = 0.0
    for flop, run, one in runs:
        run()  # warm-up: the first call picks the kernel
        best = float("inf")
        for _ in range(3):
            calls, start = 0, time.perf_counter()
            while (elapsed := time.perf_counter() - start) < per or calls == 0:
                run()
                calls += 1
            best = min(best, elapsed / calls)
        seconds += best * flop / one
    return covered / seconds


def optimizer_cost(precision: str, n: int = 4_000_000, rounds: int = 3) -> float:
    """Seconds per parameter of an optimizer step as the engine takes it: the gradient to fp32, AdamW on the fp32
    master, the weight back to the training precision."""
    half = precision != "fp32"
    master = torch.zeros(n, requires_grad=True)
    master.grad = torch.zeros(n)
    weight = torch.zeros(n, dtype=torch.bfloat16 if half else torch.float32)
    grad = torch.zeros_like(weight)
    opt = torch.optim.AdamW([master], lr=1e-4)
    best = float("inf")
    for _ in range(rounds + 1):
        start = time.perf_counter()
        master.grad.copy_(grad)
        opt.step()
        weight.copy_(master.detach())
        best = min(best, time.perf_counter() - start)
    return best / n


def _real_step_seconds(spec: Spec, rows: int, rounds: int = 3) -> tuple[float, StepCount]:
    """The best time of a real forward and backward of `spec` at `rows` rows (no engine), and its count."""
    c = compile_spec(spec)
    outside = [n for n, r in c.placed.items() if r["where"] == "outside"]
    meta = build_weights(spec, c.plan, meta=True)
    sampled = sample_batch(spec, meta, c.shared_images[0], rows)
    model = build_weights(spec, c.plan)
    count = count_step(copy.deepcopy(meta), c.plan, outside, sampled.task.losses, sampled.batch,
                       spec.train.precision, frozen_dtype(spec), "meta", "cpu", spec.train.kernels)
    root = prepare(model, c.plan, outside, spec.train.precision, frozen_dtype(spec), "cpu", "cpu", spec.train.kernels)
    plain_step(root, sampled.task.losses, sampled.batch)  # warm-up: kernels chosen, memory pools grown
    best = min(plain_step(root, sampled.task.losses, sampled.batch) for _ in range(rounds))
    return best, count


def random_overrides(spec: Spec) -> list[str]:
    """The `--set`s that put every pretrained tower of `spec` at random init (the shapes are the same; no
    weights needed): a transformers tower from its `model_type`'s config, as compile checks it when the source
    is not here."""
    pretrained = [n for n, node in spec.nodes.items() if getattr(node, "init", None) == "pretrained"]
    return [f"nodes.{n}.init=random" for n in pretrained] + [
        f"nodes.{n}.source=null" for n in pretrained if getattr(spec.nodes[n], "model_type", None)]


def random_towers(spec: Spec) -> Spec:
    sets = random_overrides(spec)
    return override(spec, sets + ["init_from=null"]) if sets else spec


# A run small enough that what it measures is the process and the engine, not the model: its peak resident
# memory less its model's is the baseline of a training process, its step time less its compute the engine's.
PROBE = """
name: calibration-probe
inputs:
  text: {modality: text, max_length: 16}
  image: {modality: image, size: 32}
nodes:
  text_tower: {kind: hf_text, model_type: bert, init: random, input: text,
               size: {hidden: 32, layers: 1, heads: 2, mlp_ratio: 2, vocab_size: 128, max_positions: 16}}
  vision_tower: {kind: timm_vision, source: vit_tiny_patch16_224, init: random, input: image,
                 size: {hidden: 32, layers: 1, heads: 2, mlp_ratio: 2, patch_size: 8}}
  fusion: {kind: co_attention, inputs: {text: text_tower, image: vision_tower}, layers: 1, heads: 2, mlp_ratio: 2}
  pooled: {kind: cls_pool, inputs: [fusion.text, fusion.image]}
heads:
  itm: {kind: itm, input: pooled}
  mlm: {kind: mlm, input: fusion.text, vocab_from: text_tower}
objectives: {itm: {weight: 1.0}, mlm: {weight: 1.0}}
data:
  train: {source: "builtin:shapes", task: captions, samples: 64}
train: {steps: 12, batch_size: 8, log_every: 100, optimizer: {lr: 1.0e-3}, precision: bf16}
"""


def _run(spec_file: Path, folder: Path, sets: list[str]) -> dict:
    """A short `graphspec run` in a process of its own (no prediction of its own): its summary."""
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, "GRAPHSPEC_COST": "off"}
    subprocess.run([sys.executable, "-m", "graphspec", "run", str(spec_file), "--run-dir", str(folder / "run"),
                    "--build-dir", str(folder / "build"), *[a for s in sets for a in ("--set", s)]],
                   check=True, capture_output=True, env=env, timeout=600)
    return json.loads((folder / "run" / "summary.json").read_text())


def probe_runs(profile: Profile, spec: Spec, rows: int) -> Profile:
    """Two short runs, each in a process of its own: a tiny one (`PROBE`), whose peak resident memory less its
    model's is a training process's baseline and whose step time less its compute is the engine's per step;
    and `spec` at `rows` rows a micro batch under ZeRO-3 (towers at random init, the built-in scenes for
    data), whose step time less its compute and the engine's is ZeRO-3's cost per parameter tensor (its gathers
    and hooks), and whose memory beyond its model state is the allocator's slack over what a step keeps alive
    at once."""
    import tempfile

    from graphspec.language.reading import loads

    from .predict import estimate

    tiny = loads(PROBE)
    sets = random_overrides(spec) + [f"train.batch_size={rows}", f"train.micro_batch_size={rows}", "train.steps=4",
                                     "data.val=null", "distributed.world_size=1", "distributed.zero_stage=3",
                                     f"data.train={{source: 'builtin:shapes', task: {spec.data.train.task}, "
                                     "samples: 64}"]
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "probe.yaml").write_text(PROBE)
        small = _run(Path(tmp) / "probe.yaml", Path(tmp) / "tiny", [])
        (Path(tmp) / "spec.json").write_text(spec.model_dump_json(exclude={"extends"}))
        big = _run(Path(tmp) / "spec.json", Path(tmp) / "spec", sets)
        save(replace(profile, baseline_mb=0.0, step_s=0.0, zero3_s=0.0, fits={**profile.fits, "memory_slack": 1.0}))
        try:
            small_report = estimate(tiny, profile.name)
            report = estimate(override(spec, sets), profile.name)
        finally:
            save(profile)
    baseline = small["peak_rss_mb"] - small_report["peak_memory_mb"]
    engine = max(small["step_time_s"] - small_report["step_s"], 0.0)
    zero3 = max(big["step_time_s"] - report["step_s"] - engine, 0.0) / report["run"]["parameter_tensors"]
    kept = report["peak_memory_mb"] - report["model_state_mb"]  # what the step keeps alive, no slack
    slack = max((big["peak_rss_mb"] - baseline - report["model_state_mb"]) / kept, 1.0) if kept > 0 else 1.0
    return replace(profile, baseline_mb=round(baseline, 1), step_s=round(engine, 4), zero3_s=zero3,
                   fits={**profile.fits, "memory_slack": round(slack, 3)})


def calibrate(specs: list[Spec], rows: int = 8, say=print) -> Profile:
    """Measure this machine (see the module's docstring) and store its profile; at most about a minute for a
    spec of Experiment 1's size."""
    import psutil

    from graphspec.runtime.malloc import keep_freed_memory

    started = time.perf_counter()
    keep_freed_memory()  # as a run's process does: what it frees it keeps for its next allocations
    counts, steps = [], []
    for spec in specs:
        spec = random_towers(override(spec, ["train.precision=bf16"]))
        seconds, count = _real_step_seconds(spec, rows)
        counts.append(count)
        steps.append((seconds, count))
        say(f"  {spec.name}: a step of {rows} rows took {seconds:.3f} s ({count.flops / 1e9:.2f} GFLOP)")
    gemm = {d: gemm_rate(counts, d, budget_s=2.5) for d in DTYPES}
    say(f"  matrix products at these shapes: {gemm['bfloat16'] / 1e9:.0f} GFLOP/s bf16, "
        f"{gemm['float32'] / 1e9:.0f} GFLOP/s fp32")
    launch = 2e-6  # the host's per-op dispatch: small beside a CPU op's work, folded into the traffic fit
    moved = sum(c.traffic for _, c in steps)
    other = sum(s - c.flops / gemm["bfloat16"] - c.kernels * launch for s, c in steps)
    traffic_bf16 = moved / max(other, 1e-3 * len(steps))
    fp32_spec = random_towers(override(specs[0], ["train.precision=fp32"]))
    seconds32, count32 = _real_step_seconds(fp32_spec, rows)
    other32 = seconds32 - count32.flops / gemm["float32"] - count32.kernels * launch
    traffic_fp32 = count32.traffic / max(other32, 1e-3)
    say(f"  other ops: {traffic_bf16 / 1e9:.2f} GB/s moved in bf16, {traffic_fp32 / 1e9:.2f} GB/s in fp32")
    optimizer = optimizer_cost("bf16")
    say(f"  optimizer: {optimizer * 1e9:.2f} ns per trainable parameter")
    name = this_machine()
    profile = Profile(name, "cpu", gemm, {"bfloat16": traffic_bf16, "float32": traffic_fp32}, launch, optimizer,
                      0.02, 2e-4, 0.0, psutil.virtual_memory().total / 2**30,
                      torch.get_num_threads(), True,
                      f"measured by `graphspec calibrate` on {', '.join(s.name for s in specs)}",
                      datetime.date.today().isoformat(), 0.2,
                      {"peak": gemm, "memory_slack": 1.0})
    save(profile)
    profile = probe_runs(profile, specs[0], rows)
    profile.fits["seconds"] = round(time.perf_counter() - started, 1)
    say(f"  a training process: {profile.baseline_mb:,.0f} MiB resident before its model, "
        f"{profile.step_s * 1e3:.0f} ms of engine per step, ZeRO-3 {profile.zero3_s * 1e3:.2f} ms per parameter "
        f"tensor; a step's memory {profile.fits['memory_slack']:.2f} x what it keeps alive at once")
    save(profile)
    return profile


def refit(run_summary: dict, report: dict, store_as: str | None = None) -> Profile:
    """The profile that made a finished run's prediction (`report`, the build's cost.json), scaled so that the
    prediction equals what the run measured (`run_summary`, its summary.json): its compute rates and per-step
    costs by one factor. Stored by the caller under `store_as` (default: that profile's name)."""
    from .machine import resolve

    base, _ = resolve(report["machine"]["name"])
    measured, predicted = run_summary.get("step_time_s"), report.get("step_s")
    if not measured or not predicted:
        raise ValueError("the run measured no step time, or its build has no prediction")
    k = measured / predicted  # > 1: the machine is slower than the profile said
    out = replace(base, name=store_as or base.name, gemm={d: r / k for d, r in base.gemm.items()},
                  traffic={d: r / k for d, r in base.traffic.items()}, launch_s=base.launch_s * k,
                  optimizer_s=base.optimizer_s * k, step_s=base.step_s * k, zero3_s=base.zero3_s * k,
                  calibrated=True, spread=0.2, date=datetime.date.today().isoformat(),
                  source=f"refitted from a run of {run_summary.get('spec')} ({measured:.3f} s per step measured, "
                         f"{predicted:.3f} s predicted by the profile of {base.date or 'no date'})",
                  fits={**base.fits, "refit_factor": round(k, 4), "prior": base.source})
    return out
