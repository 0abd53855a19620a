"""Heads (task outputs) and the objectives that train them."""

from __future__ import annotations

from typing import Annotated, Any, Literal, TYPE_CHECKING, Union

from pydantic import Field, model_validator

from .base import OpenLiteral, OpenUnion, Ref, Strict, kind_of
from .nodes import Freeze, FreezeField


class ITMHead(Strict):
    """Image-text matching: one logit pair (no match, match) from a pooled vector."""

    kind: Literal["itm"] = Field(description="Image-text matching head.")
    input: Ref = Field(description="A pooled vector, e.g. a cls_pool node.")
    hidden: int | None = Field(None, ge=1, description="Width of a hidden layer (GELU) before the output; none by default.")
    freeze: bool | Freeze = FreezeField


class MLMHead(Strict):
    """Masked language modelling: a transform (dense, GELU, LayerNorm) and a decoder to the vocabulary."""

    kind: Literal["mlm"] = Field(description="Masked language modelling head.")
    input: Ref = Field(description="A text sequence, e.g. the text stream of a fusion node.")
    vocab_from: Ref | None = Field(None, description="A text encoder node whose vocabulary the head predicts.")
    vocab_size: int | None = Field(None, ge=2, description="The vocabulary size, when there is no `vocab_from`.")
    tie: bool = Field(False, description="Share the decoder's weights with `vocab_from`'s input token embeddings.")
    freeze: bool | Freeze = FreezeField


class PairInputs(Strict):
    text: Ref = Field(description="The text side: a vector or a sequence (its first token is used).")
    image: Ref = Field(description="The image side: a vector or a sequence (its first token is used).")


class ITCHead(Strict):
    """Image-text contrastive: both sides projected and normalised; logits are cosine similarities / temperature."""

    kind: Literal["itc"] = Field(description="Image-text contrastive head.")
    inputs: PairInputs = Field(description="The unimodal text and image features to align.")
    dim: int = Field(256, ge=1, description="Width of the shared embedding space.")
    temperature: float = Field(0.07, gt=0, le=1, description="Initial temperature (learned).")
    freeze: bool | Freeze = FreezeField


class ClassifyHead(Strict):
    """n-way classification of a pooled vector (SNLI-VE: 3 classes)."""

    kind: Literal["classify"] = Field(description="Classification head.")
    input: Ref = Field(description="A pooled vector.")
    classes: int = Field(ge=2, description="Number of classes.")
    hidden: Annotated[int, Field(ge=1)] | Literal["input"] | None = Field(
        None, description="Width of a hidden layer (LayerNorm, GELU) before the output; `input`: the pooled "
        "vector's width (for pair_classify, one pass's), as ViLT-style heads size it, whatever the model's width.")
    freeze: bool | Freeze = FreezeField


class PairClassifyHead(ClassifyHead):
    """Classification of two image-text passes (NLVR2): the batch holds each example's two passes in
    consecutive rows, whose pooled vectors are concatenated before classifying."""

    kind: Literal["pair_classify"] = Field(description="Classification over two consecutive image-text passes.")
    classes: int = Field(2, ge=2, description="Number of classes (NLVR2: true or false).")


class VQAHead(Strict):
    """Multi-label scores over an answer vocabulary (trained with soft scores)."""

    kind: Literal["vqa"] = Field(description="Visual question answering head.")
    input: Ref = Field(description="A pooled vector.")
    answers: int = Field(ge=1, description="Size of the answer vocabulary.")
    hidden: int | None = Field(None, ge=1, description="Width of a hidden layer (LayerNorm, GELU) before the output.")
    freeze: bool | Freeze = FreezeField


class RefInputs(Strict):
    image: Ref = Field(description="The image stream after fusion (a sequence).")
    text: Ref = Field(description="The expression: a vector (e.g. pooled) or a sequence (its first token).")
    boxes: Ref = Field(description="A boxes input: the candidate regions.")


