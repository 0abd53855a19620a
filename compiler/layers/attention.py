"""Multi-head attention, a feed-forward block and dropout, with CPU kernels that avoid torch's slow paths.

On the CPU, torch draws a dropout mask one random number per element (`bernoulli_`,
about 10 ns each): in Experiment 1's fusion that was 1.6 s of an 8 s step. `dropout`
here draws 64 random bits per four elements and keeps an element when its 16 bits
are at least round(p x 65536) (so p is honoured to 1/65536), about 3x faster.
`scaled_dot_product_attention` with dropout and a mask takes its unfused math path
on the CPU (mask checks, an additive mask rebuilt per call, that slow dropout), so
attention computes its probabilities itself there (as timm's blocks are made to,
`unfused_library_attention`: SDPA's CPU flash kernel is slower in bf16). Self-attention
multiplies by the q, k and v weights at once (one GEMM, the weights concatenated
per call, so the parameters keep their names).

`fast = False` on a module gives torch's own kernels (nn.Dropout's, SDPA's),
graphspec 0.2's path: `train.kernels: plain`, kept so that the gain stays measurable.
Off the CPU, torch's kernels are used either way.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def _keep_mask(shape: torch.Size, p: float) -> torch.Tensor:
    """A boolean mask, True with probability 1 - p (to 1/65536), from torch's default generator."""
    n = math.prod(shape)
    words = torch.randint(-2**63, 2**63 - 1, ((n + 3) // 4,), dtype=torch.int64)  # every bit random
    return (words.view(torch.int16)[:n] >= -32768 + round(p * 65536)).view(shape)


def dropout(x: torch.Tensor, p: float, training: bool, fast: bool = True) -> torch.Tensor:
    if not training or p == 0.0:
        return x
    if not fast or x.device.type != "cpu" or p >= 1.0:
        return F.dropout(x, p, True)
    return x * _keep_mask(x.shape, p).to(x.dtype).mul_(1.0 / (1.0 - p))


class Dropout(nn.Dropout):
    """nn.Dropout with the fast CPU mask (same `p`, same module interface, no parameters)."""

    fast = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training, self.fast)


def use_fast_dropout(model: nn.Module) -> int:
    """Every plain nn.Dropout in `model` (library towers' included) becomes a `Dropout`; how many."""
    swapped = 0
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if type(child) is nn.Dropout and child.p > 0:
                setattr(module, name, Dropout(child.p, child.inplace))
                swapped += 1
    return swapped


def unfused_library_attention(model: nn.Module) -> int:
    """timm's attention blocks compute q k^T, softmax and the product themselves instead of calling SDPA,
    whose CPU flash kernel is measured 1.8x slower in bf16 at DeiT's shapes (forward and backward). For the
    CPU only: on an accelerator SDPA's fused kernels are the fast path. How many blocks changed."""
    changed = 0
    for module in model.modules():
        if isinstance(getattr(module, "fused_attn", None), bool) and module.fused_attn:
            module.fused_attn = False
            changed += 1
    return changed


def use_plain_kernels(model: nn.Module) -> None:
    """torch's own dropout and attention kernels in every graphspec layer of `model`."""
    for module in model.modules():
        if isinstance(module, (Attention, Dropout)):
            module.fast = False


HOST = {"cpu"}  # devices where the fast path computes attention itself (graphspec.cost adds "meta" for a CPU run)


class Attention(nn.Module):
    fast = True

    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.q = nn.Linear(width, width)
        self.k = nn.Linear(width, width)
        self.v = nn.Linear(width, width)
        self.out = nn.Linear(width, width)

    def _project(self, x: torch.Tensor, ctx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.fast and x is ctx:  # self-attention: one GEMM for q, k and v
            w = torch.cat([self.q.weight, self.k.weight, self.v.weight])
            bias = torch.cat([self.q.bias, self.k.bias, self.v.bias])
            return F.linear(x, w, bias).chunk(3, dim=-1)
        return self.q(x), self.k(ctx), self.v(ctx)

    def forward(self, x: torch.Tensor, ctx: torch.Tensor, ctx_mask: torch.Tensor | None) -> torch.Tensor:
        """`ctx_mask` (B, S), True where `ctx` has a token; None when `ctx` is never padded (an image stream,
        known when the model is built), which lets SDPA take its flash and memory-efficient kernels on an
        accelerator (they take no mask) and spares the CPU path its masked fill."""
        b, t, d = x.shape
        h, s = self.heads, ctx.shape[1]
        q, k, v = self._project(x, ctx)
        q = q.reshape(b, t, h, d // h).transpose(1, 2)  # (B, h, T, d/h)
        k = k.reshape(b, s, h, d // h).transpose(1, 2)  # (B, h, S, d/h)
        v = v.reshape(b, s, h, d // h).transpose(1, 2)  # (B, h, S, d/h)
        mask = None if ctx_mask is None else ctx_mask[:, None, None, :].bool()  # (B, 1, 1, S), True = attend
        p = self.dropout if self.training else 0.0
        if self.fast and q.device.type in HOST:
            scores = (q * (1.0 / math.sqrt(d // h))) @ k.transpose(-1, -2)  # (B, h, T, S)
            if mask is not None:
                scores = scores.masked_fill(~mask, float("-inf"))
            y = dropout(torch.softmax(scores, dim=-1), p, True) @ v  # (B, h, T, d/h)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        return self.out(y.transpose(1, 2).reshape(b, t, d))  # (B, T, D)


class FeedForward(nn.Module):
    def __init__(self, width: int, hidden: int, dropout: float):
        super().__init__()
        self.up = nn.Linear(width, hidden)
        self.down = nn.Linear(hidden, width)
        self.drop = Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.down(F.gelu(self.up(x))))


class Residual(nn.Module):
    """Post-norm residual around a sublayer, as BERT and LXMERT do."""

    def __init__(self, width: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(width, eps=1e-12)
        self.drop = Dropout(dropout)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.norm(x + self.drop(y))
