"""One builder per kind: spec object + input ports -> an nn.Module with flat arguments.

Each builder is registered (`graphspec.compiler.kinds.register`) with the ports its kind reads and gives and, for an
encoder, how its inputs are prepared (tokenizer, image transform): adding a kind is its spec class, its builder
here and its layer. Builders are the only place that reads spec objects; the modules they return never see one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import networkx as nx

from graphspec.language.errors import Issue, SpecError
from graphspec.language.schema import Spec, ref_node
from graphspec.language.schema import heads as S
from graphspec.language.schema import nodes as N

from . import backbones
from .kinds import (
    BOXES,
    EITHER,
    LAYER_PORT,
    PIXELS,
    SEQ,
    TOKENS,
    HeadOutputs,
    Port,
    Want,
    register,
    seq,
)
from .layers import heads as H
from .layers.encoders import HFTextEncoder, HFVisionEncoder, TimmVisionEncoder
from .layers.fusion import MergedAttention, TwoStreamFusion
from .layers.one_tower import (
    HFBackbone,
    OneTower,
    PatchEmbed,
    TimmViTBackbone,
    TokenEmbed,
)
from .layers.pooling import ClsPool, MeanPool, Projection
from .preprocess import hf_tokenizer, hf_transform, timm_transform


@dataclass(frozen=True)
class BuildContext:
    spec: Spec
    graph: nx.MultiDiGraph
    meta: bool  # build on the meta device: shapes and counts, no weights
    modules: dict  # name -> module built so far (e.g. for mlm's vocab_from)
    warnings: list  # compile-time notes (Issue, severity "warning")


def _pooled(ins: dict[str, Port | None]) -> dict[str, Port]:
    mods = {p.modality for p in ins.values() if p is not None}
    return {"pooled": Port("vector", mods.pop() if len(mods) == 1 else "joint")}


def _projected(ins: dict[str, Port | None]) -> dict[str, Port]:
    src = ins.get("input")
    form = src.form if src is not None and src.form in ("sequence", "vector") else "sequence"
    return {"out": Port(form, src.modality if src is not None else "joint")}


def _one_tower_library(node) -> str:
    return node.library or ("transformers" if node.backbone == "text" else "timm")


def _probability(head: str, raw) -> dict:
    return {f"{head}_probability": raw.float().softmax(-1)[:, 1]}  # of a match


def _prediction(head: str, raw) -> dict:
    return {f"{head}_prediction": raw.float().argmax(-1)}


def _embeddings(head: str, raw) -> dict:
    return {"text_embedding": raw["text"], "image_embedding": raw["image"]}  # normalised unimodal features


TWO_STREAMS = {"inputs.text": Want(SEQ, "text"), "inputs.image": Want(SEQ, "image")}
LOGITS = {"logits": Port("vector", "joint")}
VECTOR = {"input": Want(("vector",))}


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


def _hf_model(node, cfg, path: tuple, ctx: BuildContext):
    """A transformers tower's model, checkpointed by transformers itself with `checkpoint: true`."""
    model = backbones.hf_model(node, cfg, path, ctx.meta)
    if node.checkpoint:
        backbones.checkpoint_hf(model, path)
    return model


@register(N.HFText, reads={"input": TOKENS}, gives={"seq": seq("text")}, main="seq", layers=True,
          tokenizer=hf_tokenizer, library="transformers", text_vocabulary=True)
def build_hf_text(node, path, ins, ctx):
    cfg = backbones.hf_config(node, path, meta=ctx.meta, warnings=ctx.warnings)
    module = HFTextEncoder(_hf_model(node, cfg, path, ctx), _layers(path, ctx))
    _check_layers(module, path, ctx)
    return module


@register(N.HFVision, reads={"input": PIXELS}, gives={"seq": seq("image")}, main="seq", layers=True,
          image_transform=hf_transform, library="transformers", image_processor=True)
def build_hf_vision(node, path, ins, ctx):
    size = _image_size(node.input, ctx)
    cfg = backbones.hf_config(node, path, image_size=size, meta=ctx.meta, warnings=ctx.warnings)
    interpolate = getattr(cfg, "image_size", size) != size
    module = HFVisionEncoder(_hf_model(node, cfg, path, ctx), interpolate, _layers(path, ctx))
    _check_layers(module, path, ctx)
    return module


