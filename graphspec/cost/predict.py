"""`graphspec cost`: a spec's FLOPs, memory and step time per node and per rank, before anything runs.

Counts come from the run's own step on the meta device (`step.count_step`
over `sample.sample_batch`), model state from `memory.model_states`; time
from a machine profile (`machine`): the step's matrix products at the
profile's GEMM rate, the other ops' bytes at its measured traffic rate, a
cost per op launched, the optimizer per trainable parameter, the engine's
fixed cost per step and ZeRO-3's per parameter tensor, and the gradients'
reduction between ranks. A rank of several on one CPU gets its share of the
cores the profile was measured with.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from graphspec.compiler.pipeline import Compiled, build_weights, compile_spec
from graphspec.compiler.placement import frozen_dtype
from graphspec.language.schema import Spec

from .machine import Profile, resolve
from .memory import model_states
from .sample import sample_batch
from .step import StepCount, count_step

MB = 2**20
FORMAT = 1


def _threads_share(profile: Profile, world: int) -> float:
    """The share of the profile's compute rate one rank gets: several ranks on one CPU split its cores."""
    if profile.kind != "cpu" or world <= 1:
        return 1.0
    return 1.0 / world


def step_time(profile: Profile, count: StepCount, precision: str, accum: int, world: int, trainable_part: int,
              inside_tensors: int, stage: int, grad_bytes: int) -> dict:
    """Seconds of one optimizer step on one rank, by part."""
    dtype = {"bf16": "bfloat16", "fp16": "bfloat16"}.get(precision, "float32")
    share = _threads_share(profile, world)
    products = count.flops / (profile.gemm[dtype] * share)
    traffic = count.traffic / (profile.traffic[dtype] * share)
    launches = count.kernels * profile.launch_s
    micro = products + traffic + launches
    parts = {"products_s": products * accum, "other_ops_s": traffic * accum, "launches_s": launches * accum,
             "optimizer_s": profile.optimizer_s * trainable_part / share, "engine_s": profile.step_s,
             "zero3_s": profile.zero3_s * inside_tensors * accum if stage == 3 else 0.0,
             "reduce_s": (2.0 * grad_bytes * (world - 1) / world / profile.traffic["float32"]) if world > 1 else 0.0}
    parts["micro_step_s"] = micro
    return parts


