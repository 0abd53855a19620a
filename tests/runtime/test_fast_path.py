"""The fast path (`train.kernels: fast`, `inputs.NAME.pad_to: longest`, the defaults) computes what graphspec
0.2's plain path computed: the same outputs and losses up to rounding where no dropout draws, dropout with the
same law where it does."""

from __future__ import annotations

import json

import pytest
import torch

from graphspec.compiler.layers.attention import Attention, Dropout, dropout, use_fast_dropout
from graphspec.runtime.train import prepare, run, step_losses


def test_dropout_keeps_each_element_with_probability_one_minus_p_and_scales_it():
    torch.manual_seed(0)
    x = torch.ones(1000, 1000)
    y = dropout(x, 0.1, True)
    kept = y != 0
    assert abs(float(kept.float().mean()) - 0.9) < 0.002  # a million draws: the standard error is 0.0003
    assert torch.equal(y[kept], torch.full_like(y[kept], 1 / 0.9))  # scaled as torch scales
    lanes = kept.view(-1, 4).float()  # the four 16-bit draws of one random word are independent
    assert (torch.corrcoef(lanes.T) - torch.eye(4)).abs().max() < 0.01
    rows = kept.float().mean(1)  # no structure along a row either
    assert float(rows.std()) < 0.02
    torch.manual_seed(0)
    assert torch.equal(dropout(x, 0.1, True), y)  # reproducible from torch's seed
    assert dropout(x, 0.1, False) is x and dropout(x, 0.0, True) is x
    half = dropout(x.bfloat16(), 0.5, True)
    assert half.dtype == torch.bfloat16 and abs(float((half != 0).float().mean()) - 0.5) < 0.002


@pytest.mark.parametrize("self_attention", [True, False])
def test_fast_attention_equals_sdpa_forward_and_backward(self_attention):
    torch.manual_seed(0)
    layer = Attention(32, 4, 0.1).eval()  # eval: no dropout, so the two paths compute the same function
    x = torch.randn(3, 7, 32, requires_grad=True)
    ctx = x if self_attention else torch.randn(3, 5, 32)
    mask = torch.ones(3, ctx.shape[1], dtype=torch.bool)
    mask[0, -2:] = False
    outs, grads = [], []
    for fast in (True, False):
        layer.fast = fast
        out = layer(x, ctx, mask)
        (g,) = torch.autograd.grad(out.square().sum(), x)
        outs.append(out)
        grads.append(g)
    assert torch.allclose(outs[0], outs[1], atol=1e-5) and torch.allclose(grads[0], grads[1], atol=1e-4)


def test_every_library_dropout_becomes_the_fast_one_and_plain_keeps_torchs(train_spec, compile_build):
    fast = prepare(compile_build(train_spec)).trainer.engine.module
    library = [m for n, m in fast.named_modules() if n.startswith("text_tower.") and isinstance(m, Dropout)]
    assert library and not any(type(m) is torch.nn.Dropout and m.p > 0 for m in fast.modules())
    plain = prepare(compile_build(train_spec, ["train.kernels=plain"])).trainer.engine.module
    assert not any(isinstance(m, Dropout) and m.fast for m in plain.modules())
    assert any(type(m) is torch.nn.Dropout and m.p > 0 for m in plain.modules())
    assert use_fast_dropout(torch.nn.Sequential(torch.nn.Dropout(0.0))) == 0  # p = 0 stays as it is


def test_text_is_padded_to_the_global_batch_longest_and_the_losses_do_not_change(train_spec, compile_build):
    """Cutting the padding columns changes no loss (masks hide padding); MLM draws and labels are the same."""
    train_spec["inputs"]["text"]["max_length"] = 24
    train_spec["nodes"]["text_tower"]["size"]["max_positions"] = 24
    train_spec["train"]["precision"] = "fp32"
    batches, losses = {}, {}
    for pad in ("longest", "max_length"):
        s = prepare(compile_build(train_spec, [f"inputs.text.pad_to={pad}"]))
        s.trainer.eval()
        batch = s.task.train_batch(8, 3)
        batches[pad] = batch
        with torch.no_grad():
            losses[pad] = {k: float(v) for k, v in step_losses(s, batch).items()}
    cut, full = batches["longest"], batches["max_length"]
    width = cut["text_ids"].shape[1]
    assert full["text_ids"].shape[1] == 24 and 4 < width < 24
    assert bool(cut["text_mask"][:, -1].any())  # the longest text fills the last column
    for key in ("text_ids", "text_mask", "mlm_labels"):
        assert torch.equal(cut[key], full[key][:, :width])
    assert not bool(full["text_mask"][:, width:].any()) and bool((full["mlm_labels"][:, width:] == -100).all())
    assert losses["longest"] == pytest.approx(losses["max_length"], abs=1e-5)


@pytest.mark.parametrize("recipe", ["one_pass", "two_pass"])
def test_the_fast_path_trains_on_the_plain_paths_trajectory(train_spec, compile_build, tmp_path, recipe):
    """Without dropout (whose draws differ) the two paths follow each other: 12 steps in fp32, every logged
    loss within 2e-4 (metrics keep 5 decimals). In two passes the fast path passes each image once through
    the vision tower (tests/runtime/test_shared_images.py), the plain path every row's."""
    train_spec["train"].update(steps=12, log_every=1, val_every=None, precision="fp32")
    train_spec["objectives"]["itm"]["recipe"] = recipe
    train_spec["data"]["val"] = None
    train_spec["inputs"]["text"]["max_length"] = 24
    train_spec["nodes"]["text_tower"]["size"]["max_positions"] = 24
    for tower in ("text_tower", "vision_tower"):
        train_spec["nodes"][tower]["dropout"] = 0.0
    paths = {"fast": [], "plain": ["train.kernels=plain", "inputs.text.pad_to=max_length"]}
    losses = {}
    for name, overrides in paths.items():
        summary = run(compile_build(train_spec, overrides), tmp_path / name, show_bar=False)
        assert summary.get("two_pass_images", {}).get("once", False) == (recipe == "two_pass" and name == "fast")
        records = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        losses[name] = [r["loss"] for r in records]
    assert len(losses["fast"]) == 12
    assert losses["fast"] == pytest.approx(losses["plain"], abs=2e-4)
