"""Masked language modelling and image-text matching: inputs and losses."""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE = -100


def mask_tokens(ids: torch.Tensor, special: torch.Tensor, word_ids: list[list[int | None]], prob: float,
                whole_word: bool, mask_id: int, vocab_size: int, rows: torch.Tensor,
                gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT-style masking: of the chosen tokens 80% become [MASK], 10% a random token, 10% stay.

    ids (B, T); special (B, T) True for [CLS]/[SEP]/[PAD]; rows (B,) True where the
    loss applies (image-text matches: a caption of another scene is not a fair target).
    Every row is masked alike, labelled or not: masking only the matching pairs would
    tell the ITM head which pairs match. With whole_word, all pieces of a chosen word
    are masked together.
    """
    b, t = ids.shape
    if whole_word:
        word = torch.tensor([[w if w is not None else -1 for w in row] for row in word_ids])  # (B, T)
        pick_word = torch.rand(b, t, generator=gen) < prob  # a draw per (row, word index)
        chosen = torch.gather(pick_word, 1, word.clamp(min=0)) & (word >= 0)  # (B, T)
    else:
        chosen = torch.rand(b, t, generator=gen) < prob
    chosen &= ~special
    labels = torch.where(chosen & rows[:, None], ids, torch.full_like(ids, IGNORE))
    roll = torch.rand(b, t, generator=gen)
    masked = ids.clone()
    masked[chosen & (roll < 0.8)] = mask_id
    swap = chosen & (roll >= 0.8) & (roll < 0.9)
    masked[swap] = torch.randint(vocab_size, (int(swap.sum()),), generator=gen)
    return masked, labels


def mlm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """logits (N, V) for the N labelled positions, in row-major order of `labels`."""
    target = labels[labels != IGNORE]
    if target.numel() == 0:
        return logits.sum() * 0.0  # keeps the graph (and DeepSpeed's hooks) intact
    return F.cross_entropy(logits.float(), target)


def itm_loss(logits: torch.Tensor, match: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float(), match)
