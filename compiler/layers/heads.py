"""Task heads."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .attention import Attention

IGNORE = -100  # label of positions that carry no loss (torch's cross-entropy default)


def _vector(x) -> torch.Tensor:
    """A pooled vector, or a sequence's first token."""
    return x[0][:, 0] if isinstance(x, tuple) else x  # (B, D)


def _mlp(in_width: int, hidden: int | None, out: int) -> nn.Module:
    if not hidden:
        return nn.Linear(in_width, out)
    return nn.Sequential(nn.Linear(in_width, hidden), nn.LayerNorm(hidden), nn.GELU(), nn.Linear(hidden, out))


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
    positions carry no loss. With `tied`, the decoder shares its weight with the
    text tower's token embeddings (the transform maps to their width).
    """

    def __init__(self, in_width: int, vocab_size: int, tied: nn.Embedding | None = None):
        super().__init__()
        width = tied.embedding_dim if tied is not None else in_width
        self.transform = nn.Linear(in_width, width)
        self.norm = nn.LayerNorm(width, eps=1e-12)
        self.decoder = nn.Linear(width, vocab_size)
        if tied is not None:
            self.decoder.weight = tied.weight  # one Parameter, two names: state dicts keep both
        self.vocab_size = vocab_size

    def forward(self, seq: tuple, labels: torch.Tensor | None = None) -> torch.Tensor:
        hidden, _ = seq  # (B, T, D)
        if labels is not None:
            hidden = hidden[labels != IGNORE]  # (N, D): N labelled positions
        return self.decoder(self.norm(F.gelu(self.transform(hidden))))  # (N, V) or (B, T, V)


class ITCHead(nn.Module):
    """Image-text contrastive (CLIP/ALBEF): both sides projected and normalised, with a learned temperature.

    It gives the features, not the logits, so that the loss can contrast them against every rank's rows
    (runtime.metrics.itc_logits: scale * text @ image.T)."""

    def __init__(self, text_width: int, image_width: int, dim: int, temperature: float):
        super().__init__()
        self.text_proj = nn.Linear(text_width, dim)
        self.image_proj = nn.Linear(image_width, dim)
        # Shape (1,), not a scalar: DeepSpeed broadcasts parameters as bytes and cannot view a 0-dim tensor so.
        self.logit_scale = nn.Parameter(torch.tensor([math.log(1.0 / temperature)]))

    def forward(self, text, image) -> dict:
        t = F.normalize(self.text_proj(_vector(text)), dim=-1)  # (B, dim)
        i = F.normalize(self.image_proj(_vector(image)), dim=-1)  # (B, dim)
        scale = self.logit_scale.clamp(max=math.log(100.0)).exp()  # (1,): CLIP's cap keeps the softmax trainable
        return {"text": t, "image": i, "scale": scale}


class ClassifyHead(nn.Module):
    """n-way logits from a pooled vector."""

    def __init__(self, in_width: int, classes: int, hidden: int | None):
        super().__init__()
        self.net = _mlp(in_width, hidden, classes)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.net(pooled)  # (B, classes)


class PairClassifyHead(ClassifyHead):
    """NLVR2: rows 2k and 2k+1 are one example's two image-text passes; their vectors are concatenated."""

    def __init__(self, in_width: int, classes: int, hidden: int | None):
        super().__init__(2 * in_width, classes, hidden)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        pairs = pooled.reshape(pooled.shape[0] // 2, 2 * pooled.shape[1])  # (B/2, 2D)
        return self.net(pairs)  # (B/2, classes)


class VQAHead(ClassifyHead):
    """Scores over an answer vocabulary; each is a separate sigmoid (answers have soft scores)."""


class RefHead(nn.Module):
    """One score per candidate box: the box (embedded from its coordinates, plus the expression) looks at the
    image stream; padded candidates score -inf-like so they take no probability."""

    def __init__(self, image_width: int, text_width: int, heads: int):
        super().__init__()
        self.box_embed = nn.Sequential(nn.Linear(4, image_width), nn.GELU(), nn.Linear(image_width, image_width))
        self.text_proj = nn.Linear(text_width, image_width)
        self.look = Attention(image_width, heads, 0.0)
        self.norm = nn.LayerNorm(image_width)
        self.score = nn.Linear(image_width, 1)

    def forward(self, image: tuple, text, boxes: torch.Tensor, box_mask: torch.Tensor) -> torch.Tensor:
        seq, seq_mask = image  # (B, N, D), (B, N)
        query = self.box_embed(boxes) + self.text_proj(_vector(text))[:, None]  # (B, K, D)
        found = self.norm(query + self.look(query, seq, seq_mask))  # (B, K, D)
        scores = self.score(found).squeeze(-1)  # (B, K)
        return scores.masked_fill(~box_mask.bool(), torch.finfo(scores.dtype).min)