@register(N.TimmVision, reads={"input": PIXELS}, gives={"seq": seq("image")}, main="seq", layers=True,
          image_transform=timm_transform, library="timm")
def build_timm_vision(node, path, ins, ctx):
    model = backbones.timm_model(node, _image_size(node.input, ctx), path, ctx.meta)
    if node.checkpoint:
        backbones.checkpoint_timm(model, node.source, path)
    module = TimmVisionEncoder(model, _layers(path, ctx))
    _check_layers(module, path, ctx)
    return module


@register(N.OneTower, reads={"inputs.text": TOKENS, "inputs.image": PIXELS},
          gives={"text": seq("text"), "image": seq("image"), "seq": seq("joint")}, main="seq", tokenizer=hf_tokenizer,
          library=_one_tower_library, text_vocabulary=True)
def build_one_tower(node, path, ins, ctx):
    image = ctx.spec.inputs[ref_node(node.inputs.image)]
    own = node.embeddings == "own"
    cfg = None
    if _one_tower_library(node) == "transformers":
        vision = node.backbone == "vision"
        cfg = backbones.hf_config(node, path, image_size=image.size if vision else None, meta=ctx.meta,
                                  warnings=ctx.warnings)
        _refuse_stages(cfg, path)
        interpolate = vision and getattr(cfg, "image_size", image.size) != image.size
        backbone = HFBackbone(_hf_model(node, cfg, path, ctx), vision, own, node.final_norm, interpolate)
        dropout = getattr(cfg, "hidden_dropout_prob", 0.0)
        embed_width = backbone.width if own else getattr(cfg, "embedding_size", None) or backbone.width
        patch = getattr(cfg, "patch_size", None) if vision and own else node.patch_size
    else:
        model: Any = backbones.timm_model(node, image.size, path, ctx.meta)
        patch = model.patch_embed.patch_size[0] if own else node.patch_size
        dropout = getattr(getattr(model, "pos_drop", None), "p", 0.0)
        backbone = TimmViTBackbone(model, node.checkpoint, own, node.final_norm)
        embed_width = backbone.width
    dropout = node.dropout if node.dropout is not None else dropout
    text_embed = image_embed = None
    if not own or node.backbone == "vision":
        text_embed = TokenEmbed(node.vocab_size, node.max_text_positions, embed_width, dropout, node.embedding_init)
    if not own or node.backbone == "text":
        image_embed = PatchEmbed(image.channels, node.patch_size, node.position_image_size or image.size,
                                 embed_width, node.image_cls, dropout, node.embedding_init)
    if text_embed is None:
        assert cfg is not None  # the text backbone embeds its own text: a transformers model
        vocab, positions = cfg.vocab_size, getattr(cfg, "max_position_embeddings", None)
    else:
        vocab, positions = node.vocab_size, node.max_text_positions
    return OneTower(backbone, text_embed, image_embed, embed_width, node.attention_mask == "padding", vocab,
                    positions, patch)


def _refuse_stages(cfg, path: tuple) -> None:
    """A one tower runs one sequence of text and image tokens through layers of one width. A hierarchical vision
    model (Swin, ConvNeXt...) has stages of growing width over a 2-D grid that each stage merges."""
    if getattr(cfg, "depths", None) is not None:
        raise SpecError([Issue(path + ("source",), f"a '{cfg.model_type}' model cannot be a one_tower backbone: its "
                               f"stages ({', '.join(map(str, cfg.depths))} layers) change width and need a 2-D grid "
                               "of patches (Swin's `input_dimensions`), and text tokens are no grid. The Renaissance "
                               "platform builds such a model but cannot run it: it calls the encoder without the "
                               "grid, at the wrong width",
                               "use a plain transformer: a text encoder (BERT, ELECTRA) or a ViT/DeiT")])


@register(N.Projection, reads={"input": Want(EITHER)}, gives=_projected)
def build_projection(node, path, ins, ctx):
    return Projection(ins["input"].width, node.width)


def _fusion_widths(node, ins) -> tuple[int, int, int]:
    text_w, image_w = ins["inputs.text"].width, ins["inputs.image"].width
    return text_w, image_w, node.width or text_w


