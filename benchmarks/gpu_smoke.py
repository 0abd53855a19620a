"""The GPU smoke test: what the CPU machine could only read, run once on a GPU machine (at most 10 minutes on
one GPU, a few more with two).

    bash benchmarks/gpu_smoke.sh [--dry-run] [--out DIR]

Each check prints PASS or FAIL and what it saw, and the script exits 1 if any failed; every command's output
goes to DIR/NN-name.log. The checks: the GPUs torch sees (and nvcc); an NCCL all-reduce beside graphspec's host
group; the quickstart model trained in fp32 (TF32), bf16 ZeRO-2, bf16 ZeRO-3 and fp16; a frozen tower whose
outputs are cached and whose weights are offloaded layer by layer, run twice (the second run reads the cache);
a deterministic run stopped by SIGTERM and resumed, its losses against an uninterrupted run's; the optimizer
offloaded (DeepSpeed's CPU Adam, built with nvcc); `graphspec eval --device cuda`, an export, `load_model` on
the GPU and the `.pt2` program moved there; two ranks with `--nproc 2` where there are two GPUs; and the tests
that need a GPU, with DS_ACCELERATOR=cuda.

`--dry-run`, on any machine (CI runs it): every spec and override the checks use validates (for
`distributed.accelerator: cuda`), every graphspec command line parses, every script exists, and the GPU tests
collect; nothing trains.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QUICK = "specs/quickstart.yaml"
TWIN = "specs/paper/exp1_cpu_twin.yaml"
CUDA = ["--set", "distributed.accelerator=cuda"]
SHORT = ["--set", "train.steps=20", "--set", "train.val_every=20", "--set", "train.log_every=5"]
RUNS = {  # name: (spec, overrides)
    "fp32-zero0": (QUICK, [*SHORT, "--set", "train.precision=fp32"]),
    "bf16-zero2": (QUICK, [*SHORT, "--set", "train.precision=bf16", "--set", "distributed.zero_stage=2"]),
    "bf16-zero3": (QUICK, [*SHORT, "--set", "train.precision=bf16", "--set", "distributed.zero_stage=3"]),
    "fp16-zero2": (QUICK, [*SHORT, "--set", "train.precision=fp16", "--set", "distributed.zero_stage=2"]),
    "offload-optimizer": (QUICK, [*SHORT, "--set", "distributed.zero_stage=2", "--set",
                                  "distributed.offload_optimizer=cpu"]),
}
FROZEN = (TWIN, ["--set", "train.steps=20", "--set", "train.val_every=null", "--set", "data.val=null",
                 "--set", "data.train.samples=160", "--set", "nodes.vision_tower.freeze=true", "--set",
                 "distributed.frozen.cache_outputs=true", "--set", "distributed.frozen.offload=cpu",
                 "--set", "train.precision=bf16"])
RESUME = (QUICK, ["--set", "train.steps=300", "--set", "train.val_every=null", "--set", "data.val=null",
                  "--set", "train.log_every=1", "--set", "train.checkpoint_every=100", "--set",
                  "train.deterministic=true", "--set", "nodes.fusion.dropout=0.1"])
NPROC = (QUICK, [*SHORT, "--set", "train.precision=bf16", "--set", "distributed.zero_stage=2"])
GPU_TESTS = ["tests/runtime/test_cuda.py", "tests/runtime/test_devices.py", "tests/runtime/test_collectives.py"]


class Smoke:
    def __init__(self, out: Path):
        self.out, self.results, self.count = out, [], 0
        out.mkdir(parents=True, exist_ok=True)

    def log(self, name: str) -> Path:
        self.count += 1
        return self.out / f"{self.count:02d}-{name}.log"

    def run(self, name: str, argv: list[str], env: dict | None = None, timeout: int = 300):
        """A command, its output to its log: (exit code, output)."""
        path = self.log(name)
        start = time.perf_counter()
        try:
            done = subprocess.run(argv, cwd=ROOT, env={**os.environ, **(env or {})}, capture_output=True, text=True,
                                  timeout=timeout)
            code, text = done.returncode, done.stdout + done.stderr
        except subprocess.TimeoutExpired as e:
            code, text = 124, f"{e.stdout or ''}{e.stderr or ''}\ntimed out after {timeout} s"
        path.write_text(f"$ {' '.join(argv)}\n{text}\nexit {code} in {time.perf_counter() - start:.1f} s\n")
        return code, text

    def check(self, name: str, ok: bool, said: str) -> bool:
        self.results.append((name, ok))
        print(f"{'PASS' if ok else 'FAIL'} {name}: {said}", flush=True)
        return ok


def graphspec(*args: str) -> list[str]:
    return [sys.executable, "-m", "graphspec.cli", *args]


def losses(run_dir: Path) -> dict[int, float]:
    path = run_dir / "metrics.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
    return {r["step"]: r["loss"] for r in records if "split" not in r and "loss" in r}


def summary(run_dir: Path) -> dict:
    path = run_dir / "summary.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def probe(s: Smoke) -> int:
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    from torch.utils.cpp_extension import CUDA_HOME

    names = ", ".join(torch.cuda.get_device_name(i) for i in range(count))
    s.check("gpus", count > 0, f"{count} GPU(s) ({names}); torch {torch.__version__}, CUDA {torch.version.cuda}, "
            f"CUDA_HOME {CUDA_HOME}")
    return count


def train(s: Smoke, name: str, spec: str, overrides: list[str], extra: list[str] = ()) -> Path:
    run_dir = s.out / "runs" / name
    code, text = s.run(name, graphspec("run", spec, *CUDA, *overrides, *extra, "--run-dir", str(run_dir),
                                       "--build-dir", str(s.out / "build" / name)))
    got = losses(run_dir)
    finite = bool(got) and all(math.isfinite(v) for v in got.values())
    val = summary(run_dir).get("val", {})
    s.check(f"train {name}", code == 0 and finite, f"exit {code}, {len(got)} losses logged, finite {finite}, "
            f"val {val or '-'}, step {summary(run_dir).get('step_time_s')} s")
    return run_dir


def frozen_twice(s: Smoke) -> None:
    runs = [train(s, f"frozen-cached-offloaded-{i}", *FROZEN, ["--set", f"distributed.frozen.cache_dir={s.out}/cache"])
            for i in (1, 2)]
    cache = summary(runs[1]).get("frozen_cache", {}).get("vision_tower", {})
    s.check("frozen tower cache read on the second run", cache.get("hits", 0) > 0 and cache.get("misses", 1) == 0,
            f"second run: {cache or 'no cache report'}")


def stop_and_resume(s: Smoke) -> None:
    whole = train(s, "deterministic-whole", *RESUME)
    stopped = s.out / "runs" / "deterministic-stopped"
    argv = graphspec("run", RESUME[0], *CUDA, *RESUME[1], "--run-dir", str(stopped), "--build-dir",
                     str(s.out / "build" / "deterministic-stopped"))
    process = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    while len(losses(stopped)) < 120 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)  # past the first periodic checkpoint (step 100)
    process.send_signal(signal.SIGTERM)
    out, _ = process.communicate(timeout=300)
    s.log("deterministic-stopped").write_text(out)
    code, text = s.run("deterministic-resumed", graphspec("run", "--resume", str(stopped)))
    a, b = losses(whole), losses(stopped)
    worst = max((abs(a[k] - b[k]) for k in a if k in b), default=math.inf)
    s.check("SIGTERM then resume", process.returncode == 75 and code == 0 and sorted(a) == sorted(b) and
            worst <= 1.5e-5, f"stopped with exit {process.returncode}, resumed with exit {code}, {len(b)} of "
            f"{len(a)} steps logged, largest loss difference {worst:.2e} (deterministic kernels)")


def leave_graphspec(s: Smoke, run_dir: Path) -> None:
    code, text = s.run("eval", graphspec("eval", str(run_dir), "--device", "cuda"))
    s.check("graphspec eval --device cuda", code == 0 and '"itm_acc"' in text, f"exit {code}, "
            f"{text.strip().splitlines()[-1] if text.strip() else ''}")
    folder = s.out / "export"
    code, text = s.run("export", graphspec("export", str(run_dir), "-o", str(folder)))
    s.check("graphspec export", code == 0 and (folder / "model.pt2").is_file(), f"exit {code}")
    probe_code = f"""
