"""Heads (task outputs) and the objectives that train them."""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field

from .base import Ref, Strict
from .nodes import FreezeField, Freeze


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
    freeze: bool | Freeze = FreezeField


Head = Annotated[Union[ITMHead, MLMHead], Field(discriminator="kind")]


class _Objective(Strict):
    head: str | None = Field(None, description="The head this objective trains; defaults to the objective's name.")
    weight: float = Field(1.0, ge=0, description="Weight of this loss in the total.")


class MLMObjective(_Objective):
    kind: Literal["mlm"] = Field("mlm", description="Defaults to the objective's name.")
    mask_prob: float = Field(0.15, gt=0, lt=1, description="Probability that a token (or word) is masked.")
    whole_word: bool = Field(False, description="Mask all pieces of a word together.")


class ITMObjective(_Objective):
    kind: Literal["itm"] = Field("itm", description="Defaults to the objective's name.")
    negative_prob: float = Field(
        0.5, gt=0, lt=1, description="Share of pairs whose text comes from another scene (balanced by default)."
    )


Objective = Annotated[Union[MLMObjective, ITMObjective], Field(discriminator="kind")]
OBJECTIVE_KINDS = ("mlm", "itm")
