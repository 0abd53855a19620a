"""Task heads."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

IGNORE = -100  # label of positions that carry no loss (torch's cross-entropy default)


class ITMHead(nn.Module):
    """Image-text matching: logits (no match, match) from a pooled vector."""

    def __init__(self, in_width: int, hidden: int | None):
        super().__init__()
        if hidden:
            self.net = nn.Sequential(nn.Linear(in_width, hidden), nn.GELU(), nn.Linear(hidden, 2))
        else:
            self.net = nn.Linear(in_width, 2)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.net(pooled)  # (B, 2)


class MLMHead(nn.Module):
    """Masked LM: dense + GELU + LayerNorm, then a decoder to the vocabulary.

    Given labels, only labelled positions are decoded: the decoder is the
    costliest matmul of a small model (D x vocab per position), and unmasked
    positions carry no loss.
    """

    def __init__(self, in_width: int, vocab_size: int):
        super().__init__()
        self.transform = nn.Linear(in_width, in_width)
        self.norm = nn.LayerNorm(in_width, eps=1e-12)
        self.decoder = nn.Linear(in_width, vocab_size)
        self.vocab_size = vocab_size

    def forward(self, seq: tuple, labels: torch.Tensor | None = None) -> torch.Tensor:
        hidden, _ = seq  # (B, T, D)
        if labels is not None:
            hidden = hidden[labels != IGNORE]  # (N, D): N labelled positions
        return self.decoder(self.norm(F.gelu(self.transform(hidden))))  # (N, V) or (B, T, V)