import numpy as np, torch, graphspec
from torch.export.passes import move_to_device_pass
model, processor = graphspec.load_model({str(folder)!r}, device="cuda")
rng = np.random.default_rng(0)
inputs = processor(images=[rng.integers(0, 255, (64, 80, 3), dtype=np.uint8) for _ in range(2)],
                   text=["a red circle", "two blue squares"])
with torch.no_grad():
    eager = model(**inputs)["itm_probability"]
    assert eager.is_cuda
    program = move_to_device_pass(torch.export.load({str(folder / 'model.pt2')!r}), "cuda").module()
    from graphspec.compiler.emit import input_names
    n = model.spec.inputs["text"].max_length
    for k in ("text_ids", "text_mask"):  # the program takes text padded to max_length
        inputs[k] = torch.nn.functional.pad(inputs[k], (0, n - inputs[k].shape[1]))
    out = program(*[inputs[k].cuda() for k in input_names(model.spec)])
    assert out["itm_probability"].is_cuda
    print("load_model on cuda", eager.tolist(), "program", out["itm_probability"].tolist())
    assert torch.allclose(eager.float(), out["itm_probability"].float(), atol=1e-3)
"""
    code, text = s.run("load-and-pt2", [sys.executable, "-c", probe_code])
    s.check("load_model and the .pt2 program on cuda", code == 0, text.strip().splitlines()[-1] if text.strip()
            else f"exit {code}")


def dry_run(s: Smoke) -> None:
    """Everything the checks would run exists and parses; nothing trains."""
    import graphspec
    from graphspec.cli import parser
    from graphspec.language.errors import GraphspecError

    specs = [(n, spec, o) for n, (spec, o) in RUNS.items()] + [("frozen", *FROZEN), ("resume", *RESUME),
                                                               ("nproc", *NPROC)]
    for name, spec, overrides in specs:
        sets = [o for o in overrides if o != "--set"] + ["distributed.accelerator=cuda"]
        try:
            graphspec.validate(graphspec.load(ROOT / spec, overrides=sets))
            s.check(f"spec {name}", True, f"{spec} with {len(sets)} overrides validates")
        except GraphspecError as e:
            s.check(f"spec {name}", False, e.format()[-600:])
    lines = [["run", QUICK, "--nproc", "2", "--run-dir", "r"], ["run", "--resume", "r"],
             ["eval", "r", "--device", "cuda"], ["export", "r", "-o", "e"],
             ["predict", "e", "--image", "x.png", "--text", "t", "--device", "cuda"]]
    for line in lines:
        try:
            parser().parse_args(line)
            s.check(f"command {line[0]}", True, " ".join(line))
        except SystemExit:
            s.check(f"command {line[0]}", False, f"does not parse: {' '.join(line)}")
    for script in ("benchmarks/nccl_probe.py", "benchmarks/gpu_smoke.sh"):
        s.check(f"script {script}", (ROOT / script).is_file(), "present")
    code, text = s.run("collect", [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                                   *GPU_TESTS])
    counts = dict(line.rsplit(": ", 1) for line in text.splitlines() if line.startswith("tests/") and ": " in line)
    s.check("GPU tests collect", code == 0 and int(counts.get("tests/runtime/test_cuda.py", 0)) > 0,
            ", ".join(f"{Path(f).name} {n}" for f, n in counts.items()) or "none")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dry-run", action="store_true", help="check that everything exists and parses; run nothing")
    p.add_argument("--out", default=str(ROOT / "runs" / f"gpu-smoke-{time.strftime('%Y%m%d-%H%M%S')}"),
                   help="where logs and runs go")
    args = p.parse_args()
    s = Smoke(Path(args.out))
    start = time.perf_counter()
    if args.dry_run:
        dry_run(s)
    elif probe(s):
        count = __import__("torch").cuda.device_count()
        ranks = min(2, count)
        code, text = s.run("nccl", [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                                    str(ranks), "benchmarks/nccl_probe.py"])
        s.check("NCCL and the host group", code == 0 and text.count(": ok") == ranks,
                " | ".join(line for line in text.splitlines() if line.startswith("rank ")) or f"exit {code}")
        done = {name: train(s, name, spec, overrides) for name, (spec, overrides) in RUNS.items()}
        frozen_twice(s)
        stop_and_resume(s)
        leave_graphspec(s, done["bf16-zero2"])
        if count >= 2:
            train(s, "nproc-2", *NPROC, ["--nproc", "2"])
        else:
            print("SKIP nproc-2: one GPU here", flush=True)
        code, text = s.run("gpu-tests", [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *GPU_TESTS],
                           env={"DS_ACCELERATOR": "cuda"}, timeout=420)
        s.check("tests with DS_ACCELERATOR=cuda", code == 0, (text.strip().splitlines() or ["no output"])[-1])
    failed = [name for name, ok in s.results if not ok]
    print(f"\n{len(s.results) - len(failed)} passed, {len(failed)} failed in {time.perf_counter() - start:.0f} s; "
          f"logs in {s.out}" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed or not s.results else 0


if __name__ == "__main__":
    sys.exit(main())
