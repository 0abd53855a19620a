"""Compiled artifacts -> data, objectives, DeepSpeed engine, checkpoints, metrics.

The runtime reads a build directory written by `graphspec compile`; it never
parses a spec file itself.
"""

from graphspec.compiler.builtin_weights import register as _register_builtin

_register_builtin("small-vit", "graphspec.runtime.small_vit")  # trains only when a build first needs its file
