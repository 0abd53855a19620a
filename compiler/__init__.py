"""Spec -> networkx graph -> checks -> torch.fx GraphModule + DeepSpeed config + report."""

from .pipeline import FORMAT_VERSION, Compiled, apply_freeze, build_model, compile_spec, write_artifacts
from .freeze import FreezePlan

__all__ = ["FORMAT_VERSION", "Compiled", "FreezePlan", "apply_freeze", "build_model", "compile_spec",
           "write_artifacts"]
