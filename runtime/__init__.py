"""Compiled artifacts -> data, objectives, DeepSpeed engine, checkpoints, metrics.

The runtime reads a build directory written by `graphspec compile`; it never
parses a spec file itself.
"""