class RefHead(Strict):
    """Reference resolution: one score per candidate region; padded candidates get no probability."""

    kind: Literal["ref"] = Field(description="Reference resolution head.")
    inputs: RefInputs = Field(description="Image stream, expression and candidate boxes.")
    heads: int = Field(4, ge=1, description="Attention heads of each box's look at the image stream.")
    freeze: bool | Freeze = FreezeField


HEAD_CLASSES: list[type[Strict]] = [ITMHead, MLMHead, ITCHead, ClassifyHead, PairClassifyHead, VQAHead, RefHead]
if TYPE_CHECKING:
    Head = Any  # one of HEAD_CLASSES
else:
    Head = Annotated[Any, OpenUnion(HEAD_CLASSES)]


def head_kinds() -> tuple[str, ...]:
    """Every head kind; each has its objective (an objective's kind defaults to its name)."""
    return tuple(kind_of(c) for c in HEAD_CLASSES)


class _Objective(Strict):
    head: str | None = Field(None, description="The head this objective trains; defaults to the objective's name.")
    weight: float = Field(1.0, ge=0, description="Weight of this loss in the total.")


class MLMObjective(_Objective):
    kind: Literal["mlm"] = Field("mlm", description="Defaults to the objective's name.")
    mask_prob: float = Field(0.15, gt=0, lt=1, description="Probability that a token (or word) is masked.")
    whole_word: bool = Field(False, description="Mask all pieces of a word together.")
    selection: Literal["probability", "fixed_count"] = Field(
        "probability", description="probability: each word (or token) is chosen with `mask_prob`, "
        "independently; fixed_count: round(mask_prob x the padded text length) positions' worth of candidates "
        "(words with `whole_word`, else tokens; padding positions are candidates too, [CLS] and [SEP] are not) "
        "are chosen in random order, and those that fall on padding are then dropped: transformers 4's "
        "whole-word collator, which ViLT, METER and Renaissance use.")


class ITMObjective(_Objective):
    kind: Literal["itm"] = Field("itm", description="Defaults to the objective's name.")
    negative_prob: float = Field(
        0.5, gt=0, lt=1, description="Share of negative pairs (balanced by default): with `recipe: one_pass` each "
        "pair is one with this probability, its text a caption of another image; with `two_pass` exactly this "
        "share of the global micro batch, its image another one."
    )
    recipe: Literal["one_pass", "two_pass"] = Field(
        "one_pass", description="one_pass: ITM on the same (masked) text MLM reads, in the same forward pass; "
        "negatives are captions of other images. two_pass: ITM in a pass of its own on unmasked text, exactly "
        "`negative_prob` of the global micro batch with the image swapped for another (ViLT, METER, "
        "Renaissance); MLM's pass keeps the true images. two_pass runs the model on twice the rows.")


class HeadObjective(_Objective):
    """The loss a downstream head implies: cross-entropy (classify, pair_classify, ref: padded candidates masked),
    binary cross-entropy with soft scores (vqa), symmetric InfoNCE (itc)."""

    kind: Annotated[str, OpenLiteral(lambda: tuple(k for k in head_kinds() if k not in ("mlm", "itm")))] = Field(
        description="The kind of the head it trains; defaults to the objective's name.")
    rerank_k: int | None = Field(None, ge=1, le=1024, description="itc in the retrieval task: where the graph "
                                 "also has an itm head, validation re-ranks each text's top k images and each "
                                 "image's top k texts by ITM (ALBEF; unset: 16); the cost grows as k x (texts + "
                                 "images) pairs.")

    @model_validator(mode="after")
    def _rerank_for_itc_only(self):
        if self.rerank_k is not None and self.kind != "itc":
            raise ValueError(f"rerank_k applies to an itc objective, not to {self.kind}")
        return self


Objective = Annotated[Union[MLMObjective, ITMObjective, HeadObjective], Field(discriminator="kind")]
