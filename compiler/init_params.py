"""The field's initialisation of the parameters graphspec creates; library towers keep their own.

BERT's scheme (also ViLT's, METER's, LXMERT's and Renaissance's `init_weights`): Linear, Conv and Embedding
weights from N(0, std), biases 0, LayerNorm scale 1 and shift 0. Without it a new layer gets PyTorch's
defaults: Kaiming-uniform weights with non-zero biases, and an `nn.Embedding` at N(0, 1), 50x the field's
scale, which is what a modality-type embedding added to every token then carries.
"""

from __future__ import annotations

import torch
from torch import nn

from graphspec.language.schema import ParamInit

LIBRARIES = ("transformers.", "timm.")  # modules these packages define initialise themselves


def _is_library(module: nn.Module) -> bool:
    return type(module).__module__.startswith(LIBRARIES)


def own_modules(module: nn.Module):
    """The submodules graphspec defined: a library model's subtree is not walked into."""
    if _is_library(module) or getattr(module, "keeps_init", False):  # a layer that initialised it on purpose
        return
    yield module
    for child in module.children():
        yield from own_modules(child)


def library_params(module: nn.Module) -> set[int]:
    """Identities of the parameters held by library models inside `module` (a tied decoder shares one)."""
    out: set[int] = set()
    for m in module.modules():
        if _is_library(m):
            out.update(id(p) for p in m.parameters())
    return out


@torch.no_grad()
def init_new_params(module: nn.Module, how: ParamInit, library: set[int]) -> int:
    """Initialise `module`'s own Linear, Conv, Embedding and LayerNorm parameters; those whose identity is in
    `library` (a library tower's, e.g. a decoder tied to its token embeddings) are left alone. Parameters a
    layer makes itself (learned positions, the ITC temperature) keep the layer's own initialisation.
    Returns how many tensors were set."""
    if how.scheme == "torch":
        return 0
    done = 0

    def put(param, fill) -> None:
        nonlocal done
        if param is not None and id(param) not in library:
            fill(param)
            done += 1

    for m in own_modules(module):
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Embedding)):
            put(m.weight, lambda w: w.normal_(0.0, how.std))
            put(getattr(m, "bias", None), nn.init.zeros_)
            if isinstance(m, nn.Embedding) and m.padding_idx is not None and id(m.weight) not in library:
                m.weight[m.padding_idx].zero_()
        elif isinstance(m, nn.LayerNorm) and m.elementwise_affine:
            put(m.weight, nn.init.ones_)
            put(m.bias, nn.init.zeros_)
    return done
