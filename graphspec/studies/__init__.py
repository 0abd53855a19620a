"""Variants of a spec and studies of them, above the runtime: grids, names, validation, spec files written,
a study's plan, its stages run (each a `graphspec run` process), the comparison."""
