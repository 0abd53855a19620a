"""A training device that a CPU-only machine can observe.

On a GPU, a CPU tensor meeting a CUDA tensor in one operation raises ("Expected all tensors to be on the same
device"). Here everything is on the CPU, so a target left behind on the host goes unnoticed. `observe_device`
makes the device visible: what graphspec.runtime.devices moves to the device becomes a `Device` tensor (a CPU
tensor underneath, whose `.device` says `FAKE`), what it moves back to the host a plain one, tensors created
with `device=` a Device tensor's device are Device tensors too, the model's modules compute on the plain tensors
underneath and hand Device tensors out, and any operation mixing a Device tensor with a host tensor of more
than one element raises, as CUDA does (CUDA accepts CPU scalars, and CPU index tensors for indexing).
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any, TypeVar

import torch
from torch.overrides import TorchFunctionMode

from graphspec.runtime import devices

T = TypeVar("T")
FAKE = torch.device("meta")  # what a Device tensor's `.device` says; nothing is ever allocated there

MIXED = "Expected all tensors to be on the same device"
_INDEXING = {torch.Tensor.__getitem__, torch.Tensor.__setitem__, torch.Tensor.index_select, torch.index_select,
             torch.Tensor.gather, torch.gather}


def _leaves(value):
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _leaves(v)
    elif isinstance(value, (tuple, list)):
        for v in value:
            yield from _leaves(v)


class Device(torch.Tensor):
    """A tensor on the observed training device."""

    @property
    def device(self) -> torch.device:  # type: ignore[override]
        return FAKE

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.cpu or (func is torch.Tensor.to and _to_host(args, kwargs)):
            return args[0].as_subclass(torch.Tensor).cpu()  # leaves the device: a host tensor
        checked = args[:1] if func in _INDEXING else (args, kwargs)  # CUDA takes host indices
        leaves = list(_leaves(checked))
        if any(isinstance(t, Device) for t in leaves):
            strays = [tuple(t.shape) for t in leaves if not isinstance(t, Device) and t.dim() > 0]
            if strays:
                raise RuntimeError(f"{MIXED}, but found a host tensor {strays[0]} beside a device one in "
                                   f"{getattr(func, '__name__', func)} (tests/runtime/devices.py)")
        return super().__torch_function__(func, types, args, kwargs)


def _to_host(args, kwargs) -> bool:
    target = kwargs.get("device", args[1] if len(args) > 1 else None)
    return isinstance(target, (str, torch.device)) and torch.device(target).type == "cpu"


def on_device(value: T) -> T:
    """Tensors (in dicts, tuples, lists) as `Device` tensors, keeping their autograd history."""
    out: Any = value
    if isinstance(value, torch.Tensor):
        out = value if isinstance(value, Device) else value.as_subclass(Device)
    elif isinstance(value, dict):
        out = {k: on_device(v) for k, v in value.items()}
    elif isinstance(value, (tuple, list)):
        out = type(value)(on_device(v) for v in value)
    return out


def host(value: T) -> T:
    """The plain tensors underneath (in dicts, tuples, lists)."""
    out: Any = value
    if isinstance(value, Device):
        out = value.as_subclass(torch.Tensor)
    elif isinstance(value, dict):
        out = {k: host(v) for k, v in value.items()}
    elif isinstance(value, (tuple, list)):
        out = type(value)(host(v) for v in value)
    return out


class _OnFake(TorchFunctionMode):
    """Tensors made or moved with `device=FAKE` (a Device tensor's device) are Device tensors on the CPU."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func is torch.Tensor.to and (kwargs.get("device") == FAKE or (len(args) > 1 and args[1] == FAKE)):
            return on_device(host(args[0]))
        if kwargs.get("device") == FAKE:
            kwargs["device"] = "cpu"
            return on_device(func(*args, **kwargs))
        return func(*args, **kwargs)


def compute_underneath(module, monkeypatch) -> None:
    """`module` computes on the plain tensors under its inputs and hands Device tensors out (its weights are
    on the observed device too, as far as the test is concerned)."""
    real = module.forward

    @functools.wraps(real)  # the same signature: callers read it (graphspec eval does)
    def forward(*args, **kwargs):
        return on_device(real(*host(args), **host(kwargs)))

    monkeypatch.setattr(module, "forward", forward)


@contextlib.contextmanager
def observed(monkeypatch, modules=()):
    """While open, the runtime's moves (graphspec.runtime.devices) tag and untag, tensors made with a Device
    tensor's device are Device tensors, and `modules` compute underneath."""
    to_device, to_host = devices.to_device, devices.to_host

    def moved(value, device, dtype=None):
        out = to_device(host(value), torch.device("cpu") if device == FAKE else device, dtype)
        return {k: v if isinstance(k, str) and k.startswith("_") else on_device(v) for k, v in out.items()} \
            if isinstance(out, dict) else on_device(out)

    monkeypatch.setattr(devices, "to_device", moved)
    monkeypatch.setattr(devices, "to_host", lambda value: to_host(host(value)))
    for module in modules:
        compute_underneath(module, monkeypatch)
    with _OnFake():
        yield


def observe_device(trainer, monkeypatch):
    """`observed` for a run's trainer: its engine's model and every tower outside it; its backward takes the
    loss's plain tensor underneath."""
    real_backward = trainer.engine.backward
    monkeypatch.setattr(trainer.engine, "backward", lambda loss, *a, **k: real_backward(host(loss), *a, **k))
    return observed(monkeypatch, [trainer.engine.module, *trainer.cut.towers.values()])
