"""`init: pretrained` loads real weights from a local directory or file, offline; hf_vision builds too."""

from __future__ import annotations

from typing import Any

import pytest
import timm
import torch
from safetensors.torch import save_file

import graphspec
from graphspec.compiler import build_model, compile_spec
from graphspec.language.errors import GraphspecError


def test_hf_text_from_a_local_directory(tiny, write_spec, tmp_path, tiny_bert):
    reference = tiny_bert
    node = tiny["nodes"]["text_tower"]
    node.update(init="pretrained", source=str(tmp_path / "bert"))
    del node["model_type"], node["size"]
    spec = graphspec.load(write_spec(tiny))
    assert compile_spec(spec).summary["params"]["text_tower"]["total"] == sum(p.numel() for p in reference.parameters())
    model, _ = build_model(spec)
    loaded = model.text_tower.model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in reference.state_dict().items())
    ids, mask = torch.randint(0, 64, (2, 12)), torch.ones(2, 12, dtype=torch.long)
    reference.eval(), model.eval()
    ours = model.text_tower(ids, mask)["seq"][0]
    assert torch.allclose(ours, reference(input_ids=ids, attention_mask=mask).last_hidden_state, atol=1e-6)


def test_timm_weights_from_a_local_file(tiny, write_spec, tmp_path):
    size = tiny["nodes"]["vision_tower"]["size"]
    reference = timm.create_model("vit_tiny_patch16_224", num_classes=0, img_size=32, embed_dim=32, depth=2,
                                  num_heads=2, mlp_ratio=2, patch_size=8)
    save_file(reference.state_dict(), str(tmp_path / "vit.safetensors"))
    tiny["nodes"]["vision_tower"].update(init="pretrained", weights=str(tmp_path / "vit.safetensors"), size=size)
    model, _ = build_model(graphspec.load(write_spec(tiny)))
    loaded = model.vision_tower.model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in reference.state_dict().items())


def test_timm_weights_of_another_size_are_a_clear_error(tiny, write_spec, tmp_path):
    other = timm.create_model("vit_tiny_patch16_224", num_classes=0, img_size=32, embed_dim=48, depth=2,
                              num_heads=2, mlp_ratio=2, patch_size=8)
    save_file(other.state_dict(), str(tmp_path / "vit48.safetensors"))
    tiny["nodes"]["vision_tower"].update(init="pretrained", weights=str(tmp_path / "vit48.safetensors"))
    with pytest.raises(GraphspecError) as info:
        build_model(graphspec.load(write_spec(tiny)))
    text = info.value.format()
    assert "nodes.vision_tower" in text and "vit48.safetensors" in text and "size mismatch" in text


def test_missing_weights_file(tiny, write_spec, tmp_path):
    tiny["nodes"]["vision_tower"].update(init="pretrained", weights=str(tmp_path / "nope.safetensors"))
    with pytest.raises(GraphspecError) as info:
        build_model(graphspec.load(write_spec(tiny)))
    assert "nodes.vision_tower.weights: no weights file at" in info.value.format()


def test_hf_vision_random(tiny, write_spec):
    tiny["nodes"]["vision_tower"] = {"kind": "hf_vision", "model_type": "vit", "init": "random", "input": "image",
                                     "size": {"hidden": 32, "layers": 2, "heads": 2, "mlp_ratio": 2, "patch_size": 8}}
    spec = graphspec.load(write_spec(tiny))
    assert compile_spec(spec).summary["shapes"]["vision_tower"] == "seq (B, 17, 32)"
    model, _ = build_model(spec)
    out = model(torch.randint(0, 64, (2, 12)), torch.ones(2, 12, dtype=torch.long), torch.randn(2, 3, 32, 32))
    assert out["itm"].shape == (2, 2) and torch.isfinite(out["mlm"]).all()


def test_one_tower_initialised_from_a_text_model(tiny, write_spec, tmp_path, tiny_bert):
    tiny["nodes"] = {
        "joint": {"kind": "one_tower", "inputs": {"text": "text", "image": "image"}, "backbone": "text",
                  "source": str(tmp_path / "bert"), "init": "pretrained", "patch_size": 8},
        "pooled": {"kind": "cls_pool", "inputs": ["joint.seq"]}}
    tiny["heads"]["mlm"].update(input="joint.text", vocab_from="joint")
    model, _ = build_model(graphspec.load(write_spec(tiny)))
    loaded = model.joint.backbone.model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in tiny_bert.state_dict().items())
    ids = torch.randint(0, 64, (2, 12))
    model.eval(), tiny_bert.eval()
    assert torch.equal(model.joint.backbone.embed(ids), tiny_bert.embeddings(input_ids=ids))


def test_a_vision_one_tower_reads_text_with_the_tokenizer_it_names(tiny, write_spec, tmp_path, tiny_bert):
    from graphspec.language.errors import SpecError
    from graphspec.runtime.text import load_tokenizer

    tiny["nodes"] = {
        "joint": {"kind": "one_tower", "inputs": {"text": "text", "image": "image"}, "backbone": "vision",
                  "library": "transformers", "model_type": "vit", "init": "random", "vocab_size": 64,
                  "size": {"hidden": 32, "layers": 2, "heads": 2, "patch_size": 8},
                  "tokenizer": str(tmp_path / "bert")},
        "pooled": {"kind": "cls_pool", "inputs": ["joint.text", "joint.image"]}}
    tiny["heads"]["mlm"].update(input="joint.text", vocab_from="joint")
    spec = graphspec.load(write_spec(tiny))
    never = lambda: pytest.fail("a tokenizer was trained")  # noqa: E731
    tok = load_tokenizer(spec, "text", 64, tmp_path, never)
    assert tok.name_or_path == str(tmp_path / "bert")  # tiny_bert's, not one trained on captions
    small = len(tok) - 1
    with pytest.raises(SpecError, match=f"the tokenizer has {len(tok)} entries, more than the model's {small}") as e:
        load_tokenizer(spec, "text", small, tmp_path, never)
    assert e.value.issues[0].path == ("nodes", "joint", "tokenizer")

    # transformers' ViT embeds the image itself ([CLS] + patches), its final LayerNorm kept; text padding masked
    model, _ = build_model(spec)
    joint: Any = model.get_submodule("joint")
    assert joint.text_embed is not None and joint.image_embed is None
    model.eval()
    ids, mask = torch.randint(5, 64, (2, 12)), torch.ones(2, 12, dtype=torch.long)
    mask[0, 6:] = 0
    out = joint(ids, mask, torch.randn(2, 3, 32, 32))
    assert out["image"][0].shape == (2, 1 + 16, 32)
    changed = ids.clone()
    changed[0, 6:] = 7  # what padding holds does not reach the real tokens
    pixels = torch.randn(2, 3, 32, 32)
    assert torch.allclose(joint(changed, mask, pixels)["text"][0][0, :6],
                          joint(ids, mask, pixels)["text"][0][0, :6], atol=1e-5)
