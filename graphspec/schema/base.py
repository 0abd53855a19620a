"""Shared pieces of the spec schema."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

NAME_PATTERN = r"^[A-Za-z][A-Za-z0-9_]*$"
REF_PATTERN = r"^[A-Za-z][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)?$"

Name = Annotated[str, Field(pattern=NAME_PATTERN)]
Ref = Annotated[
    str,
    Field(
        pattern=REF_PATTERN,
        description="A reference to an input or node: `node` (its main output) or `node.port`.",
    ),
]


class Strict(BaseModel):
    """Every spec object: unknown keys are errors, objects are immutable, numbers are finite."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def ref_node(ref: str) -> str:
    return ref.split(".", 1)[0]


def ref_port(ref: str) -> str | None:
    parts = ref.split(".", 1)
    return parts[1] if len(parts) == 2 else None
