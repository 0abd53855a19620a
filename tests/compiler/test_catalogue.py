"""The node catalogue: fusion kinds, one-tower, poolers, heads, intermediate layers, tying."""

from __future__ import annotations

import pytest
import torch

import graphspec
from graphspec.compiler import build_model, compile_spec
from graphspec.language.errors import SpecError


def _batch(spec, b: int = 2, pad_from: int | None = None) -> dict:
    torch.manual_seed(0)
    mask = torch.ones(b, 12, dtype=torch.long)
    if pad_from is not None:
        mask[:, pad_from:] = 0
    return {"text_ids": torch.randint(5, 64, (b, 12)), "text_mask": mask, "image": torch.randn(b, 3, 32, 32)}


def _model(tiny, write_spec, name="spec.yaml"):
    spec = graphspec.load(write_spec(tiny, name))
    model, plan = build_model(spec)
    model.eval()
    return spec, model, plan


def test_intermediate_layer_equals_the_libraries_hidden_state(tiny, write_spec):
    tiny["nodes"]["fusion"]["inputs"]["text"] = "text_tower.layer_1"
    spec, model, _ = _model(tiny, write_spec)
    assert compile_spec(spec).summary["shapes"]["text_tower"] == "seq (B, 12, 32), layer_1 (B, 12, 32)"
    b = _batch(spec)
    ours = model.text_tower(b["text_ids"], b["text_mask"])
    lib = model.text_tower.model(input_ids=b["text_ids"], attention_mask=b["text_mask"], output_hidden_states=True)
    assert torch.equal(ours["layer_1"][0], lib.hidden_states[1])
    assert "fusion = self.fusion(text_tower_layer_1, vision_tower_seq_rows)" in model.code


def test_a_layer_the_tower_does_not_have(tiny, write_spec):
    tiny["nodes"]["fusion"]["inputs"]["image"] = "vision_tower.layer_7"
    with pytest.raises(SpecError) as info:
        compile_spec(graphspec.load(write_spec(tiny)))
    assert "nodes.fusion.inputs.image: 'vision_tower' has 2 layers: there is no layer_7" in info.value.format()
    assert "fix: use layer_1 .. layer_2" in info.value.format()


@pytest.mark.parametrize("kind", ["co_attention", "cross_attention", "merged_attention"])
def test_fusion_kinds_ignore_text_padding(tiny, write_spec, kind):
    tiny["nodes"]["fusion"]["kind"] = kind
    spec, model, _ = _model(tiny, write_spec)
    b = _batch(spec, pad_from=8)
    out = model(**b)
    b["text_ids"][:, 8:] = 7  # change only padded tokens
    again = model(**b)
    assert torch.allclose(out["itm"], again["itm"], atol=1e-5)


def test_one_direction_cross_attention_leaves_the_image_stream_alone(tiny, write_spec):
    tiny["nodes"]["fusion"].update(kind="cross_attention", direction="text")
    spec, model, _ = _model(tiny, write_spec)
    b = _batch(spec)
    seq = model.vision_tower(b["image"])["seq"]
    text = model.text_tower(b["text_ids"], b["text_mask"])["seq"]
    out = model.fusion(text, seq)
    assert torch.allclose(out["image"][0], seq[0] + model.fusion.type_embed.weight[1])
    assert all(layer.image is None for layer in model.fusion.layers)


def test_merged_attention_splits_the_joint_sequence(tiny, write_spec):
    tiny["nodes"]["fusion"]["kind"] = "merged_attention"
    spec = graphspec.load(write_spec(tiny))
    assert compile_spec(spec).summary["shapes"]["fusion"] == "text (B, 12, 32), image (B, 17, 32), seq (B, 29, 32)"


def test_mean_pool_ignores_padding(tiny, write_spec):
    tiny["nodes"]["pooled"] = {"kind": "mean_pool", "input": "fusion.text"}
    spec, model, _ = _model(tiny, write_spec)
    hidden = torch.randn(2, 5, 32)
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    pooled = model.pooled((hidden, mask))["pooled"]
    assert torch.allclose(pooled[0], hidden[0, :2].mean(0)) and torch.allclose(pooled[1], hidden[1].mean(0))


def test_one_tower_masks_text_padding(tiny, write_spec):
    tiny["nodes"] = {
        "joint": {"kind": "one_tower", "inputs": {"text": "text", "image": "image"}, "backbone": "text",
                  "model_type": "bert", "init": "random", "patch_size": 8,
                  "size": {"hidden": 32, "layers": 2, "heads": 2, "vocab_size": 64, "max_positions": 16}},
        "pooled": {"kind": "cls_pool", "inputs": ["joint.seq"]}}
    tiny["heads"]["mlm"].update(input="joint.text", vocab_from="joint")
    spec, model, _ = _model(tiny, write_spec)
    assert compile_spec(spec).summary["shapes"]["joint"] == "text (B, 12, 32), image (B, 16, 32), seq (B, 28, 32)"
    b = _batch(spec, pad_from=6)
    out = model(**b)
    b["text_ids"][:, 6:] = 9
    assert torch.allclose(out["itm"], model(**b)["itm"], atol=1e-5)


def test_one_tower_from_a_vit_keeps_its_blocks_and_masks(tiny, write_spec):
    tiny["nodes"] = {
        "joint": {"kind": "one_tower", "inputs": {"text": "text", "image": "image"}, "backbone": "vision",
                  "source": "vit_tiny_patch16_224", "init": "random", "vocab_size": 64, "max_text_positions": 16,
                  "size": {"hidden": 32, "layers": 2, "heads": 2, "patch_size": 8}},
        "pooled": {"kind": "cls_pool", "inputs": ["joint.seq"]}}
    tiny["heads"]["mlm"].update(input="joint.text", vocab_from="joint")
    spec, model, _ = _model(tiny, write_spec)
    # 16 patches + the ViT's class token on the image side
    assert compile_spec(spec).summary["shapes"]["joint"] == "text (B, 12, 32), image (B, 17, 32), seq (B, 29, 32)"
    b = _batch(spec, pad_from=6)
    out = model(**b)
    b["text_ids"][:, 6:] = 9
    assert torch.allclose(out["itm"], model(**b)["itm"], atol=1e-5)


