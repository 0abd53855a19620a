"""The cost benchmark: `graphspec cost`'s predictions against measured runs, in one run of this script.

    python benchmarks/cost.py [--steps 6] [--rounds 3] [--only NAME,...] [--json FILE]

It calibrates this machine first (`graphspec calibrate` at Experiment 1's
shapes), then runs each configuration below with `graphspec run` in a process
of its own, one after the other: the run predicts its own cost before it
starts (for this machine, calibrated) and its summary sets the prediction
beside what it measured (median step time, peak resident memory). Towers are
at random init (a step's cost does not depend on the weights' values); the
data are the built-in scenes. The first configuration runs `--rounds` times:
the spread of its measured step times is the noise floor the errors are read
against. Printed: each configuration's predicted and measured step time and
peak memory with the errors, the median and worst absolute step-time error,
the worst memory error, and whether the freeze variants come out in the
measured order wherever their measured times differ by more than the noise.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXP1 = ROOT / "specs" / "paper" / "exp1_two_tower.yaml"
RANDOM = ["nodes.text_tower.init=random", "nodes.text_tower.source=null", "nodes.vision_tower.init=random"]


def exp1(*more: str, micro: int = 32, world: int = 1) -> tuple[Path, list[str]]:
    return EXP1, [*RANDOM, f"train.batch_size={micro * world}", f"train.micro_batch_size={micro}",
                  f"distributed.world_size={world}", "data.train.samples=256", "data.val=null", *more]


VISION, TEXT = "nodes.vision_tower.freeze=true", "nodes.text_tower.freeze=true"
CONFIGS = {
    "exp1": exp1(),
    "exp1 vision frozen": exp1(VISION),
    "exp1 text frozen": exp1(TEXT),
    "exp1 both frozen": exp1(VISION, TEXT),
    "exp1 fp32": exp1("train.precision=fp32"),
    "exp1 micro 16": exp1(micro=16),
    "exp1 ZeRO-0": exp1("distributed.zero_stage=0"),
    "exp1 ZeRO-3": exp1("distributed.zero_stage=3"),
    "exp1 2 ranks ZeRO-2": exp1(micro=16, world=2),
    "exp1 2 ranks ZeRO-3": exp1("distributed.zero_stage=3", micro=16, world=2),
    "exp1 checkpointed": exp1("nodes.text_tower.checkpoint=true", "nodes.vision_tower.checkpoint=true",
                              "nodes.fusion.checkpoint=true"),
    "minilm + efficientnet": (ROOT / "specs" / "families" / "minilm_efficientnet.yaml",
                              ["train.batch_size=32", "train.micro_batch_size=32", "data.train.samples=256",
                               "data.val=null"]),
    "meter cross-attention": (ROOT / "specs" / "families" / "meter_cross_attention.yaml",
                              ["train.batch_size=8", "train.micro_batch_size=8", "data.train.samples=64",
                               "data.val=null"]),
}
FREEZE = ["exp1", "exp1 vision frozen", "exp1 text frozen", "exp1 both frozen"]


def random_init(spec: Path) -> list[str]:
    """Every pretrained tower of a family spec at random init (its model_type's config for transformers)."""
    import graphspec
    from graphspec.cost.calibrate import random_overrides

    return random_overrides(graphspec.load(spec))


def run_one(spec: Path, sets: list[str], steps: int, folder: Path) -> dict:
    world = next((int(s.split("=")[1]) for s in sets if s.startswith("distributed.world_size=")), 1)
    cmd = [sys.executable, "-m", "graphspec", "run", str(spec), "--run-dir", str(folder / "run"),
           "--build-dir", str(folder / "build"), "--set", f"train.steps={steps}", "--set", f"train.log_every={steps}"]
    cmd += [a for s in sets if not s.startswith("distributed.world_size=") for a in ("--set", s)]
    cmd += ["--nproc", str(world)] if world > 1 else []
    env = {k: v for k, v in os.environ.items() if k != "GRAPHSPEC_COST"}
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    summary = json.loads((folder / "run" / "summary.json").read_text())
    if "predicted" not in summary:
        raise SystemExit(f"no prediction beside the run of {spec}: {done.stderr[-2000:]}")
    summary["wall_s"] = round(time.perf_counter() - start, 1)
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=3, help="runs of the first configuration (the noise floor)")
    ap.add_argument("--only", help="comma-separated configuration names")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    names = args.only.split(",") if args.only else list(CONFIGS)

    import graphspec
    from graphspec.cost.calibrate import calibrate

    started = time.perf_counter()
    print("calibrating:")
    profile = calibrate([graphspec.load(EXP1)])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for k, name in enumerate(names):
            spec, sets = CONFIGS[name]
            if spec != EXP1:
                sets = random_init(spec) + sets
            for r in range(args.rounds if k == 0 else 1):
                s = run_one(spec, sets, args.steps, Path(tmp) / f"{k}-{r}")
                p = s["predicted"]
                rows.append({"name": name, "round": r, "step_s": p["step_s"], "memory_mb": p["peak_memory_mb"],
                             "wall_s": s["wall_s"]})
                t, m = p["step_s"], p["peak_memory_mb"]
                print(f"{name:<24} step {t['predicted']:7.3f} s predicted, {t['measured']:7.3f} measured "
                      f"({t['error']:+6.1%});  peak {m['predicted']:7,.0f} MiB predicted, {m['measured']:7,.0f} "
                      f"measured ({m['error']:+6.1%})  [{s['wall_s']:.0f} s]", flush=True)
    first = [r["step_s"]["measured"] for r in rows if r["name"] == names[0]]
    noise = (max(first) - min(first)) / statistics.median(first) if len(first) > 1 else 0.0
    one = {}
    for r in rows:  # the first configuration's rounds: their median
        one.setdefault(r["name"], []).append(r)
    table = {n: {"step_predicted": rs[0]["step_s"]["predicted"],
                 "step_measured": statistics.median(x["step_s"]["measured"] for x in rs),
                 "memory_error": statistics.median(x["memory_mb"]["error"] for x in rs)} for n, rs in one.items()}
    for v in table.values():
        v["step_error"] = v["step_predicted"] / v["step_measured"] - 1
    errors = [abs(v["step_error"]) for v in table.values()]
    memory = [abs(v["memory_error"]) for v in table.values()]
    print(f"\nnoise floor: the {len(first)} rounds of '{names[0]}' spread {noise:.1%} (max - min over median)")
    print(f"step time: median absolute error {statistics.median(errors):.1%}, worst {max(errors):.1%} "
          f"({max(table, key=lambda n: abs(table[n]['step_error']))})")
    print(f"peak memory: worst absolute error {max(memory):.1%} "
          f"({max(table, key=lambda n: abs(table[n]['memory_error']))})")
    variants = [n for n in FREEZE if n in table]
    wrong = []
    for i, a in enumerate(variants):
        for b in variants[i + 1:]:
            ma, mb = table[a]["step_measured"], table[b]["step_measured"]
            if abs(ma - mb) / max(ma, mb) > noise and (ma < mb) != (table[a]["step_predicted"] < table[b]["step_predicted"]):
                wrong.append(f"{a} vs {b}")
    if len(variants) > 1:
        print("freeze variants in the measured order wherever they differ by more than the noise: "
              + ("yes" if not wrong else f"no ({'; '.join(wrong)})"))
    print(f"machine: {profile.name}, {profile.source}; {time.perf_counter() - started:.0f} s in all")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "table": table, "noise": noise,
                                               "machine": profile.public()}, indent=2))


if __name__ == "__main__":
    main()
