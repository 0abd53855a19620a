"""The DeepSpeed engine around the trainable part of a compiled model.

One process needs no launcher: the distributed environment DeepSpeed expects
is filled in here (gloo on CPU); several ranks are started by `graphspec.runtime.launch`.
Only trainable parameters reach DeepSpeed, in the compiled groups; frozen
modules are pinned to eval mode after every `train()`; wholly frozen input
towers run outside the engine (`graphspec.runtime.towers`).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast

import torch
import torch.fx as fx

from graphspec.compiler.ds_config import resolve_accelerator
from graphspec.compiler.layers.attention import unfused_library_attention
from graphspec.compiler.freeze import FreezePlan
from graphspec.compiler.placement import frozen_dtype
from graphspec.language.errors import EnvironmentProblem, Issue, SpecError
from graphspec.language.schema import Spec

from . import devices, ranks
from .launch import SELF_STARTED, free_port
from .model_cut import ModelCut
from .tower_cache import default_root
from .towers import TowerRunner

if TYPE_CHECKING:
    from deepspeed import DeepSpeedEngine
    from torch.optim import Optimizer


def distributed_env(spec: Spec) -> None:
    """What `deepspeed.initialize` needs: a launcher's ranks are checked against the spec's world size; one
    process without a launcher gets the environment filled in (else DeepSpeed tries MPI)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world != spec.distributed.world_size:
        raise SpecError([Issue(("distributed", "world_size"),
                               f"the spec asks for {spec.distributed.world_size} processes, but this run has {world}",
                               f"start it with `graphspec run` (which launches {spec.distributed.world_size}), or "
                               f"give `--nproc {world}`")])
    os.environ.setdefault("DS_ACCELERATOR", resolve_accelerator(spec))
    if "LOCAL_RANK" not in os.environ:
        os.environ[SELF_STARTED] = "1"  # not a launcher's rank: `launched()` must stay false in this process
    for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "127.0.0.1")):
        os.environ.setdefault(key, value)
    os.environ.setdefault("MASTER_PORT", free_port())


@dataclass
class Trainer:
    engine: "DeepSpeedEngine"
    optimizer: "Optimizer"
    scheduler: object
    cut: ModelCut
    eval_modules: list[str]
    towers: TowerRunner

    @property
    def dtype(self) -> torch.dtype:
        return next(self.engine.module.parameters()).dtype

    def train(self) -> None:
        self.engine.train()
        self.pin_eval()

    def eval(self) -> None:
        self.engine.eval()

    def pin_eval(self) -> None:
        """engine.train() turns dropout back on everywhere; frozen modules compute a fixed function."""
        self.towers.eval()
        for name in self.eval_modules:
            self.engine.module.get_submodule(name).eval()

    @property
    def device(self) -> torch.device:
        return torch.device(cast(torch.device, self.engine.device))

    def move(self, batch: dict) -> dict:
        """A micro batch's one move to the training device: the forward and the losses both read what this
        returns (runtime.devices)."""
        return devices.to_device(batch, self.device)

    def forward(self, batch: dict) -> dict:
        """The model's outputs, on the training device, for a batch `move` gave."""
        towers = self.towers(batch)
        inputs = devices.to_device(self.cut.inner_inputs(batch, towers), self.device, self.dtype)
        return self.engine(**inputs)

    def host_forward(self, batch: dict) -> dict:
        """A batch made on the host in, the outputs back on the host: what validation's metrics read, beside
        the targets the task made there."""
        return devices.to_host(self.forward(self.move(batch)))


