"""Pairs of texts and images -> model inputs: tokenised, masked for MLM, labelled for ITM."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from graphspec.errors import Issue, SpecError
from graphspec.schema import Spec

from .data.pairs import Pairs
from .objectives import mask_tokens


@dataclass(frozen=True)
class Roles:
    """Which spec names play which part in the captions task."""

    text: str  # the text input
    image: str  # the image input
    mlm: str | None  # the mlm objective's name
    itm: str | None  # the itm objective's name
    itc: str | None = None  # the itc objective's name

    @classmethod
    def of(cls, spec: Spec) -> "Roles":
        texts = [n for n, i in spec.inputs.items() if i.modality == "text"]
        images = [n for n, i in spec.inputs.items() if i.modality == "image"]
        if len(texts) != 1 or len(images) != 1:
            raise SpecError([Issue(("inputs",), "the captions task needs exactly one text and one image input",
                                        f"this spec has text inputs {texts} and image inputs {images}")])
        by_kind = {o.kind: n for n, o in spec.objectives.items()}
        other = [n for n, o in spec.objectives.items() if o.kind not in ("mlm", "itm", "itc")]
        if other:
            raise SpecError([Issue(("objectives", other[0]), f"the captions task trains mlm, itm and itc objectives, not "
                                   f"'{spec.objectives[other[0]].kind}'", "remove it, or train it with its own task "
                                   "(data.train.task)")])
        if not by_kind:
            raise SpecError([Issue(("objectives",), "there is no objective to train",
                                        "add `objectives: {itm: {weight: 1.0}}` (and/or mlm, itc)")])
        return cls(texts[0], images[0], by_kind.get("mlm"), by_kind.get("itm"), by_kind.get("itc"))


def encode(pairs: Pairs, spec: Spec, roles: Roles, tokenizer, gen: torch.Generator | None) -> dict:
    """Model inputs for a batch; with `gen`, text is masked for MLM (labels on matching pairs only)."""
    enc = tokenizer(pairs.texts, padding="max_length", truncation=True, return_tensors="pt",
                    max_length=spec.inputs[roles.text].max_length, return_special_tokens_mask=True)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    batch = {f"{roles.text}_ids": ids, f"{roles.text}_mask": mask, roles.image: pairs.images, "match": pairs.match}
    if roles.mlm is not None and gen is not None:
        obj = spec.objectives[roles.mlm]
        special = enc["special_tokens_mask"].bool() | (mask == 0)
        word_ids = [enc.word_ids(i) for i in range(len(pairs.texts))]
        masked, labels = mask_tokens(ids, special, word_ids, obj.mask_prob, obj.whole_word, tokenizer.mask_token_id,
                                     len(tokenizer), pairs.match.bool(), gen)
        batch[f"{roles.text}_ids"] = masked
        batch[f"{spec.objective_head(roles.mlm)}_labels"] = labels
    return batch
