"""Spec -> networkx graph -> checks -> torch.fx GraphModule + DeepSpeed config + report, and the build folder."""

from .folders import BUILD_FORMAT, Build, read_build, write_build
from .freeze import FreezePlan
from .pipeline import Compiled, apply_freeze, build_model, build_weights, compile_spec

__all__ = ["BUILD_FORMAT", "Build", "Compiled", "FreezePlan", "apply_freeze", "build_model", "build_weights",
           "compile_spec", "read_build", "write_build"]
