"""The spec language as Pydantic models (one class per kind), and the table of tasks.

A node or head kind is its class in `nodes.py` or `heads.py`, listed in that file's union; nothing here needs
to change when a kind is added.
"""

from .base import Ref, Strict, ref_node, ref_port
from .heads import HEAD_CLASSES, HEAD_KINDS, OBJECTIVE_KINDS, Head, Objective
from .inputs import Input
from .nodes import ENCODER_KINDS, FUSION_KINDS, NODE_CLASSES, Node, ParamInit, kind_of
from .run import Data, DataSource, Distributed, Train
from .spec import Spec, spec_json_schema
from .tasks import TASKS, Roles, TaskFacts

__all__ = [
    "Data", "DataSource", "Distributed", "ENCODER_KINDS", "FUSION_KINDS", "HEAD_CLASSES", "HEAD_KINDS", "Head",
    "Input", "NODE_CLASSES", "Node", "OBJECTIVE_KINDS", "Objective", "ParamInit", "Ref", "Roles", "Spec", "Strict", "TASKS",
    "TaskFacts", "Train", "kind_of", "ref_node", "ref_port", "spec_json_schema",
]
