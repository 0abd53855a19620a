"""The paper's objective recipes: ITM in its own pass with exactly half the images swapped (ViLT, METER,
Renaissance), and whole-word masking by a fixed count (transformers 4's collator), next to the defaults."""

from __future__ import annotations

import random

import pytest
import torch

from graphspec.language.schema import DataSource
from graphspec.runtime.data import scenes as gen
from graphspec.runtime.objectives import IGNORE, MaskDraws, fixed_count, mask_tokens
from graphspec.runtime.tasks.caption_sources import SceneSet, swap_images

from .test_distributed import _as_rank, _task


def _words(n_words: int, pieces: int, length: int) -> tuple[list[int | None], torch.Tensor]:
    """[CLS] w0 w0 w1 w1 ... [SEP] [PAD]...: word ids, and the padding mask."""
    row = [None] + [w for w in range(n_words) for _ in range(pieces)] + [None]
    pad = torch.zeros(length, dtype=torch.bool)
    pad[len(row):] = True
    return row + [None] * (length - len(row)), pad


def test_fixed_count_takes_round_share_of_the_padded_length_in_whole_words():
    length = 40
    row, pad = _words(19, 2, length)  # 38 word pieces + [CLS] + [SEP]: no padding
    picks = torch.rand(200, length, generator=torch.Generator().manual_seed(0))
    chosen = fixed_count([row] * 200, pad.expand(200, -1), 0.15, True, picks)
    assert (chosen.sum(1) == 6).all()  # round(0.15 * 40) = 6 positions: three whole words of two pieces
    assert not chosen[:, 0].any() and not chosen[:, 39].any()  # [CLS], [SEP] are no candidates
    assert torch.equal(chosen[:, 1::2][:, :19], chosen[:, 2::2][:, :19])  # a word's pieces together
    # 50 positions: round(7.5) = 8 by Python's (banker's) rounding, as the collator computes it
    row50, pad50 = _words(24, 2, 50)
    assert int(fixed_count([row50], pad50[None], 0.15, True, torch.rand(1, 50)).sum()) == 8


def test_fixed_count_skips_a_word_that_would_overshoot():
    row = [None, 0, 0, 0, 0, 1, 2, None]  # a four-piece word, two one-piece words
    pad = torch.zeros(8, dtype=torch.bool)
    pick = torch.tensor([[0.9, 0.0, 0.9, 0.9, 0.9, 0.5, 0.6, 0.9]])  # the long word first in order
    chosen = fixed_count([row], pad[None], 0.25, True, pick)  # round(0.25 * 8) = 2
    assert chosen[0].tolist() == [False, False, False, False, False, True, True, False]


def test_fixed_count_drops_the_padding_it_picks_so_short_captions_get_fewer():
    length = 40
    row, pad = _words(6, 1, length)  # 6 words, 32 padding positions
    n = 2000
    gen_ = torch.Generator().manual_seed(1)
    draws = MaskDraws.draw(gen_, n, length, 100)
    ids = torch.randint(5, 100, (n, length))
    special = torch.zeros(n, length, dtype=torch.bool)
    special[:, 0] = special[:, 7] = True
    special |= pad
    _, labels = mask_tokens(ids, special, [row] * n, 0.15, True, 4, torch.ones(n, dtype=torch.bool), draws,
                            pad.expand(n, -1))
    real = (labels != IGNORE).sum(1)
    assert not (labels[:, 8:] != IGNORE).any()  # never a label on padding
    # Each row: round(0.15 * 40) = 6 candidates by the draws, among the 6 words (positions 1-6) and the 32
    # padding positions (8-39); the words among those 6 are masked, the padding dropped. Per-word masking (each
    # word with probability 0.15), or re-drawing the dropped picks among words, gives other counts.
    candidates = torch.tensor([*range(1, 7), *range(8, 40)])
    first_six = draws.pick[:, candidates].argsort(dim=1)[:, :6]  # (n, 6) indices into candidates
    assert torch.equal(real, (first_six < 6).sum(1))
    # ... which is 6 x 6 / 38 = 0.95 words on average (per-word masking: 0.15 x 6 = 0.90)
    assert abs(real.float().mean().item() - 36 / 38) < 0.04


