"""Activation checkpointing of graphspec's own layer stacks (a node's `checkpoint: true`).

A checkpointed layer keeps only its inputs from the forward pass and runs again in the backward pass to
get the activations its gradients need: less memory for about one more forward of the layer. Library
towers use their library's own switch (`backbones.checkpoint_hf`, `backbones.checkpoint_timm`); this is
the same for the layers graphspec owns (fusion, a one-tower ViT's blocks, which it runs itself).

torch's non-reentrant checkpoint: gradients reach every input that needs one, keyword arguments and `None`s
pass through, and the random state is restored before the recomputation, so dropout draws the same masks
(preserve_rng_state, torch's default) and the gradients are those of the plain forward.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


def run_layer(layer: nn.Module, *args, recompute: bool, **kwargs):
    """`layer(*args, **kwargs)`, checkpointed when `recompute` and a backward pass can follow (grad enabled).

    The caller passes its `checkpoint` option and'ed with its own `training`: a model in eval mode, or under
    no_grad (compile's shape pass, a frozen tower's runner), runs the layer as is."""
    if recompute and torch.is_grad_enabled():
        return checkpoint(layer, *args, use_reentrant=False, **kwargs)
    return layer(*args, **kwargs)
