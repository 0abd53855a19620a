"""Walking the schema along a field path, to name the keys allowed there.

Pydantic reports an unknown key as `extra_forbidden` at a path; to suggest the
key the user meant we need the model class at that path, which depends on the
data (a node's class follows its `kind`).
"""

from __future__ import annotations

import types
import typing
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel

from .schema import Spec
from .schema.base import OpenLiteral, OpenUnion

TAG_FIELDS = ("kind", "modality")


def _tags(model: type[BaseModel]) -> set:
    out = set()
    for tag in TAG_FIELDS:
        f = model.model_fields.get(tag)
        if f is not None and get_origin(f.annotation) is typing.Literal:
            out.update(get_args(f.annotation))
        elif f is not None:  # a choice plugins extend: Annotated[str, OpenLiteral] (pydantic keeps it in metadata)
            out.update(n for m in f.metadata if isinstance(m, OpenLiteral) for n in m.names())
    return out


def _resolve(tp: Any, data: Any) -> Any:
    """Strip Annotated/Optional; pick the union member that `data` selects."""
    while True:
        origin = get_origin(tp)
        if origin is typing.Annotated:
            open_union = [m for m in tp.__metadata__ if isinstance(m, OpenUnion)]
            tp = Union[tuple(open_union[0].members)] if open_union else get_args(tp)[0]
        elif origin in (Union, types.UnionType):
            members = [a for a in get_args(tp) if a is not type(None)]
            models = [m for m in members if isinstance(m, type) and issubclass(m, BaseModel)]
            if not models:
                return members[0] if len(members) == 1 else None
            if len(models) == 1:
                return models[0]
            chosen = [m for m in models if isinstance(data, dict) and any(data.get(t) in _tags(m) for t in TAG_FIELDS)]
            return chosen[0] if chosen else None
        else:
            return tp


def model_at(path: tuple, data: Any) -> type[BaseModel] | None:
    """The model class that validates the mapping at `path` of `data`, if any."""
    tp: Any = Spec
    cur = data
    for part in path:
        tp = _resolve(tp, cur)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            field = tp.model_fields.get(part) if isinstance(part, str) else None
            if field is None:
                return None
            tp = field.annotation
        elif get_origin(tp) is dict:
            tp = get_args(tp)[1]
        elif get_origin(tp) in (list, tuple):
            tp = get_args(tp)[0]
        else:
            return None
        cur = cur.get(part) if isinstance(cur, dict) else (cur[part] if isinstance(cur, list) and isinstance(part, int) and part < len(cur) else None)
    tp = _resolve(tp, cur)
    return tp if isinstance(tp, type) and issubclass(tp, BaseModel) else None


def fields_at(path: tuple, data: Any) -> list[str]:
    model = model_at(path, data)
    return list(model.model_fields) if model else []


def description_of(path: tuple, data: Any) -> str:
    if not path:
        return ""
    model = model_at(path[:-1], data)
    if model is None or path[-1] not in model.model_fields:
        return ""
    return model.model_fields[path[-1]].description or ""
