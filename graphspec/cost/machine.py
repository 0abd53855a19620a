"""What a machine does per second, as the cost model reads it: a profile.

A profile is either measured on this machine (`graphspec calibrate`, stored
per machine and library versions under the cache folder: $GRAPHSPEC_CACHE,
default ~/.cache/graphspec, in `machines/`), refitted from a finished run
(`graphspec calibrate --from RUN_DIR`), or a named accelerator's datasheet
with a utilisation prior (uncalibrated, and wide: models of this size reach
single-digit to low-teens percent of an accelerator's peak in eager mode,
their time spent in launches and memory-bound ops, not in the large GEMMs
of language-model tables).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

FORMAT = 1


@dataclass
class Profile:
    name: str
    kind: str  # "cpu" or the accelerator ("cuda")
    gemm: dict  # dtype ("bfloat16", "float32") -> matrix-product rate, FLOP/s, at the model's shapes
    traffic: dict  # dtype -> bytes/s the other ops (norms, softmax, activations, casts) move, as measured in steps
    launch_s: float  # seconds per op that computes (an accelerator's kernel launch; the CPU's dispatch)
    optimizer_s: float  # seconds per trainable parameter of an optimizer step (fp32 master and Adam)
    step_s: float  # the engine's fixed cost per optimizer step
    zero3_s: float  # ZeRO-3's cost per parameter tensor per micro step (gathers, hooks)
    baseline_mb: float  # resident memory of a training process before its model (torch, libraries, engine)
    memory_gb: float  # the device's memory (the host's on the CPU)
    threads: int = 0  # the CPU threads it was measured with (a rank of several gets its share)
    calibrated: bool = False
    source: str = ""
    date: str = ""
    spread: float = 0.35  # the relative width of a prediction's range
    fits: dict = field(default_factory=dict)  # what a calibration measured, for the record

    def public(self) -> dict:
        return {"name": self.name, "kind": self.kind, "calibrated": self.calibrated,
                "source": self.source, "date": self.date}


def _datasheet(name: str, bf16_tflops: float, fp32_tflops: float, bandwidth_gbs: float, memory_gb: float) -> Profile:
    """A datasheet's peaks with the priors: 8% of the dense bf16/fp32 peak at these models' GEMM shapes, 40% of
    the memory bandwidth for the other ops, 10 us per launched op (eager mode: a step is thousands of them)."""
    return Profile(name, "cuda", {"bfloat16": bf16_tflops * 1e12 * 0.08, "float32": fp32_tflops * 1e12 * 0.08},
                   {"bfloat16": bandwidth_gbs * 1e9 * 0.4, "float32": bandwidth_gbs * 1e9 * 0.4}, 10e-6,
                   2e-9, 0.01, 2e-4, 800.0, memory_gb, 0, False,
                   f"datasheet peaks ({bf16_tflops:g} TFLOP/s bf16 dense, {bandwidth_gbs:g} GB/s) with a "
                   "utilisation prior of 8% (4-15%): uncalibrated", "", 0.6,
                   {"peak": {"bfloat16": bf16_tflops * 1e12, "float32": fp32_tflops * 1e12}})


NAMED = {p.name: p for p in (
    _datasheet("a100-40gb", 312, 19.5, 1555, 40),
    _datasheet("a100-80gb", 312, 19.5, 2039, 80),
    _datasheet("h100-sxm", 989, 67, 3350, 80),
    _datasheet("h200", 989, 67, 4800, 141),
    _datasheet("l4", 121, 30.3, 300, 24),
)}


def cache_root() -> Path:
    env = os.environ.get("GRAPHSPEC_CACHE")
    return (Path(env) if env else Path.home() / ".cache" / "graphspec") / "machines"


def this_machine() -> str:
    """This host's identity for its calibration: processor, cores, and the libraries that do the arithmetic."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from graphspec.compiler.tower_records import library_version

    versions = {d: library_version(d) for d in ("torch", "transformers", "timm", "deepspeed")}
    key = json.dumps({"cpu": cpu, "threads": torch.get_num_threads(), **versions}, sort_keys=True)
    return f"{platform.node() or 'host'}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def path_of(name: str) -> Path:
    return cache_root() / f"{name}.json"


def save(profile: Profile, name: str | None = None) -> Path:
    path = path_of(name or profile.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"format": FORMAT, **asdict(profile)}, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def load(name: str) -> Profile | None:
    """A stored profile, or None (none stored, or one this graphspec cannot read)."""
    try:
        data = json.loads(path_of(name).read_text())
        if data.pop("format", None) != FORMAT:
            return None
        return Profile(**data)
    except (OSError, ValueError, TypeError):
        return None


def _gpu_profile() -> str | None:
    """The named profile of this machine's first CUDA device, when it has one graphspec knows."""
    import torch

    if not torch.cuda.is_available():
        return None
    device = torch.cuda.get_device_name(0).upper()
    for key, name in (("H200", "h200"), ("H100", "h100-sxm"), ("A100", "a100-80gb" if "80G" in device
                                                                   else "a100-40gb"), ("L4", "l4")):
        if key in device:
            return name
    return None


def resolve(name: str) -> tuple[Profile, str | None]:
    """The profile `name` means ("this": this machine's, measured or refitted when it was, else its GPU's
    datasheet or this CPU's rough prior; a named accelerator; or a stored one), and a note when it is not
    calibrated."""
    if name in ("this", "", None, this_machine()):
        gpu = _gpu_profile()
        if gpu is not None:
            return resolve(gpu)
        found = load(this_machine())
        if found is not None:
            return found, None
        return replace(CPU_PRIOR, name=this_machine()), (
            "this machine is not calibrated: the step time is a rough prior; `graphspec calibrate SPEC` (at "
            "most a minute, at the spec's shapes) measures it")
    stored = load(name)
    if stored is not None:
        return stored, None
    if name in NAMED:
        return NAMED[name], (f"{name} is uncalibrated: {NAMED[name].source}; one short run there and "
                             f"`graphspec calibrate --from RUN_DIR` calibrates it")
    raise KeyError(name)


# A 2-core CPU of this project's kind before calibration: wide on purpose.
CPU_PRIOR = Profile("cpu-prior", "cpu", {"bfloat16": 300e9, "float32": 100e9}, {"bfloat16": 3e9, "float32": 3e9},
                    5e-6, 2e-9, 0.02, 2e-3, 900.0, 0.0, 0, False, "a rough prior for a small CPU: uncalibrated",
                    "", 0.6)
