"""A training step on the meta device, where the few values that decide shapes are known.

On the meta device a step costs no memory and no arithmetic, and torch's
FlopCounterMode counts what it would run. A step of a real model is not
purely shape-driven, though: the MLM head decodes only the labelled positions
(`hidden[labels != -100]`, as many rows as the batch masked), and
transformers asks `mask.all().item()` to decide whether SDPA needs a mask.
`Shadows` keeps a CPU copy (its shadow) of every small tensor whose value is
known: the batch's ids, masks, labels and rows, and whatever is computed from
known values only (a padding mask, an `arange`). An op that reads a value
(`.item()`, a boolean index, `nonzero`) is answered from the shadows; every
other op runs on the meta device as usual. Floating activations and weights
never get a shadow: they are large and nothing about shapes depends on them.
"""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map
from torch.utils.weak import WeakIdKeyDictionary

aten = torch.ops.aten

SMALL = 1 << 22  # elements: a known value larger than this is not copied (it is never a shape's source)
_READS = {aten._local_scalar_dense.default, aten.nonzero.default, aten.masked_select.default,
          aten.index.Tensor, aten.index_put.default, aten.index_put_.default, aten._index_put_impl_.default,
          aten.repeat_interleave.Tensor}


class ValueNeeded(RuntimeError):
    """An op needs a value that no shadow holds (a float activation's): the step cannot run on meta."""


class Shadows(TorchDispatchMode):
    """Enter it below a FlopCounterMode: the counter sees each op once, with the meta tensors."""

    def __init__(self) -> None:
        super().__init__()
        self.known: WeakIdKeyDictionary = WeakIdKeyDictionary()

    def meta(self, value):
        """`value` (a batch's tensor, or a structure of them) on the meta device, integer and bool tensors
        with their values kept."""
        def move(t):
            if not torch.is_tensor(t):
                return t
            out = t.detach().to("meta")
            if not t.is_floating_point() and t.numel() <= SMALL:
                self.known[out] = t.detach().cpu()
            return out
        return tree_map(move, value)

    def _shadow(self, t):
        if isinstance(t, torch.Tensor) and t.device.type == "meta":
            return self.known.get(t)
        return t

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        flat, _ = tree_flatten((args, kwargs))
        metas = [t for t in flat if isinstance(t, torch.Tensor) and t.device.type == "meta"]
        shadowed = all(t in self.known for t in metas)
        factory = not metas and kwargs.get("device") is not None and torch.device(kwargs["device"]).type == "meta"
        if func in _READS and not shadowed:
            return self._read_by_index(func, args, kwargs)
        if not (shadowed and (metas or factory)):
            return func(*args, **kwargs)
        if func is aten._local_scalar_dense.default:
            return self._on_cpu(func, args, kwargs)
        try:
            out = func(*args, **kwargs)
        except (RuntimeError, NotImplementedError):  # a data-dependent shape the meta kernel cannot give
            value = self._on_cpu(func, args, kwargs)
            out = tree_map(lambda v: v.to("meta") if isinstance(v, torch.Tensor) else v, value)
            self._remember(out, value)
            return out
        outs, _ = tree_flatten(out)
        if all(o.numel() <= SMALL for o in outs if isinstance(o, torch.Tensor)):
            self._remember(out, self._on_cpu(func, args, kwargs))
        return out

    def _on_cpu(self, func, args, kwargs):
        def cpu(t):
            if isinstance(t, torch.Tensor) and t.device.type == "meta":
                return self.known[t]
            if isinstance(t, torch.device) and t.type == "meta":
                return torch.device("cpu")
            return t
        args, kwargs = tree_map(cpu, (args, kwargs))
        if "device" in kwargs and kwargs["device"] is not None:
            kwargs = {**kwargs, "device": torch.device("cpu")}
        return func(*args, **kwargs)

    def _remember(self, out, value) -> None:
        outs, _ = tree_flatten(out)
        values, _ = tree_flatten(value)
        if len(outs) != len(values):
            return
        for o, v in zip(outs, values):
            if isinstance(o, torch.Tensor) and isinstance(v, torch.Tensor) and o.device.type == "meta" \
                    and v.numel() <= SMALL and tuple(o.shape) == tuple(v.shape):
                self.known[o] = v

    def _read_by_index(self, func, args, kwargs):
        """A float tensor indexed by a known mask (`hidden[labels != -100]`): the mask's positions, from its
        shadow, index the meta tensor."""
        if func in (aten.index.Tensor, aten.index_put.default, aten.index_put_.default,
                    aten._index_put_impl_.default):
            indices = args[1]
            if all(i is None or i in self.known for i in indices):
                expanded = []
                for i in indices:
                    if i is not None and i.dtype in (torch.bool, torch.uint8):
                        expanded += [self.meta(c) for c in self.known[i].nonzero(as_tuple=True)]
                    else:
                        expanded.append(i)
                return func(args[0], expanded, *args[2:], **kwargs)
        if func is aten.masked_select.default and args[1] in self.known:
            n = int(self.known[args[1]].expand_as(args[0]).sum()) if args[1].shape != args[0].shape else \
                int(self.known[args[1]].sum())
            return args[0].new_empty((n,))
        raise ValueNeeded(f"{func} reads values the meta device does not have")