def test_fixed_count_follows_the_draws_so_ranks_agree():
    row, pad = _words(10, 1, 16)
    draws = MaskDraws.draw(torch.Generator().manual_seed(2), 8, 16, 100)
    whole = fixed_count([row] * 8, pad.expand(8, -1), 0.3, True, draws.pick)
    half = fixed_count([row] * 4, pad.expand(4, -1), 0.3, True, draws.rows(slice(4, 8)).pick)
    assert torch.equal(whole[4:], half)


def _scenes(n: int = 40) -> SceneSet:
    return SceneSet(DataSource(samples=n), ("data", "train"), 32)


@pytest.mark.parametrize("n, negatives", [(32, 16), (5, 3), (2, 1)])
def test_swap_images_makes_exactly_the_share_of_negatives(n, negatives):
    scenes = _scenes()
    plan = scenes.plan(n, 0.0, seed=0, index=7)
    assert plan.match == [1] * n
    itm = swap_images(plan, 0.5, random.Random(3), scenes.negative_image)
    assert itm.match.count(0) == negatives
    assert itm.texts == plan.texts
    for k in range(n):
        if itm.match[k]:
            assert itm.images[k] == plan.images[k]
        else:  # another scene, one the caption is false of
            assert itm.images[k] != plan.images[k]
            assert not gen.describes(scenes.scenes[itm.images[k]], itm.texts[k])
    assert swap_images(plan, 0.5, random.Random(3), scenes.negative_image) == itm


def test_two_pass_batch_holds_masked_true_pairs_then_unmasked_swapped_pairs(train_spec, compile_build, monkeypatch):
    train_spec["objectives"]["itm"] = {"weight": 1.0, "recipe": "two_pass"}
    build = compile_build(train_spec)
    task = _task(build.spec, build.dir)
    batch = task.train_batch(8, 3)
    data = batch.pop("_data")
    rows = batch["itm_rows"]
    assert rows.tolist() == [False] * 8 + [True] * 8
    assert batch["match"][:8].tolist() == [1] * 8 and batch["match"][8:].sum() == 4  # exactly half
    labels, ids = batch["mlm_labels"], batch["text_ids"]
    mask_id = task.tokenizer.mask_token_id
    assert (labels[:8] != IGNORE).any() and not (labels[8:] != IGNORE).any()  # MLM reads the first pass only
    assert not (ids[8:] == mask_id).any()  # ITM's text is unmasked...
    unmasked = labels[:8] == IGNORE
    assert torch.equal(ids[:8][unmasked], ids[8:][unmasked])  # ...and the same captions
    match = batch["match"][8:].bool()
    assert torch.equal(batch["image"][8:][match], batch["image"][:8][match])  # positives keep their image
    assert not any(torch.equal(batch["image"][8 + k], batch["image"][k]) for k in range(8) if not match[k])
    seed = build.spec.train.seed
    plan = task.train_set.plan(8, 0.0, seed, 3)
    itm = swap_images(plan, 0.5, random.Random(f"itm:{seed}:3"), task.train_set.negative_image)
    assert data["decoded"] == len(set(plan.images) | set(itm.images)) < 16  # an image is read once for both

    parts = []
    for rank in (0, 1):  # two ranks: each gets its rows of both passes; together, the one-rank batch
        _as_rank(monkeypatch, rank, 2)
        part = task.train_batch(4, 3)
        part.pop("_data")
        parts.append(part)
    for key, value in batch.items():
        first = torch.cat([p[key][:4] for p in parts])
        second = torch.cat([p[key][4:] for p in parts])
        assert torch.equal(torch.cat([first, second]), value), key