@register(N.CoAttention, reads=TWO_STREAMS, gives={"text": seq("text"), "image": seq("image")})
def build_co_attention(node, path, ins, ctx):
    return TwoStreamFusion(*_fusion_widths(node, ins), node.layers, node.heads, node.mlp_ratio, node.dropout,
                           cross_first=True, share_cross=node.share_cross,
                           always_project=node.project_inputs == "always", checkpoint=node.checkpoint)


@register(N.CrossAttention, reads=TWO_STREAMS, gives={"text": seq("text"), "image": seq("image")})
def build_cross_attention(node, path, ins, ctx):
    return TwoStreamFusion(*_fusion_widths(node, ins), node.layers, node.heads, node.mlp_ratio, node.dropout,
                           cross_first=False, text=node.direction in ("both", "text"),
                           image=node.direction in ("both", "image"), always_project=node.project_inputs == "always",
                           checkpoint=node.checkpoint)


@register(N.MergedAttention, reads=TWO_STREAMS,
          gives={"text": seq("text"), "image": seq("image"), "seq": seq("joint")}, main="seq")
def build_merged_attention(node, path, ins, ctx):
    return MergedAttention(*_fusion_widths(node, ins), node.layers, node.heads, node.mlp_ratio, node.dropout,
                           always_project=node.project_inputs == "always", checkpoint=node.checkpoint)


@register(N.ClsPool, reads={"inputs.0": Want(SEQ), "inputs.1": Want(SEQ)}, gives=_pooled)
def build_cls_pool(node, path, ins, ctx):
    return ClsPool([ins[f"inputs.{i}"].width for i in range(len(node.inputs))], node.dense)


@register(N.MeanPool, reads={"input": Want(SEQ)}, gives=_pooled)
def build_mean_pool(node, path, ins, ctx):
    return MeanPool(ins["input"].width)


@register(S.ITMHead, reads=VECTOR, gives=LOGITS,
          outputs=HeadOutputs(_probability, ("no match", "match"), features=True))
def build_itm(node, path, ins, ctx):
    return H.ITMHead(ins["input"].width, node.hidden)


@register(S.MLMHead, reads={"input": Want(SEQ, "text"), "vocab_from": Want(SEQ)}, gives={"logits": seq("text")},
          outputs=HeadOutputs(exported=False))
def build_mlm(node, path, ins, ctx):
    if node.vocab_from is None:
        return H.MLMHead(ins["input"].width, node.vocab_size)
    source = ctx.modules[ref_node(node.vocab_from)]
    tied = source.input_embeddings() if node.tie else None
    return H.MLMHead(ins["input"].width, source.vocab_size, tied)


@register(S.ITCHead, reads={"inputs.text": Want(EITHER), "inputs.image": Want(EITHER)}, gives=LOGITS,
          outputs=HeadOutputs(_embeddings))
def build_itc(node, path, ins, ctx):
    return H.ITCHead(ins["inputs.text"].width, ins["inputs.image"].width, node.dim, node.temperature)


def _hidden(node, ins) -> int | None:
    return ins["input"].width if node.hidden == "input" else node.hidden


@register(S.ClassifyHead, reads=VECTOR, gives=LOGITS, outputs=HeadOutputs(_prediction, features=True))
def build_classify(node, path, ins, ctx):
    return H.ClassifyHead(ins["input"].width, node.classes, _hidden(node, ins))


@register(S.PairClassifyHead, reads=VECTOR, gives=LOGITS,
          outputs=HeadOutputs(_prediction, ("false", "true"), features=True))
def build_pair_classify(node, path, ins, ctx):
    return H.PairClassifyHead(ins["input"].width, node.classes, _hidden(node, ins))


@register(S.VQAHead, reads=VECTOR, gives=LOGITS, outputs=HeadOutputs(_prediction, features=True))
def build_vqa(node, path, ins, ctx):
    return H.VQAHead(ins["input"].width, node.answers, node.hidden)


@register(S.RefHead, reads={"inputs.image": Want(SEQ, "image"), "inputs.text": Want(EITHER), "inputs.boxes": BOXES},
          gives=LOGITS, outputs=HeadOutputs(_prediction))
def build_ref(node, path, ins, ctx):
    return H.RefHead(ins["inputs.image"].width, ins["inputs.text"].width, node.heads)
