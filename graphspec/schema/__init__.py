"""The spec language as Pydantic models (one class per kind)."""

from .base import Ref, Strict, ref_node, ref_port
from .heads import (
    ClassifyHead,
    Head,
    ITCHead,
    ITMHead,
    ITMObjective,
    MLMHead,
    MLMObjective,
    Objective,
    PairClassifyHead,
    RefHead,
    VQAHead,
)
from .inputs import BoxesInput, ImageInput, Input, TextInput
from .nodes import (
    ENCODER_KINDS,
    FUSION_KINDS,
    ClsPool,
    CoAttention,
    CrossAttention,
    Freeze,
    HFText,
    HFVision,
    MeanPool,
    MergedAttention,
    Node,
    OneTower,
    Projection,
    SizeOverrides,
    TimmVision,
)
from .run import Data, DataSource, Distributed, Optimizer, Schedule, Train
from .spec import Spec, spec_json_schema

__all__ = [
    "BoxesInput", "ClassifyHead", "CrossAttention", "FUSION_KINDS", "ITCHead", "MeanPool", "MergedAttention",
    "OneTower", "PairClassifyHead", "RefHead", "VQAHead", "ENCODER_KINDS", "ClsPool", "CoAttention", "Data", "DataSource", "Distributed", "Freeze",
    "HFText", "HFVision", "Head", "ITMHead", "ITMObjective", "ImageInput", "Input",
    "MLMHead", "MLMObjective", "Node", "Objective", "Optimizer", "Projection", "Ref", "Schedule",
    "SizeOverrides", "Spec", "spec_json_schema", "Strict", "TextInput", "TimmVision", "Train", "ref_node", "ref_port",
]