def test_tied_decoder_is_the_embedding(tiny, write_spec):
    tiny["heads"]["mlm"]["tie"] = True
    spec, model, plan = _model(tiny, write_spec)
    assert model.heads.mlm.decoder.weight is model.text_tower.model.get_input_embeddings().weight
    compiled = compile_spec(spec)
    untied = compile_spec(graphspec.override(spec, {"heads.mlm.tie": False}))
    assert untied.summary["params"]["total"]["total"] - compiled.summary["params"]["total"]["total"] == 64 * 32


def test_tied_decoder_follows_frozen_embeddings(tiny, write_spec):
    tiny["heads"]["mlm"]["tie"] = True
    tiny["nodes"]["text_tower"]["freeze"] = {"embeddings": True}
    compiled = compile_spec(graphspec.load(write_spec(tiny)))
    [warning] = [w for w in compiled.warnings if "tied" in w.message]
    assert "heads.mlm.decoder.weight is tied to the frozen text_tower.model.embeddings.word_embeddings.weight" \
        in warning.message


def test_heads_shapes(tiny, write_spec):
    tiny["inputs"]["regions"] = {"modality": "boxes", "max_candidates": 5}
    tiny["heads"] = {
        "itc": {"kind": "itc", "inputs": {"text": "text_tower", "image": "vision_tower"}, "dim": 16},
        "ve": {"kind": "classify", "input": "pooled", "classes": 3, "hidden": 16},
        "nlvr2": {"kind": "pair_classify", "input": "pooled"},
        "vqa": {"kind": "vqa", "input": "pooled", "answers": 7},
        "ref": {"kind": "ref", "inputs": {"image": "fusion.image", "text": "pooled", "boxes": "regions"}, "heads": 2},
    }
    tiny["objectives"] = {}
    spec = graphspec.Spec.model_validate(tiny)  # architecture only: no task trains these heads together
    model, _ = build_model(spec)
    model.eval()
    b = _batch(spec, b=4)
    b["regions"] = torch.rand(4, 5, 4)
    b["regions_mask"] = torch.tensor([[1, 1, 1, 0, 0]] * 4, dtype=torch.bool)
    out = model(**b)
    from graphspec.runtime.metrics import itc_logits

    assert itc_logits(out["itc"]).shape == (4, 4) and out["itc"]["text"].shape == (4, 16)
    assert out["ve"].shape == (4, 3) and out["vqa"].shape == (4, 7)
    assert out["nlvr2"].shape == (2, 2)  # rows (0, 1) and (2, 3) are one example each
    assert out["ref"].shape == (4, 5) and torch.softmax(out["ref"], -1)[:, 3:].max() == 0
    torch.testing.assert_close(model.heads.itc.logit_scale.exp().item(), 1 / 0.07, rtol=1e-5, atol=0)


def test_a_tower_wider_than_the_fusion_without_projection(tiny, write_spec, line_of):
    tiny["nodes"]["text_tower"]["size"].update(hidden=48)
    tiny["nodes"]["fusion"].update(width=32, project_inputs=False)
    path = write_spec(tiny)
    line = line_of(path, "text: text_tower")
    with pytest.raises(SpecError) as info:
        compile_spec(graphspec.load(path))
    text = info.value.format()
    assert f"spec.yaml:{line}:" in text
    assert "nodes.fusion.inputs.text: 'text_tower' is 48 wide but the fusion is 32 wide, and project_inputs is false" in text
    assert "add a projection node to 32, or set `project_inputs: true`" in text


def test_patches_that_do_not_tile_the_image(tiny, write_spec, line_of):
    tiny["inputs"]["image"]["size"] = 36
    path = write_spec(tiny)
    line = line_of(path, "size: 36")
    with pytest.raises(SpecError) as info:
        compile_spec(graphspec.load(path))
    text = info.value.format()
    assert f"spec.yaml:{line}:" in text
    assert "inputs.image.size: 36-pixel images do not split into 8-pixel patches of 'vision_tower'" in text
    assert "use a multiple of 8, e.g. 32 or 40" in text


def test_a_cnn_stage_as_a_port(tiny, write_spec):
    tiny["inputs"]["image"]["size"] = 128
    tiny["nodes"]["vision_tower"] = {"kind": "timm_vision", "source": "tf_efficientnet_lite0", "init": "random",
                                     "input": "image"}
    tiny["nodes"]["fusion"].update(width=32, inputs={"text": "text_tower", "image": "vision_tower.layer_6"})
    shapes = compile_spec(graphspec.load(write_spec(tiny))).summary["shapes"]
    assert shapes["vision_tower"] == "seq (B, 16, 1280), layer_6 (B, 16, 192)"  # stride 32: a 4 x 4 map


def test_a_tower_without_a_layer_stack(tiny, write_spec):
    tiny["nodes"]["vision_tower"] = {"kind": "timm_vision", "source": "resnet18", "init": "random", "input": "image"}
    tiny["nodes"]["fusion"].update(width=32, inputs={"text": "text_tower", "image": "vision_tower.layer_2"})
    with pytest.raises(SpecError) as info:
        compile_spec(graphspec.load(write_spec(tiny)))
    assert "'vision_tower' has no stack of layers graphspec can read" in info.value.format()
