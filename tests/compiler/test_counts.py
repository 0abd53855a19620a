"""Parameter counts in the compile summary against counts computed independently from the libraries."""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from transformers import BertConfig, BertModel, ElectraConfig, ElectraModel

import graphspec
from graphspec.compiler import compile_spec

SPECS = Path(__file__).resolve().parents[2] / "specs"


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def linear(i: int, o: int) -> int:
    return i * o + o


def co_attention(text_w: int, image_w: int, width: int, layers: int, mlp: int, shared: bool = False,
                 always: bool = False) -> int:
    """By hand: per layer and stream, cross- and self-attention (4 linears + LayerNorm each) and an FFN + LayerNorm;
    `shared`: one cross-attention for both streams; `always`: a projection even where the widths match."""
    attn = 4 * linear(width, width) + 2 * width
    ffn = linear(width, mlp) + linear(mlp, width) + 2 * width
    proj = sum(linear(w, width) for w in (text_w, image_w) if always or w != width)
    per_layer = attn + 2 * (attn + ffn) if shared else 2 * (2 * attn + ffn)
    return proj + 2 * width + layers * per_layer


def test_experiment_1_counts():
    summary = compile_spec(graphspec.load(SPECS / "paper" / "exp1_two_tower.yaml")).summary["params"]
    electra = ElectraModel(ElectraConfig())  # ELECTRA-small is ElectraConfig's default size
    deit = timm.create_model("deit_tiny_patch16_224", num_classes=0)
    assert summary["text_tower"]["total"] == n_params(electra) == 13_483_008
    assert summary["vision_tower"]["total"] == n_params(deit) == 5_524_416
    assert summary["fusion"]["total"] == co_attention(256, 192, 256, 6, 1024, shared=True, always=True)
    assert summary["pooled"]["total"] == 2 * linear(256, 256)
    assert summary["heads.itm"]["total"] == linear(512, 2)
    assert summary["heads.mlm"]["total"] == linear(256, 256) + 2 * 256 + linear(256, 30522)
    parts = sum(v["total"] for k, v in summary.items() if k != "total")
    assert summary["total"]["total"] == parts and summary["total"]["frozen"] == 0


def test_quickstart_counts():
    spec = graphspec.load(SPECS / "quickstart.yaml")
    summary = compile_spec(spec).summary["params"]
    size = spec.nodes["text_tower"].size
    bert = BertModel(BertConfig(hidden_size=size.hidden, num_hidden_layers=size.layers,
                                num_attention_heads=size.heads, intermediate_size=int(size.hidden * size.mlp_ratio),
                                vocab_size=size.vocab_size, max_position_embeddings=size.max_positions),
                     add_pooling_layer=False)
    v = spec.nodes["vision_tower"].size
    vit = timm.create_model("vit_tiny_patch16_224", num_classes=0, img_size=64, embed_dim=v.hidden, depth=v.layers,
                            num_heads=v.heads, mlp_ratio=v.mlp_ratio, patch_size=v.patch_size)
    assert summary["text_tower"]["total"] == n_params(bert)
    assert summary["vision_tower"]["total"] == n_params(vit)
    fusion = spec.nodes["fusion"]
    assert summary["fusion"]["total"] == co_attention(size.hidden, v.hidden, size.hidden, fusion.layers,
                                                      int(size.hidden * fusion.mlp_ratio))


def test_frozen_counts_follow_the_freeze(tiny, write_spec):
    tiny["nodes"]["vision_tower"]["freeze"] = True
    tiny["nodes"]["text_tower"]["freeze"] = {"layers": "0:1"}
    summary = compile_spec(graphspec.load(write_spec(tiny))).summary["params"]
    assert summary["total"]["frozen"] == summary["vision_tower"]["total"] + summary["text_tower"]["frozen"]
    assert 0 < summary["text_tower"]["frozen"] < summary["text_tower"]["total"]
