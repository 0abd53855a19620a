"""Masked language modelling and image-text matching: inputs and losses."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

IGNORE = -100


@dataclass
class MaskDraws:
    """The random numbers BERT-style masking draws for a (B, T) batch, drawn for the whole global batch and
    sliced by row: a rank that tokenises only its own rows masks them exactly as one rank masking all would."""

    pick: torch.Tensor  # (B, T) uniform: a token (or, by word index, a word) is chosen below the probability
    roll: torch.Tensor  # (B, T) uniform: 80% [MASK], 10% a random token, 10% unchanged
    tokens: torch.Tensor  # (B, T) the random token a position gets in the 10% case

    @classmethod
    def draw(cls, gen: torch.Generator, rows: int, length: int, vocab_size: int) -> "MaskDraws":
        return cls(torch.rand(rows, length, generator=gen), torch.rand(rows, length, generator=gen),
                   torch.randint(vocab_size, (rows, length), generator=gen))

    def rows(self, index) -> "MaskDraws":
        return MaskDraws(self.pick[index], self.roll[index], self.tokens[index])


def mask_tokens(ids: torch.Tensor, special: torch.Tensor, word_ids: list[list[int | None]], prob: float,
                whole_word: bool, mask_id: int, rows: torch.Tensor, draws: MaskDraws) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT-style masking: of the chosen tokens 80% become [MASK], 10% a random token, 10% stay.

    ids (B, T); special (B, T) True for [CLS]/[SEP]/[PAD]; rows (B,) True where the
    loss applies (image-text matches: a caption of another scene is not a fair target).
    Every row is masked alike, labelled or not: masking only the matching pairs would
    tell the ITM head which pairs match. With whole_word, all pieces of a chosen word
    are masked together (a draw per word index of the row).
    """
    if whole_word:
        word = torch.tensor([[w if w is not None else -1 for w in row] for row in word_ids])  # (B, T)
        pick_word = draws.pick < prob  # a draw per (row, word index)
        chosen = torch.gather(pick_word, 1, word.clamp(min=0)) & (word >= 0)  # (B, T)
    else:
        chosen = draws.pick < prob
    chosen &= ~special
    labels = torch.where(chosen & rows[:, None], ids, torch.full_like(ids, IGNORE))
    masked = ids.clone()
    masked[chosen & (draws.roll < 0.8)] = mask_id
    swap = chosen & (draws.roll >= 0.8) & (draws.roll < 0.9)
    masked[swap] = draws.tokens[swap]
    return masked, labels


def mlm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """logits (N, V) for the N labelled positions, in row-major order of `labels`."""
    target = labels[labels != IGNORE]
    if target.numel() == 0:
        return logits.sum() * 0.0  # keeps the graph (and DeepSpeed's hooks) intact
    return F.cross_entropy(logits.float(), target)


def itm_loss(logits: torch.Tensor, match: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float(), match)
