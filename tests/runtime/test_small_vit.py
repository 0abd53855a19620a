"""The small-ViT recipe (runtime/small_vit.py) at a toy step count: it learns, its file loads as a spec loads it, and
a seed gives the same weights."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from graphspec.compiler.backbones import _load_timm_file
from graphspec.runtime import small_vit

pytestmark = pytest.mark.integration  # trains two toy ViTs: a few seconds


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    folder = tmp_path_factory.mktemp("small_vit")
    runs = [small_vit.build(folder / f"vit{i}.safetensors", seed=0, steps=12, train_scenes=256, val_scenes=64)
            for i in range(2)]
    return folder, runs


def test_training_lowers_the_loss(built):
    _, (facts, _) = built
    assert facts["steps"] == 12 and facts["train_scenes"] == 256
    assert facts["last_loss (mean of 20)"] < 0.9 * facts["first_loss"], facts  # BCE over 21 kinds starts near 0.69
    assert 0 <= facts["val_f1"] <= 1 and 0 <= facts["val_exact"] <= 1


def test_file_loads_strictly_as_a_spec_loads_it(built):
    folder, _ = built
    file = folder / "vit0.safetensors"
    assert not any(k.startswith("head.") for k in load_file(file))  # a tower has no classifier
    import timm

    # what compiler/backbones.timm_model builds for `source: MODEL, size: {layers: DEPTH}` at the input size
    model = timm.create_model(small_vit.MODEL, pretrained=False, num_classes=0, global_pool="",
                              depth=small_vit.DEPTH, img_size=small_vit.IMAGE_SIZE)
    _load_timm_file(model, small_vit.MODEL, str(file), ("nodes", "joint"))  # strict; raises on any mismatch
    assert model.patch_embed.patch_size == (small_vit.PATCH, small_vit.PATCH)
    assert len(model.blocks) == small_vit.DEPTH
    leftovers = [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []  # written whole: temporary file, then rename


def test_same_seed_same_weights(built):
    folder, _ = built
    a, b = load_file(folder / "vit0.safetensors"), load_file(folder / "vit1.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
