"""The spec language as Pydantic models (one class per kind), and the table of tasks.

A node or head kind is its class in `nodes.py` or `heads.py`; a plugin's class joins the language when its
builder is registered (`extend`, called by graphspec.compiler.kinds.register), a plugin's task when its row is
added (`add_task`): the models are rebuilt, so loading, validation and `graphspec schema` see them.
"""

from __future__ import annotations

from .base import Ref, Strict, kind_of, ref_node, ref_port
from .heads import HEAD_CLASSES, HeadObjective, Head, Objective, head_kinds
from .inputs import Input
from .nodes import NODE_CLASSES, Fusion, Node, ParamInit, Tower, encoder_kinds
from .training import Data, DataSource, Distributed, Train
from .spec import Spec, spec_json_schema
from .tasks import FAMILY_ALIASES, FAMILY_TASK, TASKS, Roles, TaskFacts


def _rebuild() -> None:
    """Rebuild every model that holds an open union or choice, innermost first."""
    for model in (HeadObjective, DataSource, Data, Spec):
        model.model_rebuild(force=True)


def extend(schema: type[Strict], head: bool) -> None:
    """Add a node kind's (or, `head`, a head kind's) spec class to the language; a class already in it is left."""
    classes = HEAD_CLASSES if head else NODE_CLASSES
    if schema in classes:
        return
    name = kind_of(schema)
    taken = {kind_of(c): c for c in NODE_CLASSES + HEAD_CLASSES}
    if name in taken:
        raise ValueError(f"kind '{name}' is taken by {taken[name].__module__}.{taken[name].__name__}")
    classes.append(schema)
    _rebuild()


def add_task(facts: TaskFacts) -> None:
    """Add a task's row to the table (a plugin's); the same row twice is left, another row of that name refused."""
    if TASKS.get(facts.name) == facts:
        return
    if facts.name in TASKS:
        raise ValueError(f"task '{facts.name}' is already in the table")
    TASKS[facts.name] = facts
    for family in facts.families:
        FAMILY_TASK.setdefault(family, facts.name)
    _rebuild()


__all__ = [
    "Data", "DataSource", "Distributed", "Fusion", "HEAD_CLASSES", "Head", "Input", "NODE_CLASSES", "Node",
    "Objective", "ParamInit", "Ref", "Roles", "Spec", "Strict", "TASKS", "TaskFacts", "Tower", "Train", "add_task",
    "encoder_kinds", "extend", "head_kinds", "kind_of", "ref_node", "ref_port", "spec_json_schema",
]
