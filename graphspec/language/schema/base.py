"""Shared pieces of the spec schema."""

from __future__ import annotations

from typing import Annotated, Any, Callable, Literal, Union

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


class OpenUnion:
    """A union discriminated by `kind` over a list of classes that plugins extend (`graphspec.language.schema.
    extend`): pydantic reads the list whenever a model holding it is built or rebuilt."""

    def __init__(self, members: list):
        self.members = members

    def __get_pydantic_core_schema__(self, source: Any, handler: Any) -> Any:
        return handler.generate_schema(Annotated[Union[tuple(self.members)], Field(discriminator="kind")])


class OpenLiteral:
    """A choice of names (a task, an objective kind) that plugins extend, read when a model is (re)built."""

    def __init__(self, names: Callable[[], tuple[str, ...]]):
        self.names = names

    def __get_pydantic_core_schema__(self, source: Any, handler: Any) -> Any:
        return handler.generate_schema(Literal[self.names()])


def kind_of(cls: type) -> str:
    """The kind a spec class declares (`kind: Literal["NAME"]`)."""
    from typing import get_args

    return get_args(cls.model_fields["kind"].annotation)[0]


def ref_node(ref: str) -> str:
    return ref.split(".", 1)[0]


def ref_port(ref: str) -> str | None:
    parts = ref.split(".", 1)
    return parts[1] if len(parts) == 2 else None
