"""MLM masking and the ITM pairs it is applied to."""

from __future__ import annotations

import random

import torch

from graphspec.schema import DataSource
from graphspec.runtime.data import scenes as gen
from graphspec.runtime.tasks.caption_sources import SceneSet
from graphspec.runtime.objectives import IGNORE, mask_tokens, mlm_loss


def _scene_set(n: int = 40) -> SceneSet:
    return SceneSet(DataSource(samples=n), ("data", "train"), 32, lambda img: torch.from_numpy(img).permute(2, 0, 1).float())


def test_masking_rate_specials_and_rows():
    gen_ = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 100, (200, 30))
    special = torch.zeros(200, 30, dtype=torch.bool)
    special[:, 0] = special[:, -1] = True
    rows = torch.arange(200) % 2 == 0  # only even rows carry the loss
    masked, labels = mask_tokens(ids, special, [[None] * 30] * 200, 0.15, False, 4, 100, rows, gen_)
    chosen = labels != IGNORE
    assert not chosen[:, 0].any() and not chosen[:, -1].any()
    assert not chosen[1::2].any()  # no labels on odd rows...
    changed_odd = (masked[1::2] != ids[1::2]).float().mean().item()
    changed_even = (masked[0::2] != ids[0::2]).float().mean().item()
    assert 0.08 < changed_odd and abs(changed_odd - changed_even) < 0.03  # ...but they are masked alike
    rate = chosen[0::2, 1:-1].float().mean().item()
    assert 0.12 < rate < 0.18
    assert torch.equal(labels[chosen], ids[chosen])
    share_mask = (masked[chosen] == 4).float().mean().item()
    assert 0.7 < share_mask < 0.9  # BERT's 80% [MASK]
    even_unchosen = ~chosen[0::2]
    assert torch.equal(masked[0::2][even_unchosen], ids[0::2][even_unchosen])


def test_whole_word_masks_all_pieces_together():
    gen_ = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 100, (300, 8))
    words = [[None, 0, 0, 1, 2, 2, 2, None]] * 300
    special = torch.tensor([[True] + [False] * 6 + [True]] * 300)
    _, labels = mask_tokens(ids, special, words, 0.3, True, 4, 100, torch.ones(300, dtype=torch.bool), gen_)
    chosen = labels != IGNORE
    assert chosen.any()
    assert torch.equal(chosen[:, 1], chosen[:, 2])
    assert torch.equal(chosen[:, 4], chosen[:, 5]) and torch.equal(chosen[:, 5], chosen[:, 6])


def test_mlm_loss_without_masked_positions_is_zero_but_differentiable():
    logits = torch.randn(0, 10, requires_grad=True)
    loss = mlm_loss(logits, torch.full((2, 5), IGNORE))
    loss.backward()
    assert loss.item() == 0.0


def test_negatives_come_from_other_scenes_and_are_false():
    scenes = _scene_set()
    pairs = scenes.train_batch(64, 0.5, seed=0, index=3)
    assert 20 < int((pairs.match == 0).sum()) < 44  # balanced in expectation
    again = scenes.train_batch(64, 0.5, seed=0, index=3)
    assert again.texts == pairs.texts and torch.equal(again.match, pairs.match)
    rng = random.Random(0)
    for i in range(len(scenes)):
        assert not gen.describes(scenes.scenes[i], scenes.negative_caption(i, rng))


def test_eval_pairs_are_fixed_and_balanced():
    scenes = _scene_set(10)
    a, b = scenes.eval_pairs(2), scenes.eval_pairs(2)
    assert [p.texts for p in a] == [p.texts for p in b]
    assert all(p.match.tolist() == [1, 0] for p in a)
