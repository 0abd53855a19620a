"""One builder per kind: spec object + input ports -> an nn.Module with flat arguments.

A registry is a dict and a decorator; the key is the kind's name. Builders are
the only place that reads spec objects; the modules they return never see one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import networkx as nx
from torch import nn

from graphspec.errors import Issue, SpecError
from graphspec.schema import Spec, ref_node

from . import backbones
from .layers import heads as H
from .layers.encoders import HFTextEncoder, HFVisionEncoder, TimmVisionEncoder
from .layers.fusion import MergedAttention, TwoStreamFusion
from .layers.one_tower import HFTextBackbone, OneTower, PatchEmbed, TimmViTBackbone, TokenEmbed
from .layers.pooling import ClsPool, MeanPool, Projection
from .ports import LAYER_PORT, Port


@dataclass(frozen=True)
class BuildContext:
    spec: Spec
    graph: nx.MultiDiGraph
    meta: bool  # build on the meta device: shapes and counts, no weights
    modules: dict  # name -> module built so far (e.g. for mlm's vocab_from)
    warnings: list  # compile-time notes (Issue, severity "warning")


Builder = Callable[[object, tuple, dict[str, Port], BuildContext], nn.Module]
BUILDERS: dict[str, Builder] = {}


def register(kind: str):
    def deco(fn: Builder) -> Builder:
        if kind in BUILDERS:
            raise ValueError(f"a builder for '{kind}' is already registered")
        BUILDERS[kind] = fn
        return fn
    return deco


def _image_size(ref: str, ctx: BuildContext) -> int:
    return ctx.spec.inputs[ref_node(ref)].size


def _layers(path: tuple, ctx: BuildContext) -> tuple[int, ...]:
    """The intermediate layers (`tower.layer_N`) the graph reads from this node."""
    return tuple(sorted(int(m.group(1)) for p in ctx.graph.nodes[path[1]]["out"] if (m := LAYER_PORT.match(p))))


def _check_layers(module, path: tuple, ctx: BuildContext) -> None:
    bad = [n for n in module.layers if not 1 <= n <= module.num_layers]
    if bad:
        where = next(e["field"] for _, _, e in ctx.graph.out_edges(path[1], data=True) if e["src_port"] == f"layer_{bad[0]}")
        if module.num_layers == 0:
            raise SpecError([Issue(where, f"'{path[1]}' has no stack of layers graphspec can read (blocks, stages "
                                   "or layers)", "read its last output (`seq`) instead")])
        raise SpecError([Issue(where, f"'{path[1]}' has {module.num_layers} layers: there is no layer_{bad[0]}",
                               f"use layer_1 .. layer_{module.num_layers}")])


@register("hf_text")
def build_hf_text(node, path, ins, ctx):
    cfg = backbones.hf_config(node, path, meta=ctx.meta, warnings=ctx.warnings)
    module = HFTextEncoder(backbones.hf_model(node, cfg, path, ctx.meta), _layers(path, ctx))
    _check_layers(module, path, ctx)
    return module


@register("hf_vision")
def build_hf_vision(node, path, ins, ctx):
    size = _image_size(node.input, ctx)
    cfg = backbones.hf_config(node, path, image_size=size, meta=ctx.meta, warnings=ctx.warnings)
    interpolate = getattr(cfg, "image_size", size) != size
    module = HFVisionEncoder(backbones.hf_model(node, cfg, path, ctx.meta), interpolate, _layers(path, ctx))
    _check_layers(module, path, ctx)
    return module


@register("timm_vision")
def build_timm_vision(node, path, ins, ctx):
    model = backbones.timm_model(node, _image_size(node.input, ctx), path, ctx.meta)
    module = TimmVisionEncoder(model, _layers(path, ctx))
    _check_layers(module, path, ctx)
    return module


@register("one_tower")
def build_one_tower(node, path, ins, ctx):
    image = ctx.spec.inputs[ref_node(node.inputs.image)]
    if node.backbone == "text":
        cfg = backbones.hf_config(node, path, meta=ctx.meta, warnings=ctx.warnings)
        backbone = HFTextBackbone(backbones.hf_model(node, cfg, path, ctx.meta))
        other = PatchEmbed(image.channels, node.patch_size, image.size, backbone.width)
        return OneTower(backbone, other, True, cfg.vocab_size, getattr(cfg, "max_position_embeddings", None),
                        node.patch_size)
    backbone = TimmViTBackbone(backbones.timm_model(node, image.size, path, ctx.meta))
    other = TokenEmbed(node.vocab_size, node.max_text_positions, backbone.width)
    patch = backbone.model.patch_embed.patch_size
    return OneTower(backbone, other, False, node.vocab_size, node.max_text_positions, patch[0])


@register("projection")
def build_projection(node, path, ins, ctx):
    return Projection(ins["input"].width, node.width)


def _fusion_widths(node, ins) -> tuple[int, int, int]:
    text_w, image_w = ins["inputs.text"].width, ins["inputs.image"].width
    return text_w, image_w, node.width or text_w


@register("co_attention")
def build_co_attention(node, path, ins, ctx):
    return TwoStreamFusion(*_fusion_widths(node, ins), node.layers, node.heads, node.mlp_ratio, node.dropout,
                           cross_first=True)


@register("cross_attention")
def build_cross_attention(node, path, ins, ctx):
    return TwoStreamFusion(*_fusion_widths(node, ins), node.layers, node.heads, node.mlp_ratio, node.dropout,
                           cross_first=False, text=node.direction in ("both", "text"),
                           image=node.direction in ("both", "image"))


@register("merged_attention")
def build_merged_attention(node, path, ins, ctx):
    return MergedAttention(*_fusion_widths(node, ins), node.layers, node.heads, node.mlp_ratio, node.dropout)


@register("cls_pool")
def build_cls_pool(node, path, ins, ctx):
    return ClsPool([ins[f"inputs.{i}"].width for i in range(len(node.inputs))], node.dense)


@register("mean_pool")
def build_mean_pool(node, path, ins, ctx):
    return MeanPool(ins["input"].width)


@register("itm")
def build_itm(node, path, ins, ctx):
    return H.ITMHead(ins["input"].width, node.hidden)


@register("mlm")
def build_mlm(node, path, ins, ctx):
    if node.vocab_from is None:
        return H.MLMHead(ins["input"].width, node.vocab_size)
    source = ctx.modules[ref_node(node.vocab_from)]
    tied = source.input_embeddings() if node.tie else None
    return H.MLMHead(ins["input"].width, source.vocab_size, tied)


@register("itc")
def build_itc(node, path, ins, ctx):
    return H.ITCHead(ins["inputs.text"].width, ins["inputs.image"].width, node.dim, node.temperature)


@register("classify")
def build_classify(node, path, ins, ctx):
    return H.ClassifyHead(ins["input"].width, node.classes, node.hidden)


@register("pair_classify")
def build_pair_classify(node, path, ins, ctx):
    return H.PairClassifyHead(ins["input"].width, node.classes, node.hidden)


@register("vqa")
def build_vqa(node, path, ins, ctx):
    return H.VQAHead(ins["input"].width, node.answers, node.hidden)


@register("ref")
def build_ref(node, path, ins, ctx):
    return H.RefHead(ins["inputs.image"].width, ins["inputs.text"].width, node.heads)
