"""The top-level spec."""

from __future__ import annotations

from typing import Any

from pydantic import Field, PrivateAttr, model_validator

from .base import Strict
from .heads import Head, Objective, head_kinds
from .inputs import Input
from .nodes import Node, ParamInit
from .training import Data, Distributed, Train
from .tasks import TASKS, Roles


class Spec(Strict):
    """A vision-language encoder: inputs, nodes, heads, objectives, data, training and distribution."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="Name of the model and its runs.")
    description: str = Field("", description="Free text.")
    extends: str | list[str] | None = Field(
        None, description="Base spec file(s), relative to this one; this file's keys override theirs; null removes an entry or sets an optional field to none."
    )
    init_from: str | None = Field(
        None, description="A checkpoint directory (a run's `checkpoint/`) whose weights initialise this model by "
        "parameter name, e.g. to fine-tune a pretrained encoder with new heads; every key that does not match is "
        "reported. Relative to the current directory.")
    param_init: ParamInit = Field(
        default_factory=ParamInit, description="How the parameters graphspec creates are initialised (library "
        "towers keep their own).")
    inputs: dict[str, Input] = Field(min_length=1, description="Named inputs.")
    nodes: dict[str, Node] = Field(min_length=1, description="Named nodes: encoders, projections, fusion, poolers.")
    heads: dict[str, Head] = Field(default_factory=dict, description="Named task heads.")
    objectives: dict[str, Objective] = Field(default_factory=dict, description="Losses, each training one head.")
    data: Data = Field(default_factory=Data, description="Training and validation data.")
    train: Train = Field(default_factory=Train, description="Steps, batch sizes, optimizer, schedule, precision.")
    distributed: Distributed = Field(default_factory=Distributed, description="Processes, ZeRO stage, offload.")

    _source: Any = PrivateAttr(default=None)  # where each field was written (graphspec.language.parsing.SourceMap)
    _warnings: Any = PrivateAttr(default=None)  # the spec rules' located warnings, once loading ran them

    @model_validator(mode="before")
    @classmethod
    def _objective_kind_from_name(cls, data: Any) -> Any:
        # `objectives: {mlm: {weight: 1}}` reads naturally; the kind is the name unless given.
        if isinstance(data, dict) and isinstance(data.get("objectives"), dict):
            objectives = {}
            for name, obj in data["objectives"].items():
                if isinstance(obj, dict) and "kind" not in obj and name in head_kinds():
                    obj = {"kind": name, **obj}
                objectives[name] = obj
            data = {**data, "objectives": objectives}
        return data

    def objective_head(self, name: str) -> str:
        return self.objectives[name].head or name

    def input_tensors(self) -> dict[str, tuple[str, ...]]:
        """Each input's tensors (the model's forward arguments, in order; see `Input.tensors`)."""
        return {name: inp.tensors(name) for name, inp in self.inputs.items()}

    def input_of(self, tensor: str) -> str | None:
        """The input a forward argument belongs to."""
        return next((name for name, names in self.input_tensors().items() if tensor in names), None)

    @staticmethod
    def rows_of(image: str) -> str:
        """The optional forward argument of an image input's rows: which of its distinct images each row reads."""
        return f"{image}_rows"

    @staticmethod
    def labels_of(head: str) -> str:
        """The optional forward argument of an mlm head's labels (only labelled positions are decoded)."""
        return f"{head}_labels"

    def roles(self) -> Roles:
        """Which inputs, heads and objectives play which part in the training task."""
        facts = TASKS[self.data.train.task]
        first = {m: next((n for n, i in self.inputs.items() if i.modality == m), None)
                 for m in ("text", "image", "boxes")}
        by_kind = {o.kind: n for n, o in self.objectives.items()}
        if facts.head is None:
            return Roles(facts, first["text"], first["image"], first["boxes"], mlm=by_kind.get("mlm"),
                         itm=by_kind.get("itm"), itc=by_kind.get("itc"))
        objective = by_kind[facts.head]
        return Roles(facts, first["text"], first["image"], first["boxes"], self.objective_head(objective), objective)

    def batch_plan(self) -> tuple[int, int]:
        """(micro batch per process, gradient accumulation steps)."""
        world = self.distributed.world_size
        micro = self.train.micro_batch_size or max(1, self.train.batch_size // world)
        return micro, max(1, self.train.batch_size // (micro * world))


def spec_json_schema() -> dict:
    """The JSON Schema of spec files, for editors (the YAML language server).

    An objective's `kind` defaults to its name, which JSON Schema cannot express:
    `{weight: 1.0}` fits every objective kind, so a `oneOf` would reject it. The
    objectives' union is an `anyOf` here; Spec itself still picks by kind.
    """
    schema = Spec.model_json_schema()
    objectives = schema["properties"]["objectives"]["additionalProperties"]
    objectives["anyOf"] = objectives.pop("oneOf")
    objectives.pop("discriminator", None)
    return schema