def estimate(spec: Spec, machine: str = "this", compiled: Compiled | None = None) -> dict:
    """The cost report of `spec` (see README: `graphspec cost --json`)."""
    started = time.perf_counter()
    profile, note = resolve(machine)
    c = compiled or compile_spec(spec)
    d = spec.distributed
    world, stage = d.world_size, d.zero_stage
    micro, accum = spec.batch_plan()
    model = build_weights(spec, c.plan, meta=True)
    outside = [n for n, r in c.placed.items() if r["where"] == "outside"]
    cached = [n for n, r in c.placed.items() if r.get("cache")]
    zero = c.ds_config.get("zero_optimization", {"stage": 0})
    states = model_states(model, set(c.plan.frozen), set(outside), spec.train.precision, frozen_dtype(spec), zero,
                          world, d.offload_optimizer != "none")
    trainable = sum(p.numel() for n, p in model.named_parameters() if n not in c.plan.frozen)
    inside_tensors = sum(1 for n, _ in model.named_parameters() if n.split(".")[0] not in outside)
    sampled = sample_batch(spec, model, c.shared_images[0])
    count = count_step(model, c.plan, outside, sampled.task.losses, sampled.batch, spec.train.precision,
                       frozen_dtype(spec), "meta", profile.kind, spec.train.kernels)
    part = -(-trainable // world) if stage >= 1 else trainable
    parts = step_time(profile, count, spec.train.precision, accum, world, part, inside_tensors, stage,
                      states.step_gradients)
    step = sum(v for k, v in parts.items() if k != "micro_step_s")
    spread = profile.spread
    per_step = accum * world  # micro batches in one optimizer step of the global batch
    activation = count.peak_live_bytes
    slack = profile.fits.get("memory_slack", 1.0)  # the allocator's, over what a step keeps alive at once
    peak = profile.baseline_mb * MB + states.total + slack * (states.step_gradients + activation + count.batch_bytes)
    if profile.kind != "cpu":
        peak -= states.host
    flops_step = count.flops * per_step
    share = _threads_share(profile, world)
    dtype = {"bf16": "bfloat16", "fp16": "bfloat16"}.get(spec.train.precision, "float32")
    peak_rate = profile.fits.get("peak", {}).get(dtype) or profile.gemm[dtype]
    nodes = {}
    for name, row in c.summary["params"].items():
        if name == "total":
            continue
        n = count.nodes.get(name)
        nodes[name] = {"fwd_flops": (n.fwd_flops if n else 0) * per_step,
                       "bwd_flops": (n.bwd_flops if n else 0) * per_step,
                       "params": row["total"], "trainable": row["trainable"],
                       "activation_mb": round((n.saved_bytes if n else 0) / MB, 2),
                       "frozen": name in c.plan.frozen_nodes,
                       "where": "cache" if name in cached else c.placed.get(name, {}).get("where", "engine")}
    losses = count.nodes.get("(losses)")
    notes = [note] if note else []
    notes.append(f"text counted at {sampled.text['length']} tokens per row ({sampled.text['from']}; "
                 f"tokenizer: {sampled.text['tokenizer']})")
    if cached:
        notes.append(f"outputs of {', '.join(cached)} are cached: counted as computed at every step (as in the "
                     "first epoch; later epochs read them from disk)")
    hours = spec.train.steps * step / 3600
    report = {
        "format": FORMAT, "spec": spec.name,
        "flops_per_step": flops_step,
        "flops_per_rank_step": count.flops * accum,
        "step_s": round(step, 4), "step_s_low": round(step * (1 - spread), 4),
        "step_s_high": round(step * (1 + spread), 4),
        "step_parts_s": {k: round(v, 4) for k, v in parts.items()},
        "flop_utilisation": round(count.flops * accum / step / (peak_rate * share), 4) if step else 0.0,
        "peak_memory_mb": round(peak / MB, 1),
        "peak_memory_kind": "resident memory of each process (host)" if profile.kind == "cpu"
        else "device memory of each rank",
        "model_state_mb": round(states.total / MB, 2),
        "model_state": states.as_mb(),
        "activation_mb": round(activation / MB, 2),
        "saved_for_backward_mb": round(count.saved_bytes / MB, 2),
        "memory_fits": peak / MB <= profile.memory_gb * 1024 if profile.memory_gb else None,
        "machine": {**profile.public(), "memory_gb": profile.memory_gb},
        "run": {"steps": spec.train.steps, "machine_hours": round(hours, 3),
                "accelerator_hours": round(hours * world, 3) if profile.kind != "cpu" else None,
                "ranks": world, "micro_batch": micro, "accumulation": accum, "zero_stage": stage,
                "parameter_tensors": inside_tensors,
                "precision": spec.train.precision},
        "text": sampled.text,
        "nodes": nodes,
        "losses_flops": (losses.fwd_flops + losses.bwd_flops) * per_step if losses else 0,
        "notes": notes,
        "seconds": 0.0,
    }
    report["seconds"] = round(time.perf_counter() - started, 2)
    return report


def write(report: dict, folder: Path) -> Path:
    path = folder / "cost.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    return path


def read(folder: Path) -> dict | None:
    try:
        data = json.loads((folder / "cost.json").read_text())
        return data if data.get("format") == FORMAT else None
    except (OSError, ValueError):
        return None


def _flops(n: float) -> str:
    return f"{n / 1e12:,.2f} T" if n >= 1e12 else f"{n / 1e9:,.2f} G"


def format_report(r: dict) -> str:
    m = r["machine"]
    lines = [f"cost of {r['spec']} on {m['name']} ({'calibrated' if m['calibrated'] else 'uncalibrated'}: "
             f"{m['source']})", "",
             f"{'node':<24}{'fwd FLOP':>12}{'bwd FLOP':>12}{'share':>8}{'params':>13}{'trainable':>13}"
             f"{'saved MiB':>11}  where"]
    total = r["flops_per_step"] or 1
    for name, n in r["nodes"].items():
        share = (n["fwd_flops"] + n["bwd_flops"]) / total
        lines.append(f"{name:<24}{_flops(n['fwd_flops']):>12}{_flops(n['bwd_flops']):>12}{share:>8.1%}"
                     f"{n['params']:>13,}{n['trainable']:>13,}{n['activation_mb']:>11,.1f}  {n['where']}")
    run, s = r["run"], r["model_state"]
    lines += ["", f"one optimizer step ({run['micro_batch']} rows x {run['accumulation']} micro steps x "
              f"{run['ranks']} rank{'s' if run['ranks'] > 1 else ''}, {run['precision']}, ZeRO-{run['zero_stage']}): "
              f"{_flops(r['flops_per_step'])}FLOP",
              f"step time per rank: {r['step_s']:.3f} s ({r['step_s_low']:.3f}-{r['step_s_high']:.3f}), "
              f"FLOP utilisation {r['flop_utilisation']:.1%}",
              "  " + ", ".join(f"{k.removesuffix('_s')} {v:.3f}" for k, v in r["step_parts_s"].items()
                               if v and k != "micro_step_s"),
              f"memory per rank: peak {r['peak_memory_mb']:,.0f} MiB ({r['peak_memory_kind']}); model state "
              f"{r['model_state_mb']:,.1f} MiB (weights {s['weights'] + s['outside']:,.1f}, fp32 masters "
              f"{s['master']:,.1f}, optimizer {s['optimizer']:,.1f}, kept gradients {s['gradients']:,.1f}), "
              f"activations {r['activation_mb']:,.1f} MiB at most at once",
              f"the run: {run['steps']:,} steps, {run['machine_hours']:,.2f} machine-hours"
              + (f", {run['accelerator_hours']:,.2f} accelerator-hours" if run.get("accelerator_hours") else "")]
    if r.get("memory_fits") is False:
        lines.append(f"does NOT fit: {r['peak_memory_mb']:,.0f} MiB > {m['memory_gb']} GiB")
    lines += [f"note: {n}" for n in r["notes"]]
    return "\n".join(lines)


def ensure(build_dir: Path, spec: Spec, compiled: Compiled | None = None) -> dict | None:
    """The build's cost.json for `spec`: read when it is there and is this spec's, else predicted for this
    machine and written (once, by the process that launches the ranks). A prediction that fails is said and
    skipped: it never stops a run. GRAPHSPEC_COST=off skips it."""
    import gc
    import os
    import sys

    from graphspec.runtime.report import spec_digest

    if os.environ.get("GRAPHSPEC_COST") == "off":
        return None
    found = read(build_dir)
    if found is not None and found.get("spec_digest") == spec_digest(spec):
        return found
    try:
        report = estimate(spec, "this", compiled)
    except Exception as e:  # noqa: BLE001 - a prediction is advice: the run goes on without one
        print(f"graphspec: no cost prediction for this run ({type(e).__name__}: {str(e).splitlines()[0][:300]})",
              file=sys.stderr)
        return None
    finally:
        gc.collect()  # the meta model and the sampled batch go before the run allocates its own
    report["spec_digest"] = spec_digest(spec)
    write(report, build_dir)
    return report
