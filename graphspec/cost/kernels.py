"""What the counted step's ops cost and which kernels they take: torch's FLOP formulas with the ones it lacks or
gets wrong, and, on the meta device, the attention kernel the run's device would take."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend
from torch.utils.flop_counter import (FlopCounterMode, conv_flop_count, flop_registry, sdpa_backward_flop_count,
                                      sdpa_flop_count, shape_wrapper)

from graphspec.compiler.layers import attention

aten = torch.ops.aten


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


@contextmanager
def kernels_of(accelerator: str):
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
