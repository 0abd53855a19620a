"""Losses and metrics of the downstream heads."""

from __future__ import annotations

import math

import torch

from graphspec.runtime.metrics import accuracy, classify_loss, itc_loss, recall_at_k, vqa_loss, vqa_score


def test_itc_loss_is_low_when_the_diagonal_wins():
    good = torch.eye(4) * 20
    assert itc_loss(good) < 1e-3 and abs(itc_loss(torch.zeros(4, 4)) - math.log(4)) < 1e-6


def test_classify_and_ref_ignore_masked_candidates():
    logits = torch.tensor([[2.0, 1.0, torch.finfo(torch.float32).min]])
    assert torch.isfinite(classify_loss(logits, torch.tensor([0])))
    assert accuracy(logits, torch.tensor([0])) == (1.0, 1)


def test_vqa_score_and_loss():
    logits = torch.tensor([[5.0, -5.0, -5.0], [-5.0, -5.0, 5.0]])
    scores = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.3, 0.6]])
    right, n = vqa_score(logits, scores)
    assert abs(right - 1.6) < 1e-6 and n == 2
    assert vqa_loss(logits, scores) < vqa_loss(-logits, scores)


def test_recall_at_k_both_ways():
    sim = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.1, 0.8], [0.1, 0.7, 0.2], [0.5, 0.4, 0.3]])
    text_to_image = [0, 1, 1, 2]  # two captions for image 1
    r = recall_at_k(sim, text_to_image, ks=(1, 2))
    assert r["t2i_r1"] == 0.5  # texts 0 and 2 rank their image first
    assert r["t2i_r2"] == 0.5  # texts 1 and 3 rank theirs third
    assert abs(r["i2t_r1"] - 2 / 3) < 1e-6  # image 0 -> text 0 first; image 1 -> text 2 first; image 2 -> text 1 first (wrong)
    assert r["i2t_r2"] == 1.0  # image 2's own text 3 is second


def test_counted_ranks_equal_the_ranks_of_a_full_sort():
    """Recall from counting (no T x I sort) against ranks read off argsort, on random similarities (no ties),
    texts per image uneven, one image described by none (a miss both ways of reading it)."""
    gen = torch.Generator().manual_seed(0)
    sim = torch.randn(40, 9, generator=gen)
    truth = torch.randint(0, 8, (40,), generator=gen).tolist()  # image 8 has no text
    t2i = (sim.argsort(dim=1, descending=True) == torch.tensor(truth)[:, None]).float().argmax(1)
    order = sim.T.argsort(dim=1, descending=True)  # (I, T)
    i2t = torch.tensor([next((r for r, t in enumerate(order[i].tolist()) if truth[t] == i), 40) for i in range(9)])
    got = recall_at_k(sim, truth, ks=(1, 3, 5))
    for k in (1, 3, 5):
        assert got[f"t2i_r{k}"] == float((t2i < k).float().mean())
        assert got[f"i2t_r{k}"] == float((i2t < k).float().mean())
