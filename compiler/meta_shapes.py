"""Shape propagation on the meta device: every node's output shapes, with no weights and no real forward.

Meta tensors are the fast path (no data, no dispatch bookkeeping). A module
whose forward inspects values (transformers' text models look at the attention
mask to pick an attention path) sets `needs_fake_shapes` and runs under
FakeTensorMode, which keeps small constants; its outputs go back to meta.
"""

from __future__ import annotations

import torch
import torch.fx as fx
from torch.utils._pytree import tree_map

from graphspec.language.errors import Issue, SpecError
from graphspec.language.schema import Spec

from .tower_records import describe_output

BATCH = 2  # any batch works; 2 keeps batch-dependent bugs visible


def meta_inputs(spec: Spec) -> dict[str, torch.Tensor]:
    """Meta tensors for the model's inputs."""
    out = {}
    for name, inp in spec.inputs.items():
        tensors = inp.tensors(name)
        if inp.modality == "text":
            out[tensors[0]] = torch.zeros(BATCH, inp.max_length, dtype=torch.long, device="meta")
            out[tensors[1]] = torch.ones(BATCH, inp.max_length, dtype=torch.long, device="meta")
        elif inp.modality == "boxes":
            out[tensors[0]] = torch.zeros(BATCH, inp.max_candidates, 4, device="meta")
            out[tensors[1]] = torch.ones(BATCH, inp.max_candidates, dtype=torch.bool, device="meta")
        else:
            out[tensors[0]] = torch.zeros(BATCH, inp.channels, inp.size, inp.size, device="meta")
    return out


def _to_meta(value):
    return tree_map(lambda v: torch.empty(v.shape, dtype=v.dtype, device="meta") if isinstance(v, torch.Tensor) else v, value)


def _shape_of(value):
    return tree_map(lambda v: tuple(v.shape) if isinstance(v, torch.Tensor) else v, value)


class _ShapeRecorder(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule, paths: dict[str, tuple]):
        super().__init__(gm)
        self.paths = paths

    def run_node(self, n: fx.Node):
        try:
            if n.op == "call_module" and getattr(self.module.get_submodule(n.target), "needs_fake_shapes", False):
                from torch._subclasses.fake_tensor import FakeTensorMode

                with FakeTensorMode(allow_non_fake_inputs=True):
                    result = super().run_node(n)
                result = _to_meta(result)
            else:
                result = super().run_node(n)
        except Exception as e:
            target = str(n.target).removeprefix("heads.")
            path = self.paths.get(target, ())
            raise SpecError([Issue(path, f"shapes do not fit in '{target}': {type(e).__name__}: {str(e).splitlines()[0][:300]}",
                                   "check the input sizes and the widths feeding this node")]) from e
        if n.op in ("call_module", "call_function"):
            n.meta["shape"] = _shape_of(result)
        if n.op == "call_module":
            n.meta["value"] = describe_output(result)  # what a tower record keeps of it
        return result


def propagate_shapes(spec: Spec, gm: fx.GraphModule, paths: dict[str, tuple]) -> None:
    """Store `node.meta['shape']` on every call of the meta-built GraphModule; raise SpecError on a mismatch."""
    with torch.no_grad():
        _ShapeRecorder(gm, paths).run(*meta_inputs(spec).values())