def test_two_pass_losses_read_their_own_rows(train_spec, compile_build):
    train_spec["objectives"]["itm"] = {"weight": 1.0, "recipe": "two_pass"}
    build = compile_build(train_spec)
    task = _task(build.spec, build.dir)
    match = torch.tensor([1, 1, 1, 1, 0, 1, 0, 1])
    rows = torch.tensor([False] * 4 + [True] * 4)
    itm_logits = torch.zeros(8, 2)
    itm_logits[4:, 1] = torch.tensor([-5.0, 5.0, -5.0, 5.0])  # right on the ITM rows
    itm_logits[:4, 0] = 50.0  # wildly wrong on the MLM rows, which the ITM loss must not read
    labels = torch.full((8, 4), IGNORE)
    labels[0, 1] = 7
    parts = task.losses({"itm": itm_logits, "mlm": torch.zeros(1, 128)}, {"match": match, "itm_rows": rows,
                                                                         "mlm_labels": labels})
    assert parts["itm"].item() < 0.01


def test_the_paper_spec_uses_the_paper_recipe():
    import graphspec
    from pathlib import Path

    spec = graphspec.load(Path(__file__).resolve().parents[2] / "specs" / "paper" / "exp1_two_tower.yaml")
    assert spec.objectives["itm"].recipe == "two_pass"
    assert spec.objectives["mlm"].selection == "fixed_count" and spec.objectives["mlm"].whole_word
    assert spec.nodes["fusion"].share_cross and spec.nodes["fusion"].project_inputs == "always"
    assert spec.inputs["text"].max_length == 50
    assert (spec.train.optimizer.lr, spec.train.batch_size, spec.train.steps) == (1e-5, 256, 100_000)



@pytest.mark.parametrize("selection", ["fixed_count", "probability"])
def test_the_specs_selection_reaches_the_batch(train_spec, compile_build, monkeypatch, selection):
    """`objectives.mlm.selection: fixed_count` masks a train batch with `fixed_count` (at the spec's share, over
    max_length positions): every label is a position it chose, on a matching pair, inside the text."""
    from graphspec.runtime import objectives

    train_spec["objectives"]["mlm"] = {"weight": 1.0, "selection": selection, "mask_prob": 0.3, "whole_word": True}
    build = compile_build(train_spec)
    task = _task(build.spec, build.dir)
    real, seen = objectives.fixed_count, []

    def spy(*args):
        seen.append((args, real(*args)))
        return seen[-1][1]

    monkeypatch.setattr(objectives, "fixed_count", spy)
    batch = task.train_batch(8, 3)
    labelled = batch["mlm_labels"] != IGNORE
    if selection == "probability":
        assert not seen and labelled.any()
        return
    ((word_ids, pad, prob, whole_word, pick), chosen), = seen
    assert prob == 0.3 and whole_word and chosen.shape[1] == train_spec["inputs"]["text"]["max_length"]
    width = labelled.shape[1]  # cut to the batch's longest caption
    assert not (chosen[:, width:] & ~pad[:, width:]).any()  # beyond it, only padding was chosen
    inside = batch["text_mask"].bool()
    assert torch.equal(labelled, chosen[:, :width] & inside & batch["match"].bool()[:, None])
    assert labelled.any()


def test_part_keys_of_lr_multipliers_reach_the_optimizers_groups(train_spec, compile_build):
    """`fusion: 5` with `fusion.type_embed: 1` (the longest key wins) and `heads: 3`: each parameter reaches
    DeepSpeed's optimizer in a group of its multiplier times the learning rate."""
    from graphspec.runtime.train import prepare

    train_spec["train"]["lr_multipliers"] = {"fusion": 5, "fusion.type_embed": 1, "heads": 3}
    train_spec["train"]["schedule"] = {"warmup": 0, "decay": "constant"}  # every group at its peak from step 0
    session = prepare(compile_build(train_spec))
    names = {id(p): n for n, p in session.trainer.cut.inner.named_parameters()}  # what the engine holds
    lr = train_spec["train"]["optimizer"]["lr"]
    found: dict[str, float] = {}
    for group in session.trainer.optimizer.param_groups:
        for p in group["params"]:
            found[names[id(p)]] = group["lr"]
    assert set(found) == set(names.values())  # every trainable parameter in exactly one group
    want = {n: lr * (1 if n.startswith("fusion.type_embed.") else 5 if n.startswith("fusion.") else
                     3 if n.startswith("heads.") else 1) for n in found}
    assert found == pytest.approx(want)
    assert any(n.startswith("fusion.type_embed.") for n in found) and any(n.startswith("heads.") for n in found)
