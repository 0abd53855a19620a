"""Every file in specs/ validates and compiles."""

from __future__ import annotations

from pathlib import Path

import pytest

import graphspec
from compiler import compile_spec

SPECS = sorted((Path(__file__).resolve().parents[1] / "specs").rglob("*.y*ml")) + sorted(
    (Path(__file__).resolve().parents[1] / "specs").rglob("*.json"))


@pytest.mark.parametrize("path", SPECS, ids=lambda p: str(p.relative_to(p.parents[1])))
def test_spec_compiles(path):
    compiled = compile_spec(graphspec.load(path))
    assert compiled.summary["params"]["total"]["trainable"] > 0
    assert not [w for w in compiled.warnings if w.severity == "error"]
