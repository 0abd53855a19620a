"""The spec language as Pydantic models (one class per kind)."""

from .base import Ref, Strict, ref_node, ref_port
from .heads import Head, ITMHead, ITMObjective, MLMHead, MLMObjective, Objective
from .inputs import ImageInput, Input, TextInput
from .nodes import (
    ENCODER_KINDS,
    ClsPool,
    CoAttention,
    Freeze,
    HFText,
    HFVision,
    Node,
    Projection,
    SizeOverrides,
    TimmVision,
)
from .run import Data, DataSource, Distributed, FrozenPlacement, Optimizer, Schedule, Train
from .spec import Spec, spec_json_schema

__all__ = [
    "ENCODER_KINDS", "ClsPool", "CoAttention", "Data", "DataSource", "Distributed", "Freeze",
    "FrozenPlacement", "HFText", "HFVision", "Head", "ITMHead", "ITMObjective", "ImageInput", "Input",
    "MLMHead", "MLMObjective", "Node", "Objective", "Optimizer", "Projection", "Ref", "Schedule",
    "SizeOverrides", "Spec", "spec_json_schema", "Strict", "TextInput", "TimmVision", "Train", "ref_node", "ref_port",
]
