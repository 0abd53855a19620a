"""One builder per kind: spec object + input ports -> an nn.Module with flat arguments.

A registry is a dict and a decorator; the key is the kind's name. Builders are
the only place that reads spec objects; the modules they return never see one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from graphspec.schema import Spec, ref_node

from . import backbones
from .layers.encoders import HFTextEncoder, HFVisionEncoder, TimmVisionEncoder
from .layers.fusion import CoAttention
from .layers.heads import ITMHead, MLMHead
from .layers.pooling import ClsPool, Projection
from .ports import Port


@dataclass(frozen=True)
class BuildContext:
    spec: Spec
    meta: bool  # build on the meta device: shapes and counts, no weights
    modules: dict  # name -> module built so far (e.g. for mlm's vocab_from)


Builder = Callable[[object, tuple, dict[str, Port], BuildContext], nn.Module]
BUILDERS: dict[str, Builder] = {}


def register(kind: str):
    def deco(fn: Builder) -> Builder:
        if kind in BUILDERS:
            raise ValueError(f"a builder for '{kind}' is already registered")
        BUILDERS[kind] = fn
        return fn
    return deco


def _image_size(node, ctx: BuildContext) -> int:
    return ctx.spec.inputs[ref_node(node.input)].size


@register("hf_text")
def build_hf_text(node, path, ins, ctx):
    cfg = backbones.hf_config(node, path)
    return HFTextEncoder(backbones.hf_model(node, cfg, path, ctx.meta))


@register("hf_vision")
def build_hf_vision(node, path, ins, ctx):
    size = _image_size(node, ctx)
    cfg = backbones.hf_config(node, path, image_size=size)
    interpolate = getattr(cfg, "image_size", size) != size
    return HFVisionEncoder(backbones.hf_model(node, cfg, path, ctx.meta), interpolate_pos_encoding=interpolate)


@register("timm_vision")
def build_timm_vision(node, path, ins, ctx):
    return TimmVisionEncoder(backbones.timm_model(node, _image_size(node, ctx), path, ctx.meta))


@register("projection")
def build_projection(node, path, ins, ctx):
    return Projection(ins["input"].width, node.width)


@register("co_attention")
def build_co_attention(node, path, ins, ctx):
    text_w, image_w = ins["inputs.text"].width, ins["inputs.image"].width
    return CoAttention(text_w, image_w, node.width or text_w, node.layers, node.heads, node.mlp_ratio, node.dropout)


@register("cls_pool")
def build_cls_pool(node, path, ins, ctx):
    return ClsPool([ins[f"inputs.{i}"].width for i in range(len(node.inputs))], node.dense)


@register("itm")
def build_itm(node, path, ins, ctx):
    return ITMHead(ins["input"].width, node.hidden)


@register("mlm")
def build_mlm(node, path, ins, ctx):
    vocab = node.vocab_size
    if node.vocab_from is not None:
        vocab = ctx.modules[ref_node(node.vocab_from)].model.config.vocab_size
    return MLMHead(ins["input"].width, vocab)
