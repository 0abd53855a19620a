"""A tiny spec compiled to a build directory, for runtime tests."""

from __future__ import annotations

import copy

import pytest

import graphspec
from graphspec.compiler.folders import read_build
from tests.conftest import TINY


def train_spec_data() -> dict:
    """The tiny spec, with data and a schedule that train in seconds (a fresh copy; module-scoped fixtures
    start from it)."""
    spec = copy.deepcopy(TINY)
    spec["data"] = {"train": {"samples": 64}, "val": {"split": "val", "samples": 16}}
    spec["nodes"]["text_tower"]["size"]["vocab_size"] = 128  # room for whole words
    spec["train"].update(steps=60, batch_size=8, log_every=10, val_every=30,
                         optimizer={"lr": 5e-3}, schedule={"warmup": 3})
    return spec


@pytest.fixture
def train_spec() -> dict:
    return train_spec_data()


@pytest.fixture
def compile_build(write_spec, tmp_path):
    """compile_build(spec_data, overrides=()) -> Build read back from a fresh build directory."""
    def make(data, overrides=()):
        spec = graphspec.load(write_spec(data), overrides=list(overrides))
        out = tmp_path / "build"
        graphspec.compile(spec, out=out)
        return read_build(out)
    return make
