"""MLM masking and the ITM pairs it is applied to."""

from __future__ import annotations

import random

import torch

from graphspec.language.schema import DataSource
from graphspec.runtime.data import scenes as gen
from graphspec.runtime.tasks.caption_sources import SceneSet
from graphspec.runtime.objectives import IGNORE, MaskDraws, mask_tokens, mlm_loss


def _scene_set(n: int = 40) -> SceneSet:
    return SceneSet(DataSource(samples=n), ("data", "train"), 32)


def test_masking_rate_specials_and_rows():
    gen_ = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 100, (200, 30))
    special = torch.zeros(200, 30, dtype=torch.bool)
    special[:, 0] = special[:, -1] = True
    rows = torch.arange(200) % 2 == 0  # only even rows carry the loss
    masked, labels = mask_tokens(ids, special, [[None] * 30] * 200, 0.15, False, 4, rows,
                                 MaskDraws.draw(gen_, 200, 30, 100))
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
    _, labels = mask_tokens(ids, special, words, 0.3, True, 4, torch.ones(300, dtype=torch.bool),
                            MaskDraws.draw(gen_, 300, 8, 100))
    chosen = labels != IGNORE
    assert chosen.any()
    assert torch.equal(chosen[:, 1], chosen[:, 2])
    assert torch.equal(chosen[:, 4], chosen[:, 5]) and torch.equal(chosen[:, 5], chosen[:, 6])


def test_mlm_loss_without_masked_positions_is_zero_but_differentiable():
    logits = torch.randn(0, 10, requires_grad=True)
    loss = mlm_loss(logits, torch.full((2, 5), IGNORE))
    loss.backward()
    assert loss.item() == 0.0


def test_masking_a_slice_of_rows_masks_them_as_the_whole_batch_would():
    """What lets a rank tokenise and mask only its own rows: the draws are the whole batch's, sliced."""
    ids = torch.randint(5, 100, (8, 10))
    special = torch.zeros(8, 10, dtype=torch.bool)
    rows = torch.ones(8, dtype=torch.bool)
    draws = MaskDraws.draw(torch.Generator().manual_seed(3), 8, 10, 100)
    whole = mask_tokens(ids, special, [[None] * 10] * 8, 0.3, False, 4, rows, draws)
    half = mask_tokens(ids[4:], special[4:], [[None] * 10] * 4, 0.3, False, 4, rows[4:], draws.rows(slice(4, 8)))
    assert torch.equal(whole[0][4:], half[0]) and torch.equal(whole[1][4:], half[1])


def test_negatives_come_from_other_scenes_and_are_false():
    scenes = _scene_set()
    plan = scenes.plan(64, 0.5, seed=0, index=3)
    assert 20 < plan.match.count(0) < 44  # balanced in expectation
    again = scenes.plan(64, 0.5, seed=0, index=3)
    assert again == plan
    rng = random.Random(0)
    for i in range(len(scenes)):
        assert not gen.describes(scenes.scenes[i], scenes.negative_caption(i, rng))


def test_eval_pairs_are_fixed_and_balanced():
    scenes = _scene_set(10)
    a, b = scenes.eval_plans(2), scenes.eval_plans(2)
    assert [p.texts for p in a] == [p.texts for p in b]
    assert all(p.match == [1, 0] for p in a)
