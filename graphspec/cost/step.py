"""One micro batch's training step, counted: FLOPs per node (forward, backward), the bytes each node saves for
the backward, and the most bytes of activations alive at once.

The step is the run's (runtime.train): the towers the build placed outside
the engine run under no_grad in their own precision, the rest in the training
precision with frozen modules in eval mode; the task's losses; the backward,
where autograd runs what it must (a frozen node that gradients pass through,
not one upstream of everything trainable; the extra forward of a node with
activation checkpointing). On the meta device (`Shadows`) nothing is
allocated or computed; the tests hold its count equal to torch's
FlopCounterMode over the same step run for real (`prepare`, `plain_step`).
What an op costs and which attention kernel it takes is `kernels`.
"""

from __future__ import annotations

import time
import weakref
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import cast

import torch
import torch.fx as fx
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from graphspec.compiler.freeze import FreezePlan
from graphspec.compiler.layers.attention import unfused_library_attention
from graphspec.runtime import devices
from graphspec.runtime.model_cut import ModelCut
from graphspec.runtime.towers import DTYPES

from .kernels import FORMULAS, kernels_of
from .shadow import Shadows

TRAINING_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclass
class NodeCount:
    fwd_flops: int = 0
    bwd_flops: int = 0
    saved_bytes: int = 0  # activations this node's forward saves for the backward


@dataclass
class StepCount:
    nodes: dict[str, NodeCount] = field(default_factory=dict)
    peak_live_bytes: int = 0  # the most activation and temporary bytes alive at once (weights not counted)
    saved_bytes: int = 0  # saved for the backward at the end of the forward, all nodes
    batch_bytes: int = 0  # the micro batch's own tensors
    products: dict = field(default_factory=dict)  # (op, operand shapes, dtype) -> calls
    traffic: int = 0  # bytes moved by the ops that are not products (norms, softmax, activations, casts)
    kernels: int = 0  # ops that compute

    @property
    def fwd_flops(self) -> int:
        return sum(n.fwd_flops for n in self.nodes.values())

    @property
    def bwd_flops(self) -> int:
        return sum(n.bwd_flops for n in self.nodes.values())

    @property
    def flops(self) -> int:
        return self.fwd_flops + self.bwd_flops


class _Live(TorchDispatchMode):
    """Bytes of the tensors ops make that are still referenced, and their most at once. A storage counts while
    a Python tensor over it lives (saved-tensor hooks keep autograd's saved ones referenced)."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: dict[int, int] = {}
        self.size: dict[int, int] = {}
        self.watch: dict[int, weakref.ref] = {}  # the weak references must live for their callbacks to run
        self.now = self.peak = 0

    def _gone(self, key: int, ref) -> None:
        self.watch.pop(id(ref), None)
        self.refs[key] -= 1
        if not self.refs[key]:
            del self.refs[key]
            self.now -= self.size.pop(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in (out,) if isinstance(out, torch.Tensor) else tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and not isinstance(t, nn.Parameter):
                storage = t.untyped_storage()
                key = storage._cdata
                if key not in self.refs:
                    self.refs[key] = 0
                    self.size[key] = storage.nbytes()
                    self.now += self.size[key]
                    if self.now > self.peak:
                        self.peak = self.now
                self.refs[key] += 1
                ref = weakref.ref(t, lambda ref, key=key: self._gone(key, ref))
                self.watch[id(ref)] = ref
        return out


class _Flops(TorchDispatchMode):
    """FLOPs by node: a forward op to the node whose forward runs it; a backward op to the node whose forward
    made the autograd node it runs in (`claim`), or to the node recomputing its forward (checkpointing)."""

    def __init__(self, current: list[str]) -> None:
        super().__init__()
        self.current = current
        self.products: dict[tuple, int] = {}  # (op, shapes, dtype) -> calls: the matrix products, for timing
        self.traffic = 0  # bytes read and written by every other op that computes (views do not)
        self.kernels = 0  # ops that compute: each a kernel launch on an accelerator
        self.owner: dict[int, tuple[str, object]] = {}  # id(autograd node) -> (graph node, the node, kept alive)
        self.fwd: dict[str, int] = {}
        self.bwd: dict[str, int] = {}
        self.backward = False

    def claim(self, node: str, outputs) -> None:
        """The autograd nodes a graph node's forward made: reachable from its outputs, not claimed before."""
        todo = [t.grad_fn for t in tree_flatten(outputs)[0] if isinstance(t, torch.Tensor) and t.grad_fn]
        while todo:
            fn = todo.pop()
            if fn is None or id(fn) in self.owner:
                continue
            self.owner[id(fn)] = (node, fn)
            todo.extend(f for f, _ in fn.next_functions if f is not None)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = FORMULAS.get(func._overloadpacket) or FORMULAS.get(func)
        self._note(func, args, out, formula is not None)
        if formula is not None:
            n = formula(*args, **kwargs, out_val=out)
            if not self.backward:
                node = self.current[-1] if self.current else "(losses)"
                self.fwd[node] = self.fwd.get(node, 0) + n
            else:
                grad_fn = torch._C._current_autograd_node()
                node = self.current[-1] if self.current else self.owner.get(id(grad_fn), ("(losses)",))[0]
                self.bwd[node] = self.bwd.get(node, 0) + n
        return out

    def _note(self, func, args, out, product: bool) -> None:
        ins = [t for t in tree_flatten(args)[0] if isinstance(t, torch.Tensor)]
        outs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        read = {t.untyped_storage()._cdata for t in ins}
        if outs and all(o.untyped_storage()._cdata in read for o in outs) and not func._schema.is_mutable:
            return  # a view: no kernel, no traffic
        self.kernels += 1
        if product:
            name = func._overloadpacket.__name__
            key = (name, tuple(tuple(t.shape) for t in ins[:3]), str(ins[0].dtype) if ins else "")
            self.products[key] = self.products.get(key, 0) + 1
        else:
            self.traffic += sum(t.numel() * t.element_size() for t in (*ins, *outs))


