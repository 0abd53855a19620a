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


def fixed_count(word_ids: list[list[int | None]], pad: torch.Tensor, prob: float, whole_word: bool,
                pick: torch.Tensor) -> torch.Tensor:
    """The positions transformers 4's whole-word collator chooses, as (B, T) bool: round(prob x T) positions'
    worth of candidates (a word's pieces together with `whole_word`, else each token; every padding position
    is a candidate of its own, [CLS]/[SEP] are none), taken in random order, a candidate skipped when it would
    overshoot the count. Ordered by the draw at each candidate's first position, so ranks agree."""
    b, t = pick.shape
    want = max(1, round(t * prob))  # Python's round, as the collator's
    chosen = torch.zeros(b, t, dtype=torch.bool)
    for r, row in enumerate(word_ids):
        cands: list[list[int]] = []
        first: dict[int, int] = {}
        for pos, word in enumerate(row):
            if word is None:
                if pad[r, pos]:
                    cands.append([pos])
            elif whole_word and word in first:
                cands[first[word]].append(pos)
            else:
                first[word] = len(cands)
                cands.append([pos])
        taken: list[int] = []
        for c in sorted(cands, key=lambda c: float(pick[r, c[0]])):
            if len(taken) >= want:
                break
            if len(taken) + len(c) <= want:
                taken += c
        chosen[r, taken] = True
    return chosen


def mask_tokens(ids: torch.Tensor, special: torch.Tensor, word_ids: list[list[int | None]], prob: float,
                whole_word: bool, mask_id: int, rows: torch.Tensor, draws: MaskDraws,
                pad: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT-style masking: of the chosen tokens 80% become [MASK], 10% a random token, 10% stay.

    ids (B, T); special (B, T) True for [CLS]/[SEP]/[PAD]; rows (B,) True where the
    loss applies (image-text matches: a caption of another scene is not a fair target).
    Every row is masked alike, labelled or not: masking only the matching pairs would
    tell the ITM head which pairs match. With whole_word, all pieces of a chosen word
    are masked together (a draw per word index of the row). With `pad` (B, T), True on padding, the count is
    fixed instead (`fixed_count`); chosen padding is then dropped.
    """
    if pad is not None:
        chosen = fixed_count(word_ids, pad, prob, whole_word, draws.pick)
    elif whole_word:
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