class _NotBeforeStart(logging.Filter):
    """DeepSpeed's scheduler warns when initialize reads its first learning rate; that read is expected."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "before it has started" not in record.getMessage()


def unbuilt_ops(spec: Spec) -> list[str]:
    """DeepSpeed's C++ ops this run compiles before it starts, because neither the installation (DeepSpeed
    built with DS_BUILD_OPS) nor an earlier run of it did: on the CPU its shared-memory collectives always; its
    CPU Adam when the optimizer is offloaded, on any accelerator (on a GPU machine DeepSpeed compiles it with
    the CUDA toolkit). torch keeps what it compiled under its extensions folder (TORCH_EXTENSIONS_DIR), one
    folder per op, whose build.ninja names the sources; another installation of DeepSpeed (a virtual
    environment) builds again."""
    from torch.utils.cpp_extension import _get_build_directory

    names = []
    if _accelerator(spec) == "cpu":
        names.append("deepspeed_shm_comm")
    if spec.distributed.offload_optimizer != "none":
        names.append("cpu_adam")
    try:
        import deepspeed
        from deepspeed.git_version_info import installed_ops

        sources = str(Path(deepspeed.__file__).resolve().parent)

        def built(name: str) -> bool:
            if installed_ops.get(name):
                return True
            folder = Path(_get_build_directory(name, verbose=False))
            ninja = folder / "build.ninja"
            return (folder / f"{name}.so").is_file() and ninja.is_file() and sources in ninja.read_text()

        return [n for n in names if not built(n)]
    except Exception:  # noqa: BLE001 - a private torch helper: if it changes, say nothing rather than fail
        return []


def own_extensions_folder() -> str | None:
    """Give this installation of DeepSpeed and torch a folder of its own for the C++ ops torch compiles
    (TORCH_EXTENSIONS_DIR, unless the user set it): torch's default is one folder per op name for every
    installation, and ninja rebuilds an op whenever its command line names other include paths, so two
    virtual environments on one machine (a checkout and a fresh clone, a study's venv and the user's) rebuilt
    each other's ops, 30-50 s each here, at the start of the next run of either. The folder, inherited by
    the ranks and a study's stages, is returned (None: the user's own)."""
    import hashlib
    import sys

    if os.environ.get("TORCH_EXTENSIONS_DIR"):
        return None
    try:
        import deepspeed
        from torch.utils.cpp_extension import get_default_build_root
    except ImportError:
        return None
    key = "|".join([str(Path(deepspeed.__file__).resolve().parent), str(Path(torch.__file__).resolve().parent),
                    sys.version])
    folder = str(Path(get_default_build_root()) / f"graphspec-{hashlib.sha256(key.encode()).hexdigest()[:12]}")
    os.environ["TORCH_EXTENSIONS_DIR"] = folder
    return folder


def _accelerator(spec: Spec) -> str:
    return os.environ.get("DS_ACCELERATOR") or resolve_accelerator(spec)


def check_toolchain(spec: Spec, unbuilt: list[str]) -> None:
    """On a GPU machine DeepSpeed compiles its CPU Adam (optimizer offload) with the CUDA toolkit's nvcc: where
    torch finds none, say so before the engine starts, not as a compiler error a minute into it."""
    if "cpu_adam" not in unbuilt or _accelerator(spec) != "cuda":
        return
    from torch.utils import cpp_extension

    if cpp_extension.CUDA_HOME is None:
        raise EnvironmentProblem([Issue(
            ("distributed", "offload_optimizer"), "DeepSpeed compiles its CPU Adam (for the offloaded optimizer) "
            "with the CUDA toolkit on a GPU machine, and torch finds none here (no CUDA_HOME, no nvcc on PATH)",
            "load the CUDA toolkit (e.g. `module load cuda`, or set CUDA_HOME), or install DeepSpeed with the op "
            "built in (`DS_BUILD_CPU_ADAM=1 pip install deepspeed`), or set distributed.offload_optimizer: none")],
            title="the run cannot start")


def announce_op_builds(spec: Spec) -> float | None:
    """Say, before the silent minute it takes, that DeepSpeed is about to compile ops; the start time."""
    names = unbuilt_ops(spec)
    if not names:
        return None
    if ranks.is_main():
        print(f"graphspec: DeepSpeed compiles {' and '.join(names)} first, once per installation (with gcc; "
              f"usually 30-60 s each here), then keeps {'them' if len(names) > 1 else 'it'} for later runs", flush=True)
    return time.perf_counter()


def make_trainer(spec: Spec, model: fx.GraphModule, plan: FreezePlan, groups: list[dict], ds_config: dict,
                 placed: dict[str, dict] | None) -> Trainer:
    """The engine over the trainable part, the frozen towers where the build placed them (`placed`, see
    graphspec.compiler.placement); None keeps them inside the engine (a baseline to compare)."""
    own_extensions_folder()  # every way in (command, benchmark, test, notebook) builds DeepSpeed's ops once
    distributed_env(spec)
    import deepspeed
    from deepspeed.utils import logger

    logger.addFilter(_NotBeforeStart())

    cut = ModelCut(model, [n for n, row in (placed or {}).items() if row["where"] == "outside"])
    params = dict(cut.inner.named_parameters())
    param_groups = [{"params": [params[n] for n in g["params"]], "weight_decay": g["weight_decay"],
                     "lr": spec.train.optimizer.lr * g["lr_scale"], "name": g["name"]} for g in groups]
    check_toolchain(spec, unbuilt_ops(spec))
    building = announce_op_builds(spec)
    engine, optimizer, _, scheduler = deepspeed.initialize(model=cut.inner, model_parameters=param_groups,
                                                          config=ds_config)
    if building is not None and ranks.is_main():
        print(f"graphspec: DeepSpeed's start, op builds included, took {time.perf_counter() - building:.0f} s",
              flush=True)
    if engine.device.type == "cpu" and spec.train.kernels == "fast":
        unfused_library_attention(model)
    towers = TowerRunner(cut, placed or {}, frozen_dtype(spec), engine.device, plan.train_mode)
    if spec.distributed.frozen.cache_outputs:
        from graphspec.compiler.preprocess import image_transform

        images = {spec.inputs[n].tensors(n)[0]: image_transform(spec, n, model).signature
                  for n, i in spec.inputs.items() if i.modality == "image"}
        towers.use_cache(Path(spec.distributed.frozen.cache_dir) if spec.distributed.frozen.cache_dir
                         else default_root(), images)
    inside = set(params)
    trainer = Trainer(engine, optimizer, scheduler, cut, [m for m in plan.eval_modules if
                                                          any(p.startswith(m + ".") for p in inside)], towers)
    trainer.train()
    return trainer
