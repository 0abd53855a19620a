"""Running the frozen towers that sit outside the engine: under no_grad, in their own precision, with weights
optionally streamed from CPU memory one layer at a time, and outputs optionally served from the disk cache.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from graphspec.compiler.layers.adapter import Adapter

from . import devices
from .resume import digest
from .model_cut import ModelCut
from .tower_cache import TowerCache

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


class LayerStream:
    """A module whose weights live in CPU memory and visit `device` only while they compute.

    Each layer of the tower's stack (its transformer blocks or CNN stages) is
    copied to the device before its forward and dropped after; the tower's other
    weights (embeddings, norms) for the whole tower forward. The CPU tensors stay
    the masters, untouched: frozen weights never change, so nothing is copied back.
    While a layer computes, the next one's copy is already on its way: on a GPU in a
    stream of its own, from pinned memory, so the copy overlaps the compute (the
    compute stream waits for it only where it needs it); elsewhere in turn. So at
    most two layers of the stack are on the device at once.
    """

    def __init__(self, tower: nn.Module, device: torch.device):
        self.device = device
        stack = tower.stack if isinstance(tower, Adapter) else None
        self.layers = list(tower.get_submodule(stack)) if stack else []
        inside = {id(m) for layer in self.layers for m in layer.modules()}
        self.rest = [m for m in tower.modules() if id(m) not in inside]
        if device.type == "cuda":  # pinned pages copy to the device asynchronously
            for m in tower.modules():
                for name, t in _own(m):
                    _put(m, name, t.detach().pin_memory())
        self.copier = torch.cuda.Stream(device) if device.type == "cuda" else None
        self.masters = {id(m): dict(_own(m)) for m in tower.modules()}
        self.ready: dict[int, tuple[list, torch.cuda.Event | None]] = {}  # layer -> (copies, the event ending them)
        self.handles = [tower.register_forward_pre_hook(lambda *_: self._move(self.rest)),
                        tower.register_forward_hook(lambda *_: self._drop(self.rest))]
        for k, layer in enumerate(self.layers):
            held = list(layer.modules())
            self.handles += [layer.register_forward_pre_hook(lambda *_, k=k: self._arrive(k)),
                             layer.register_forward_hook(lambda *_, held=held: self._drop(held))]

    def _fetch(self, k: int) -> None:
        """Start copying layer k's weights to the device (on the copy stream, where there is one)."""
        if k >= len(self.layers) or k in self.ready:
            return
        modules = list(self.layers[k].modules())
        if self.copier is None:
            self.ready[k] = ([(m, n, t.detach().to(self.device)) for m in modules
                              for n, t in self.masters[id(m)].items()], None)
            return
        with torch.cuda.stream(self.copier):
            copies = [(m, n, t.detach().to(self.device, non_blocking=True)) for m in modules
                      for n, t in self.masters[id(m)].items()]
            done = torch.cuda.Event()
            done.record(self.copier)
        self.ready[k] = (copies, done)

    def _arrive(self, k: int) -> None:
        """Before layer k computes: its copies in place (waiting for them on the compute stream only), and the
        next layer's copy started."""
        self._fetch(k)
        copies, done = self.ready.pop(k)
        if done is not None:
            compute = torch.cuda.current_stream(self.device)
            compute.wait_event(done)
            for _, _, t in copies:
                t.record_stream(compute)  # made on the copy stream, used on this one: freed after its use here
        for m, name, t in copies:
            _put(m, name, t)
        self._fetch(k + 1)

    def _move(self, modules: list[nn.Module]) -> None:
        for m in modules:
            for name, t in self.masters[id(m)].items():
                _put(m, name, t.detach().to(self.device, non_blocking=True))

    def _drop(self, modules: list[nn.Module]) -> None:
        for m in modules:
            for name, t in self.masters[id(m)].items():
                _put(m, name, t)


def _own(module: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """A module's own (not its children's) parameters and buffers."""
    return [(n, t) for n, t in [*module._parameters.items(), *module._buffers.items()] if t is not None]


def _put(module: nn.Module, name: str, tensor: torch.Tensor) -> None:
    """Swap in a tensor: a frozen parameter's device copy is a new parameter, the master stays as it was."""
    if name in module._parameters:
        module._parameters[name] = tensor if isinstance(tensor, nn.Parameter) else nn.Parameter(
            tensor, requires_grad=False)
    else:
        module._buffers[name] = tensor


class TowerRunner:
    """The outside towers of a model cut, placed as the compiled placement plan says."""

    def __init__(self, cut: ModelCut, rows: dict[str, dict], dtype: str, device: torch.device, train_mode=()):
        self.cut, self.rows, self.dtype_name, self.dtype, self.device = cut, rows, dtype, DTYPES[dtype], device
        self.train_mode = set(train_mode)
        self.streams: dict[str, LayerStream] = {}
        self.caches: dict[str, TowerCache] = {}
        self.image_caches: dict[str, tuple[str, TowerCache]] = {}  # image input -> (tower, its cache)
        for name, tower in cut.towers.items():
            tower.to(self.dtype)
            if rows.get(name, {}).get("weights") == "cpu, moved per layer" and device.type != "cpu":
                self.streams[name] = LayerStream(tower, device)
            else:
                tower.to(device)

    def use_cache(self, root: Path, image_inputs: dict[str, str]) -> None:
        """Serve the outputs of the towers the placement plan marks cacheable from `root`. `image_inputs`: the
        image input tensors and how their pixels are made (a tower reading one alone is keyed by the encoded
        image, which workers look up before decoding)."""
        for name, tower in self.cut.towers.items():
            if self.rows.get(name, {}).get("cache"):
                sha = digest((f"{name}.{n}", p) for n, p in tower.named_parameters())
                args = self.cut.tower_args[name]
                inputs = image_inputs.get(args[0], "") if len(args) == 1 else ""
                self.caches[name] = TowerCache(root, name, sha, self.dtype_name, inputs)
                self.image_caches[args[0]] = (name, self.caches[name]) if inputs else None
        self.image_caches = {k: v for k, v in self.image_caches.items() if v is not None}

    def cache_report(self) -> dict:
        return {name: cache.report() for name, cache in self.caches.items()}

    def eval(self) -> None:
        """Eval mode (dropout off) except where the spec keeps a frozen tower in train mode."""
        for name, tower in self.cut.towers.items():
            tower.train(name in self.train_mode)

    @torch.no_grad()
    def __call__(self, batch: dict) -> dict:
        out = {}
        for name, tower in self.cut.towers.items():
            args = [devices.to_device(batch[a], self.device, self.dtype) for a in self.cut.tower_args[name]]
            cache = self.caches.get(name)
            if cache is None:
                out[name] = tower(*args)
                continue
            known = dict(batch.get("_cache", {}).get(name) or {})  # keyed and looked up by the batch's worker
            cache.corrupt += known.pop("corrupt", 0)
            out[name] = cache.outputs(tower, args, **known) if known else cache.outputs(tower, args)
        return out

