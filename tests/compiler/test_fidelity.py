"""The paper's Experiment 1 model, exactly: the shared co-attention layer equals transformers' LxmertXLayer, the
parameter counts equal an independent count from transformers' classes, and new parameters get the field's init."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import graphspec
from graphspec.compiler import build_model, compile_spec
from graphspec.language.reading import validate_data
from graphspec.language.parsing import SourceMap

SPECS = Path(__file__).resolve().parents[2] / "specs"
WIDTH, HEADS, LAYERS = 64, 4, 2


def _spec(**fusion) -> dict:
    return {
        "name": "lxmert-check",
        "inputs": {"text": {"modality": "text", "max_length": 12}, "image": {"modality": "image", "size": 32}},
        "nodes": {
            "text_tower": {"kind": "hf_text", "model_type": "bert", "init": "random", "input": "text",
                           "size": {"hidden": 48, "layers": 1, "heads": 2, "vocab_size": 64, "max_positions": 16}},
            "vision_tower": {"kind": "timm_vision", "source": "deit_tiny_patch16_224", "init": "random",
                             "input": "image", "size": {"hidden": 32, "layers": 1, "heads": 2, "patch_size": 8}},
            "fusion": {"kind": "co_attention", "inputs": {"text": "text_tower", "image": "vision_tower"},
                       "width": WIDTH, "layers": LAYERS, "heads": HEADS, "mlp_ratio": 4, "dropout": 0.0, **fusion},
            "pooled": {"kind": "cls_pool", "inputs": ["fusion.text", "fusion.image"]},
        },
        "heads": {"itm": {"kind": "itm", "input": "pooled"}},
        "objectives": {"itm": {}},
    }


def _lxmert_names(ours: str) -> str:
    """Our name of a co-attention layer's parameter -> LxmertXLayer's."""
    table = {
        "cross.q": "visual_attention.att.query", "cross.k": "visual_attention.att.key",
        "cross.v": "visual_attention.att.value", "cross.out": "visual_attention.output.dense",
        "cross_res.norm": "visual_attention.output.LayerNorm",
    }
    for stream, lx in (("text", "lang"), ("image", "visn")):
        table.update({
            f"{stream}.self_attn.q": f"{lx}_self_att.self.query", f"{stream}.self_attn.k": f"{lx}_self_att.self.key",
            f"{stream}.self_attn.v": f"{lx}_self_att.self.value", f"{stream}.self_attn.out": f"{lx}_self_att.output.dense",
            f"{stream}.self_res.norm": f"{lx}_self_att.output.LayerNorm", f"{stream}.ffn.up": f"{lx}_inter.dense",
            f"{stream}.ffn.down": f"{lx}_output.dense", f"{stream}.ffn_norm": f"{lx}_output.LayerNorm",
        })
    module, leaf = ours.rsplit(".", 1)
    return f"{table[module]}.{leaf}"


def test_shared_co_attention_equals_lxmert_x_layers():
    from transformers import LxmertConfig
    from transformers.models.lxmert.modeling_lxmert import LxmertXLayer

    model, _ = build_model(validate_data(_spec(share_cross=True), SourceMap()))
    fusion = model.get_submodule("fusion").eval()
    config = LxmertConfig(hidden_size=WIDTH, num_attention_heads=HEADS, intermediate_size=4 * WIDTH,
                          hidden_act="gelu", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    reference = nn.ModuleList(LxmertXLayer(config) for _ in range(LAYERS)).eval()
    for k, ours in enumerate(fusion.layers):
        theirs = reference[k].state_dict()
        mine = ours.state_dict()
        assert len(mine) == len(theirs)  # one block for both directions: nothing left over on either side
        reference[k].load_state_dict({_lxmert_names(n): v for n, v in mine.items()})

    torch.manual_seed(1)
    b, t, n = 3, 12, 17
    text, image = torch.randn(b, t, WIDTH), torch.randn(b, n, WIDTH)
    t_mask = torch.ones(b, t, dtype=torch.bool)
    t_mask[0, 7:] = False  # padding in the text
    t_mask[2, 3:] = False
    i_mask = torch.ones(b, n, dtype=torch.bool)
    with torch.no_grad():
        x, y = text, image
        for layer in fusion.layers:
            x, y = layer(x, t_mask, y, i_mask)

        def additive(mask):
            return (1.0 - mask[:, None, None, :].float()) * torch.finfo(torch.float32).min

        u, v = text, image
        for layer in reference:
            u, v = layer(u, additive(t_mask), v, additive(i_mask))
    assert (x - u).abs().max() < 1e-5
    assert (y - v).abs().max() < 1e-5


def test_separate_cross_blocks_are_the_other_option():
    shared, _ = build_model(validate_data(_spec(share_cross=True), SourceMap()))
    apart, _ = build_model(validate_data(_spec(), SourceMap()))
    count = lambda m: sum(p.numel() for p in m.get_submodule("fusion").parameters())  # noqa: E731
    block = 4 * (WIDTH * WIDTH + WIDTH) + 2 * WIDTH  # q, k, v, out and the residual's LayerNorm
    assert count(apart) - count(shared) == LAYERS * block


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_experiment_1_counts_equal_transformers_classes_node_by_node():
    """ELECTRA-small, ViTModel (DeiT-tiny's config, without its pooler), six LxmertXLayers of width 256, and
    the parts graphspec adds: two projections, token types, two poolers, the ITM and MLM heads."""
    from transformers import ElectraConfig, ElectraModel, LxmertConfig, ViTConfig, ViTModel
    from transformers.models.bert.modeling_bert import BertConfig, BertPredictionHeadTransform
    from transformers.models.lxmert.modeling_lxmert import LxmertXLayer

    w, vocab = 256, 30522
    with torch.device("meta"):
        text = ElectraModel(ElectraConfig())  # its defaults are ELECTRA-small's
        vision = ViTModel(ViTConfig(hidden_size=192, num_hidden_layers=12, num_attention_heads=3,
                                    intermediate_size=768, image_size=224, patch_size=16), add_pooling_layer=False)
        fusion_layers = nn.ModuleList(LxmertXLayer(LxmertConfig(hidden_size=w, num_attention_heads=4,
                                                                intermediate_size=4 * w)) for _ in range(6))
        fusion_front = nn.ModuleList([nn.Linear(256, w), nn.Linear(192, w), nn.Embedding(2, w)])
        poolers = nn.ModuleList([nn.Linear(w, w), nn.Linear(w, w)])
        itm = nn.Linear(2 * w, 2)
        # The platform's MLM head: BERT's transform, then Linear(w, vocab, bias=False) plus one vocab-sized bias.
        mlm = nn.ModuleList([BertPredictionHeadTransform(BertConfig(hidden_size=w)), nn.Linear(w, vocab)])
    expected = {"text_tower": _count(text), "vision_tower": _count(vision),
                "fusion": _count(fusion_layers) + _count(fusion_front), "pooled": _count(poolers),
                "heads.itm": _count(itm), "heads.mlm": _count(mlm)}

    compiled = compile_spec(graphspec.load(SPECS / "paper" / "exp1_two_tower.yaml"))
    got = {k: v["total"] for k, v in compiled.summary["params"].items() if k != "total"}
    assert got == expected
    both = compile_spec(graphspec.load(SPECS / "paper" / "exp1_freeze_both.yaml"))
    new = expected["fusion"] + expected["pooled"] + expected["heads.itm"] + expected["heads.mlm"]
    assert both.summary["params"]["total"]["trainable"] == new


@pytest.mark.parametrize("std", [0.02, 0.05])
def test_new_parameters_get_the_configured_normal_init(std):
    data = _spec(share_cross=True, project_inputs="always")
    data["param_init"] = {"std": std}
    model, _ = build_model(validate_data(data, SourceMap()))
    seen = set()
    for name, p in model.named_parameters():
        if name.startswith(("text_tower.", "vision_tower.")):
            continue
        seen.add(name.split(".")[0])
        if name.endswith("norm.weight"):
            assert torch.equal(p, torch.ones_like(p)), name
        elif name.endswith("bias"):
            assert torch.equal(p, torch.zeros_like(p)), name
        elif p.numel() >= 1000:  # enough draws for the std to be within 10%
            assert abs(p.std().item() / std - 1) < 0.1, (name, p.std().item())
            assert abs(p.mean().item()) < std / 5, name
    assert seen == {"fusion", "pooled", "heads"}
    assert abs(model.get_submodule("fusion").type_embed.weight.std().item() / std - 1) < 0.25  # 2 x 64 draws


def test_library_towers_keep_their_init_and_torch_defaults_stay_available():
    data = _spec(project_inputs="always")
    normal, _ = build_model(validate_data(data, SourceMap()))
    data["param_init"] = {"scheme": "torch"}
    torch_default, _ = build_model(validate_data(data, SourceMap()))
    towers = [n for n, _ in normal.named_parameters() if n.startswith(("text_tower.", "vision_tower."))]
    a, b = dict(normal.named_parameters()), dict(torch_default.named_parameters())
    assert all(torch.equal(a[n], b[n]) for n in towers)  # same seed, same library init: untouched by the scheme
    assert b["fusion.type_embed.weight"].std() > 0.5  # PyTorch's N(0, 1) embedding
    assert b["fusion.text_proj.bias"].abs().sum() > 0  # PyTorch's non-zero Linear biases


def test_tied_decoder_keeps_the_tower_embeddings():
    """The MLM decoder shares the text tower's embedding matrix: graphspec's init must not draw it again (with
    std 0.05 a redraw would show), while the decoder's own bias is graphspec's (zero)."""
    data = graphspec.load(SPECS / "families" / "albef_style.yaml").model_dump(mode="json", exclude={"extends"},
                                                                              exclude_none=True)
    embeddings = {}
    for how in ({"scheme": "torch"}, {"std": 0.05}):
        model, _ = build_model(validate_data({**data, "param_init": how}, SourceMap()))
        emb = model.get_submodule("text_tower").input_embeddings().weight
        assert model.get_submodule("heads.mlm").decoder.weight is emb
        embeddings[how.get("scheme", "normal")] = emb.detach().clone()
    assert torch.equal(embeddings["torch"], embeddings["normal"])  # same seed, the library's draw both times
    assert torch.equal(model.get_submodule("heads.mlm").decoder.bias, torch.zeros_like(emb[:, 0]))