class _Root(nn.Module):
    """The step's forward, as one module: the counter names every module below it (`_Root.cut.inner.NODE`,
    `_Root.cut.towers.NODE`)."""

    def __init__(self, cut: ModelCut, device: torch.device, dtype: torch.dtype, outside_dtype: torch.dtype):
        super().__init__()
        self.cut, self.device, self.dtype, self.outside_dtype = cut, device, dtype, outside_dtype

    def forward(self, batch: dict) -> dict:
        cut = self.cut
        with torch.no_grad():
            towers = {n: t(*[devices.to_device(batch[a], self.device, self.outside_dtype) for a in cut.tower_args[n]])
                      for n, t in cut.towers.items()}
        return cut.inner(**devices.to_device(cut.inner_inputs(batch, towers), self.device, self.dtype))


def _node_modules(cut: ModelCut) -> dict[str, tuple[str, nn.Module]]:
    """The counter's name of each node's module -> (the node, as the summary names it, the module)."""
    out = {f"_Root.cut.towers.{n}": (n, t) for n, t in cut.towers.items()}
    for name, module in cut.inner.named_children():
        if name == "heads":
            out.update({f"_Root.cut.inner.heads.{h}": (f"heads.{h}", m) for h, m in module.named_children()})
        else:
            out[f"_Root.cut.inner.{name}"] = (name, module)
    return out


def prepare(model: nn.Module, plan: FreezePlan, outside: list[str], precision: str, outside_dtype: str,
            device: str = "meta", accelerator: str = "cpu", kernels: str = "fast") -> "_Root":
    """`model` set up as the run sets it up: cut around its outside towers, each part in its precision, frozen
    modules in eval mode, the CPU's attention kernels where the run uses them (the engine's
    `unfused_library_attention`)."""
    if accelerator == "cpu" and kernels == "fast":
        unfused_library_attention(model)
    cut = ModelCut(cast(fx.GraphModule, model), outside)
    dtype = TRAINING_DTYPES[precision]
    root = _Root(cut, torch.device(device), dtype, DTYPES[outside_dtype])
    cut.inner.to(dtype)
    for tower in cut.towers.values():
        tower.to(DTYPES[outside_dtype])
    model.train()
    for name in plan.eval_modules:
        model.get_submodule(name).eval()
    for name in outside:
        cut.towers[name].train(name in plan.train_mode)
    return root


def plain_step(root: "_Root", losses, batch: dict) -> float:
    """One forward and backward of a prepared model on a real device, nothing counted: its seconds."""
    start = time.perf_counter()
    loss = losses(root(batch), batch)["loss"]
    if loss.requires_grad:
        loss.backward()
    for p in root.parameters():
        p.grad = None
    return time.perf_counter() - start


def count_step(model: nn.Module, plan: FreezePlan, outside: list[str], losses, batch: dict, precision: str,
               outside_dtype: str, device: str = "meta", accelerator: str = "cpu", kernels: str = "fast",
               memory: bool = True) -> StepCount:
    """Run one micro batch's step of `model` (built for `device`: `build_weights(..., meta=True)` for the meta
    device) and count it. `outside`: the nodes the build placed outside the engine; `losses(out, batch)`: the
    task's losses; `batch`: the task's micro batch as made on the host; `accelerator` and `kernels`: the run's,
    which decide its attention kernels; `memory`: False counts FLOPs alone (no saved or live bytes: faster)."""
    root = prepare(model, plan, outside, precision, outside_dtype, device, accelerator, kernels)
    cut = root.cut
    nodes = _node_modules(cut)
    params = {p.untyped_storage()._cdata for p in model.parameters()}
    count = StepCount(batch_bytes=sum(t.numel() * t.element_size() for t in tree_flatten(batch)[0]
                                      if isinstance(t, torch.Tensor)))
    saved: dict[str, dict[int, int]] = {}
    current: list[str] = []
    flops = _Flops(current)
    handles = []
    for node, module in nodes.values():
        handles.append(module.register_forward_pre_hook(lambda *_, node=node: current.append(node)))
        handles.append(module.register_forward_hook(lambda _m, _i, out, node=node: flops.claim(current.pop(), out)))
    backward = [False]

    def pack(t: torch.Tensor):
        st = t.untyped_storage()
        if not backward[0] and current and st._cdata not in params:
            saved.setdefault(current[-1], {})[st._cdata] = st.nbytes()
        return t

    shadows = Shadows() if device == "meta" else None
    live = _Live()
    try:
        with ExitStack() as stack:
            if shadows is not None:
                stack.enter_context(kernels_of(accelerator))
                stack.enter_context(shadows)
                batch = shadows.meta(batch)
            if memory:
                stack.enter_context(live)
            stack.enter_context(flops)
            if memory:
                stack.enter_context(torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t))
            out = root(batch)
            loss = losses(out, batch)["loss"]
            count.saved_bytes = sum(b for node in saved.values() for b in node.values())
            backward[0] = flops.backward = True
            if loss.requires_grad:
                loss.backward()
            del out, loss
    finally:
        for h in handles:
            h.remove()
    count.peak_live_bytes = live.peak
    count.products, count.traffic, count.kernels = flops.products, flops.traffic, flops.kernels
    for node in {*flops.fwd, *flops.bwd, *saved}:
        count.nodes[node] = NodeCount(flops.fwd.get(node, 0), flops.bwd.get(node, 0),
                                      sum(saved.get(node, {}).values()))
    return count
