"""The two-pass recipe reads each image twice: a batch passes each distinct image once through the vision tower
(`image_rows`), when that tower computes a fixed function of its image, and trains as if every row had its own."""

from __future__ import annotations

import pytest
import torch

from graphspec.compiler.placement import shared_images
from graphspec.runtime.train import prepare, step_losses


@pytest.fixture
def two_pass(train_spec):
    train_spec["objectives"]["itm"] = {"weight": 1.0, "recipe": "two_pass"}
    train_spec["train"]["precision"] = "fp32"
    return train_spec


def _losses(s, batch) -> dict[str, float]:
    with torch.no_grad():
        return {k: float(v) for k, v in step_losses(s, batch).items()}


@pytest.mark.parametrize("vision", ["trainable", "frozen", "frozen+cache"])
def test_a_batch_holds_each_image_once_and_computes_the_rows_own_losses(two_pass, compile_build, tmp_path, vision):
    overrides = []
    if vision != "trainable":
        overrides.append("nodes.vision_tower.freeze=true")  # outside the engine: the runner sees distinct images
    if vision == "frozen+cache":
        overrides += ["distributed.frozen.cache_outputs=true", f"distributed.frozen.cache_dir={tmp_path / 'cache'}"]
    s = prepare(compile_build(two_pass, overrides))
    assert s.task.share_images and s.images["once"]
    s.trainer.eval()
    once = s.task.train_batch(8, 3)
    distinct = once["image"].shape[0]
    shared = _losses(s, once)
    s.task.share_images = False
    every = s.task.train_batch(8, 3)
    rows = once["image_rows"]
    assert "image_rows" not in every and every["image"].shape[0] == 16
    assert distinct == len(set(rows.tolist())) < 16
    if vision != "frozen+cache":  # (there the second batch holds placeholders: every image was found stored)
        assert torch.equal(once["image"][rows], every["image"])
    for key in ("text_ids", "text_mask", "mlm_labels", "match", "itm_rows"):
        assert torch.equal(once[key], every[key]), key
    assert shared == pytest.approx(_losses(s, every), abs=1e-5)
    if vision == "frozen+cache":  # each distinct image computed once, then found by the batch of every row
        report = s.trainer.towers.cache_report()["vision_tower"]
        assert (report["misses"], report["hits"], report["entries"]) == (distinct, 16, distinct)


def test_a_tower_that_draws_dropout_reads_every_rows_image(two_pass, compile_build):
    two_pass["nodes"]["vision_tower"]["dropout"] = 0.1
    build = compile_build(two_pass)
    s = prepare(build)
    assert not s.task.share_images and "vision_tower" in s.images["why"] and "dropout" in s.images["why"]
    assert "image_rows" not in s.task.train_batch(8, 0)
    frozen = prepare(compile_build(two_pass, ["nodes.vision_tower.freeze=true"]))  # eval mode: a fixed function
    assert frozen.task.share_images
    two_pass["nodes"]["vision_tower"]["freeze"] = {"layers": "0:", "train_mode": True}  # frozen, dropout kept on
    kept = prepare(compile_build(two_pass))
    assert not kept.task.share_images
    del two_pass["nodes"]["vision_tower"]["freeze"]
    plain = compile_build(two_pass, ["train.kernels=plain", "nodes.vision_tower.dropout=0.0"])
    model = prepare(plain)
    assert not model.task.share_images and "plain" in model.images["why"]
    assert shared_images(build.spec, s.trainer.cut.inner, s.plan)[0] is False
