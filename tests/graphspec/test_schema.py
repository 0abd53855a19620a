"""The schema itself: every object forbids unknown keys, is immutable, and documents every field."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from graphspec.language import schema


def _models() -> list[type[BaseModel]]:
    return sorted({obj for obj in vars(schema).values() if isinstance(obj, type) and issubclass(obj, BaseModel)
                   and obj is not schema.Strict}, key=lambda m: m.__name__)


@pytest.mark.parametrize("model", _models(), ids=lambda m: m.__name__)
def test_every_field_is_documented_and_unknown_keys_are_errors(model):
    assert model.model_config.get("extra") == "forbid" and model.model_config.get("frozen")
    undocumented = [name for name, f in model.model_fields.items() if not f.description]
    assert not undocumented, f"{model.__name__}: {undocumented} have no description"


def test_every_kind_is_in_a_union():
    node_kinds = {schema.kind_of(m) for m in schema.NODE_CLASSES}
    assert node_kinds == {"hf_text", "hf_vision", "timm_vision", "one_tower", "projection", "co_attention",
                          "cross_attention", "merged_attention", "mean_pool", "cls_pool"}
    head_kinds = {schema.kind_of(m) for m in schema.HEAD_CLASSES}
    assert head_kinds == {"itm", "mlm", "itc", "classify", "pair_classify", "vqa", "ref"}
