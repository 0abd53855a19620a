"""Spec -> networkx graph -> checks -> torch.fx GraphModule + DeepSpeed config + report."""

FORMAT_VERSION = 1  # of the build directory; the runtime refuses other versions

from .pipeline import Compiled, apply_freeze, build_model, compile_spec, write_artifacts  # noqa: E402

__all__ = ["FORMAT_VERSION", "Compiled", "apply_freeze", "build_model", "compile_spec", "write_artifacts"]
