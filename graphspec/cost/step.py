"""One micro batch's training step, counted: FLOPs per node (forward, backward), the bytes each node saves for
the backward, and the most bytes of activations alive at once.

The step is the run's (runtime.train): the towers the build placed outside
the engine run under no_grad in their own precision, the rest in the training
precision with frozen modules in eval mode; the task's losses; the backward,
where autograd runs what it must (a frozen node that gradients pass through,
not one upstream of everything trainable; the extra forward of a node with
activation checkpointing). On the meta device (`Shadows`) nothing is
allocated or computed; on a real device the same function counts a real step,
which is how the tests hold the two equal.
"""

from __future__ import annotations

import time
import weakref
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any, cast

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import (FlopCounterMode, conv_flop_count, flop_registry, sdpa_backward_flop_count,
                                      sdpa_flop_count, shape_wrapper)

from graphspec.compiler.freeze import FreezePlan
from graphspec.compiler.layers import attention
from graphspec.compiler.layers.attention import unfused_library_attention
from graphspec.runtime import devices
from graphspec.runtime.model_cut import ModelCut
from graphspec.runtime.towers import DTYPES

from .shadow import Shadows

aten = torch.ops.aten
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


def _cpu_flash(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query, key, value)


def _cpu_flash_backward(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out, query, key, value)


def _conv_backward(grad_out, x, w, bias, stride, padding, dilation, transposed, output_padding, groups,
                   output_mask, out_shape=None, **kwargs) -> int:
    """torch's count of a convolution's backward, its weight gradient per group: torch's formula ignores
    `groups` there, which counts a depthwise convolution's weight gradient C times over (EfficientNet's
    backward came out 40 times its forward)."""
    def t(shape):
        return [shape[1], shape[0], *shape[2:]]

    total = 0
    grad_input, grad_weight = out_shape[0], out_shape[1]  # type: ignore[index]  # torch passes them
    if output_mask[0]:
        total += conv_flop_count(grad_out, w, grad_input, not transposed)
    if output_mask[1]:
        pair = (t(grad_out), t(x)) if transposed else (t(x), t(grad_out))
        total += conv_flop_count(*pair, t(grad_weight), False) // groups
    return total


# torch's formulas (on shapes); the two it lacks (the CPU's fused attention: SDPA on the host, eager) and a
# grouped convolution's backward as it is
MAPPING = {aten._scaled_dot_product_flash_attention_for_cpu: _cpu_flash,
           aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_flash_backward,
           aten.convolution_backward: _conv_backward}
FORMULAS = {**flop_registry, **{op: shape_wrapper(f) for op, f in MAPPING.items()}}


def flop_counter() -> FlopCounterMode:
    """torch's FlopCounterMode with the CPU's fused attention counted (as torch counts the GPU's) and a grouped
    convolution's weight gradient per group."""
    return FlopCounterMode(display=False, custom_mapping=dict(MAPPING))


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


@contextmanager
def _kernels_of(accelerator: str):
    """SDPA on the meta device takes the kernel the run's device would: on the meta device torch always takes
    its math path (four products in the backward), where the CPU takes its flash kernel when
    `torch._fused_sdp_choice` says so (asked with stand-ins of the same shapes) and an accelerator its fused
    kernels (which recompute the scores: five). Both fused kernels are counted by the same formula."""
    original = F.scaled_dot_product_attention

    def stand_in(t: torch.Tensor) -> torch.Tensor:
        return torch.empty(t.shape[-1], dtype=t.dtype).expand(t.shape)

    choose: Any = getattr(torch, "_fused_sdp_choice")  # torch's own pick among its SDPA kernels

    def sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **kw):
        if query.device.type == "meta" and not kw:
            mask = None if attn_mask is None else stand_in(attn_mask)
            fused = accelerator != "cpu" or choose(stand_in(query), stand_in(key), stand_in(value), mask, dropout_p,
                                                   is_causal, scale=scale) == SDPBackend.FLASH_ATTENTION.value
            if fused:
                return aten._scaled_dot_product_flash_attention_for_cpu(query, key, value, dropout_p, is_causal,
                                                                        attn_mask=attn_mask, scale=scale)[0]
        return original(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                        scale=scale, **kw)

    F.scaled_dot_product_attention = sdpa
    host = "meta" not in attention.HOST and accelerator == "cpu"
    if host:
        attention.HOST.add("meta")  # graphspec's own attention computes itself on the host
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original
        if host:
            attention.HOST.discard("meta")


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
                stack.enter_context(_kernels_of(accelerator))
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
