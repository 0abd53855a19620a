"""The freeze benchmark: what freezing saves per training step of the paper's Experiment 1 model.

    python benchmarks/freeze.py [--steps 5] [--warmup 2] [--only none,vision,...] [--profile none,...]
                                [--json FILE]

Experiment 1's two-tower model (ELECTRA-small + DeiT-tiny, 6 shared co-attention
layers of width 256, text 50, images 224, bf16, ZeRO-2) trains MLM + ITM (the
paper's two passes: 64 rows) at micro-batch 32 under each configuration below, each in a process of its own (so its peak
memory is its own), one after the other in this one run of the script: compare
the ratios it prints, not figures from elsewhere. Towers are randomly
initialised: a step's cost does not depend on the weights' values.

The `x2` configurations run as two ranks on this machine (torchrun, one core
each, micro-batch 32 each), to show what ZeRO-3 costs a frozen tower left in the
engine; compare them with each other. Per configuration: median step time (batch building included, as `graphspec run`
counts it) and its parts (frozen towers outside the engine, engine forward with
the losses, backward, optimizer step), peak resident memory, optimizer-state
bytes (Adam moments and fp32 master weights), the FLOPs a step executes and the
FLOP/s achieved against the GEMM rate this machine reaches at the model's own
matrix shapes (bf16, or fp32 for the fp32 rows), measured at the end of the run:
the shapes holding 80% of the matrix FLOPs of the first configuration's step,
each timed alone, best of 7 rounds after a warm-up.

`none@plain` is graphspec 0.2's path (torch's dropout and attention kernels, text
padded to max_length, AdamW one tensor at a time, glibc returning freed memory to
the OS every step): `none / none@plain` is what
the faster path gains. `--profile none,none@fp32` adds a table per configuration
of where a step's time goes, by torch operation.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rates import gemm_shapes, model_shape_peak, op_table  # this folder's, beside the script

ROOT = Path(__file__).resolve().parent.parent
BASE = ROOT / "specs" / "paper" / "exp1_two_tower.yaml"
MICRO = 32
COMMON = ["nodes.text_tower.init=random", "nodes.text_tower.source=null", "nodes.vision_tower.init=random",
          f"train.batch_size={MICRO}", f"train.micro_batch_size={MICRO}", "train.steps=1000",
          "data.train.samples=64", "data.val=null"]
VISION, TEXT = "nodes.vision_tower.freeze=true", "nodes.text_tower.freeze=true"
CACHE = "distributed.frozen.cache_outputs=true"
PLAIN = ["train.kernels=plain", "inputs.text.pad_to=max_length", "train.optimizer.kernel=loop"]
X2 = ["distributed.zero_stage=3", "distributed.world_size=2", f"train.batch_size={2 * MICRO}"]

# name: (overrides, towers outside the engine, frozen modules pinned to eval mode)
CONFIGS = {
    "none": ([], True, True),
    "none@loop-optimizer": (["train.optimizer.kernel=loop"], True, True),  # graphspec 0.2's AdamW, per tensor
    # graphspec 0.2's whole path: torch's dropout and SDPA, text padded to max_length, the per-tensor AdamW
    "none@plain": ([*PLAIN], True, True),
    "none@fp32": (["train.precision=fp32"], True, True),
    "none@plain-fp32": ([*PLAIN, "train.precision=fp32"], True, True),
    "vision": ([VISION], True, True),
    "text": ([TEXT], True, True),
    "both": ([VISION, TEXT], True, True),
    "both+cache": ([VISION, TEXT, CACHE], True, True),
    "renaissance-vision": ([VISION], False, False),  # grads off only: in the engine, dropout on
    "vision+cache": ([VISION, CACHE], True, True),
    "vision-fp32-tower": ([VISION, "distributed.frozen.dtype=fp32"], True, True),
    "vision@zero3": ([VISION, "distributed.zero_stage=3"], True, True),
    "renaissance-vision@zero3": ([VISION, "distributed.zero_stage=3"], False, False),
    # two ranks on this machine (torchrun, one core each), micro-batch 32 each: where ZeRO-3 shards a frozen
    # tower inside the engine and gathers it again every step
    "none@zero3x2": ([*X2], True, True),
    "vision@zero3x2": ([VISION, *X2], True, True),
    "renaissance-vision@zero3x2": ([VISION, *X2], False, False),
}
TARGETS = [("none", "none@plain", 0.6), ("vision", "none", 0.55), ("both+cache", "none", 0.15), ("vision", "renaissance-vision", 0.70),
           ("vision+cache", "renaissance-vision", 0.70), ("vision@zero3", "renaissance-vision@zero3", 0.70),
           ("vision@zero3x2", "renaissance-vision@zero3x2", 0.70)]


def _world(name: str) -> int:
    return 2 if X2[1] in CONFIGS[name][0] else 1


class _Timed:
    """The outside towers, with the time they take."""

    def __init__(self, towers):
        self.towers, self.seconds = towers, 0.0

    def __call__(self, batch):
        start = time.perf_counter()
        out = self.towers(batch)
        self.seconds += time.perf_counter() - start
        return out

    def __getattr__(self, name):
        return getattr(self.towers, name)


def _optimizer_bytes(optimizer) -> int:
    import torch

    inner = getattr(optimizer, "optimizer", optimizer)
    total = sum(t.numel() * t.element_size() for s in inner.state.values() for t in s.values()
                if torch.is_tensor(t))
    masters = getattr(optimizer, "single_partition_of_fp32_groups", [])
    return total + sum(t.numel() * t.element_size() for t in masters)


def measure(name: str, steps: int, warmup: int, cache_dir: str, base: Path = BASE, profile: bool = False) -> dict:
    """One configuration, in this process."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    import graphspec
    from graphspec.compiler.folders import read_build
    from graphspec.runtime import ranks
    from graphspec.runtime.train import prepare

    overrides, outside, pin = CONFIGS[name]
    extra = [f"distributed.frozen.cache_dir={cache_dir}"] if CACHE in overrides else []
    spec = graphspec.load(base, overrides=COMMON + overrides + extra)
    with tempfile.TemporaryDirectory() as build_dir:
        graphspec.compile(spec, out=build_dir)
        session = prepare(read_build(Path(build_dir)), outside)
    task, trainer = session.task, session.trainer
    if not pin:
        trainer.engine.train()  # dropout back on in the frozen tower, as when freezing only flips requires_grad
    trainer.towers = timed = _Timed(trainer.towers)
    torch.manual_seed(0)
    if CACHE in overrides:  # later epochs: every image's outputs already on disk
        for i in range(10):
            timed(task.train_batch(MICRO, 10_000 + i))
    parts: dict[str, list[float]] = {k: [] for k in ("step", "towers", "forward", "backward", "optimizer")}

    def step(index: int) -> None:
        timed.seconds = 0.0
        t0 = time.perf_counter()
        batch = task.train_batch(MICRO, index)
        t1 = time.perf_counter()
        batch = trainer.move(batch)
        loss = task.losses(trainer.forward(batch), batch)["loss"]
        t2 = time.perf_counter()
        trainer.engine.backward(loss)
        t3 = time.perf_counter()
        trainer.engine.step()
        t4 = time.perf_counter()
        for key, value in (("step", t4 - t0), ("towers", timed.seconds), ("forward", t2 - t1 - timed.seconds),
                           ("backward", t3 - t2), ("optimizer", t4 - t3)):
            parts[key].append(value)

    for i in range(warmup):
        step(i)
    for k in parts:
        parts[k].clear()
    caches = timed.towers.caches
    before = {n: (c.hits, c.misses) for n, c in caches.items()}
    for i in range(warmup, warmup + steps):
        step(i)
    hits = {n: (c.hits - before[n][0], c.misses - before[n][1]) for n, c in caches.items()}
    with FlopCounterMode(display=False) as counter:
        step(warmup + steps)
    shapes = gemm_shapes(lambda: step(warmup + steps + 1)) if ranks.world() == 1 else []
    ops = op_table(lambda: step(warmup + steps + 2)) if profile else []
    trainable = sum(getattr(p, "ds_numel", p.numel()) for p in trainer.engine.module.parameters()
                    if p.requires_grad)  # ZeRO-3 keeps only a shard: ds_numel is the whole
    return {"config": name, **{f"{k}_s": statistics.median(v) for k, v in parts.items()},
            "peak_rss_mb": ranks.maximum(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "ranks": ranks.world(),
            "optimizer_mb": _optimizer_bytes(trainer.optimizer) / 2**20, "trainable": trainable,
            "gflop_per_step": counter.get_total_flops() * ranks.world() / 1e9,  # every rank alike
            "cache": {n: {"hits": h, "misses": m} for n, (h, m) in hits.items()}, "gemm_shapes": shapes,
            "precision": spec.train.precision, "ops": ops}


def _row(r: dict, base: dict, peaks: dict) -> str:
    peak = peaks["float32" if r.get("precision") == "fp32" else "bfloat16"]
    gflops = r["gflop_per_step"] / r["step_s"]
    spread = "-".join(f"{t:.2f}" for t in (min(r["rounds_step_s"]), max(r["rounds_step_s"])))
    return (f"| {r['config']} | {r['step_s']:.3f} ({spread}) | {r['step_s'] / base['step_s']:.2f}x | {r['towers_s']:.3f} | "
            f"{r['forward_s']:.3f} | {r['backward_s']:.3f} | {r['optimizer_s']:.3f} | {r['peak_rss_mb']:,.0f} | "
            f"{r['optimizer_mb']:,.1f} | {r['trainable'] / 1e6:.1f}M | {r['gflop_per_step']:,.0f} | {gflops:,.0f} | "
            f"{100 * gflops / peak:.0f}% |")


def _run_one(name: str, args, cache_dir: str) -> dict | None:
    """One configuration in a process of its own (two ranks through torchrun for the x2 ones)."""
    from graphspec.runtime.launch import threads_per_rank

    world = _world(name)
    launcher = [sys.executable] if world == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                     "--nproc_per_node", str(world)]
    env = {} if world == 1 else {"OMP_NUM_THREADS": str(threads_per_rank(world))}
    if "@plain" in name:  # graphspec 0.2 left glibc's allocator as it was (runtime/malloc.py)
        env["GRAPHSPEC_KEEP_FREED_MEMORY"] = "0"
    profile = ["--profile-this"] if name in (args.profile or "").split(",") else []
    done = subprocess.run([*launcher, __file__, "--one", name, "--steps", str(args.steps), "--warmup",
                           str(args.warmup), "--cache-dir", cache_dir, "--spec", str(Path(args.spec).resolve()),
                           *profile],
                          capture_output=True, text=True, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1", **env})
    if done.returncode:
        print(done.stderr[-4000:], file=sys.stderr)
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=5, help="measured steps per configuration (default 5)")
    p.add_argument("--warmup", type=int, default=2, help="unmeasured steps first (default 2)")
    p.add_argument("--rounds", type=int, default=1, help="run every configuration this many times, in turn, and "
                   "keep each one's fastest round (default 1)")
    p.add_argument("--only", help="comma-separated configurations (default: all; 'none' is always run)")
    p.add_argument("--json", help="also write the figures here")
    p.add_argument("--spec", default=str(BASE), help="another two-tower spec (nodes text_tower and vision_tower) "
                   "to measure instead of Experiment 1's")
    p.add_argument("--profile", help="comma-separated configurations to profile too (one more step under torch's "
                   "profiler): a table of where their step's time goes, by operation")
    p.add_argument("--rate-rounds", type=int, default=7, help="rounds of the GEMM-rate measurement at the model's "
                   "shapes, each shape's best kept (default 7; 1 only checks that it runs)")
    p.add_argument("--one", help=argparse.SUPPRESS)
    p.add_argument("--profile-this", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--cache-dir", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:  # a worker: one configuration, its figures as JSON on the last line
        figures = measure(args.one, args.steps, args.warmup, args.cache_dir, Path(args.spec), args.profile_this)
        if os.environ.get("RANK", "0") == "0":
            print(json.dumps(figures), flush=True)
        from graphspec.runtime import ranks

        ranks.finish()
        import gc

        gc.freeze()  # the interpreter's teardown skips walking every library object (about 1.5 s a process)
        return 0
    asked = (args.only.split(",") if args.only else list(CONFIGS)) + (args.profile.split(",") if args.profile else [])
    names = ["none"] + [n for n in dict.fromkeys(asked) if n != "none"]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        p.error(f"unknown configuration {unknown[0]!r}; choose from {', '.join(CONFIGS)}")
    rounds: dict[str, list[dict]] = {n: [] for n in names}
    with tempfile.TemporaryDirectory() as cache_dir:
        for turn in range(args.rounds):  # each round runs every configuration once, in the same order
            for name in names:
                start = time.perf_counter()
                figures = _run_one(name, args, cache_dir) or _run_one(name, args, cache_dir)  # one retry
                if figures is None:
                    return 1
                rounds[name].append(figures)
                print(f"  round {turn + 1}, {name}: {figures['step_s']:.3f} s/step "
                      f"({time.perf_counter() - start:.0f} s)", flush=True)
    results = []
    for name in names:  # the round least disturbed by the rest of the machine: the fastest
        best = min(rounds[name], key=lambda r: r["step_s"])
        results.append({**best, "rounds_step_s": [r["step_s"] for r in rounds[name]]})
    base = results[0]
    by = {r["config"]: r for r in results}
    peaks, timed = {}, 0
    for d in ("bfloat16", "float32"):  # after the configurations, on a quiet machine
        peaks[d], timed = model_shape_peak(base["gemm_shapes"], d, rounds=args.rate_rounds,
                                           round_s=0.1 if args.rate_rounds > 1 else 0.01)
    print(f"\nGEMM rate at the model's own shapes (the {timed} shapes holding 80% of nothing-frozen's matrix FLOPs, "
          f"each best of {args.rate_rounds} rounds): bf16 {peaks['bfloat16']:,.0f} GFLOP/s, fp32 {peaks['float32']:,.0f} GFLOP/s")
    print(f"\n{Path(args.spec).name} at micro-batch {MICRO}, median of {args.steps} steps after {args.warmup}, "
          f"fastest of {args.rounds} round{'s' if args.rounds > 1 else ''}:\n")
    print("| config | step s (rounds) | vs nothing frozen | towers s | forward s | backward s | optimizer s | peak MB | optimizer "
          "state MB | trainable | GFLOP/step | GFLOP/s | of GEMM rate |")
    print("|---" * 13 + "|")
    for r in results:  # two-rank rows against two ranks with nothing frozen
        print(_row(r, by.get("none@zero3x2", base) if r.get("ranks", 1) > 1 else base, peaks))
    for r in results:
        for tower, c in r["cache"].items():
            print(f"{r['config']}: {tower} cache {c['hits']} hits, {c['misses']} misses in the measured steps")
    if "both+cache" in by:
        r = by["both+cache"]
        floor = r["step_s"] - r["towers_s"]
        print(f"\nwith no tower cost at all, a step would still take {floor:.3f} s ({floor / base['step_s']:.2f}x): "
              f"the trainable part's forward {r['forward_s']:.3f} s, backward {r['backward_s']:.3f} s and "
              f"optimizer step {r['optimizer_s']:.3f} s")
    for r in results:
        if r["ops"]:
            print(f"\n{r['config']}: one step under torch's profiler, by operation (self time; the profiler adds "
                  f"its own cost to every call)\n\n| operation | s | share | calls |\n|---|---|---|---|")
            whole = sum(o["s"] for o in r["ops"])
            for o in r["ops"]:
                print(f"| {o['op']} | {o['s']:.3f} | {100 * o['s'] / whole:.0f}% | {o['calls']} |")
    print("\ntargets:")
    for a, b, limit in TARGETS:
        if a in by and b in by:
            ratio = by[a]["step_s"] / by[b]["step_s"]
            print(f"  {a} / {b}: {ratio:.2f}x (target <= {limit}x) {'met' if ratio <= limit else 'MISSED'}")
    if args.json:
        Path(args.json).write_text(json.dumps({"peaks_gflops": peaks, "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
