"""Projections and poolers."""

from __future__ import annotations

import torch
from torch import nn


class Projection(nn.Module):
    """A linear map of a sequence (mask kept) or a vector to a new width."""

    def __init__(self, in_width: int, width: int):
        super().__init__()
        self.linear = nn.Linear(in_width, width)
        self.width = width

    def forward(self, x) -> dict:
        if isinstance(x, tuple):
            hidden, mask = x
            return {"out": (self.linear(hidden), mask)}  # (B, T, width)
        return {"out": self.linear(x)}  # (B, width)


class ClsPool(nn.Module):
    """First token of each stream (through a dense + tanh, as BERT's pooler), concatenated."""

    def __init__(self, in_widths: list[int], dense: bool):
        super().__init__()
        self.dense = nn.ModuleList(
            nn.Sequential(nn.Linear(w, w), nn.Tanh()) if dense else nn.Identity() for w in in_widths
        )
        self.width = sum(in_widths)

    def forward(self, *streams: tuple) -> dict:
        firsts = [d(hidden[:, 0]) for d, (hidden, _) in zip(self.dense, streams)]  # each (B, D_i)
        return {"pooled": torch.cat(firsts, dim=-1)}  # (B, sum D_i)


class MeanPool(nn.Module):
    """The mean over real tokens: padding does not dilute the average."""

    def __init__(self, width: int):
        super().__init__()
        self.width = width

    def forward(self, stream: tuple) -> dict:
        hidden, mask = stream  # (B, T, D), (B, T)
        weights = mask.to(hidden.dtype).unsqueeze(-1)  # (B, T, 1)
        return {"pooled": (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)}  # (B, D)
