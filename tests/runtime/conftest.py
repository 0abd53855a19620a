"""A tiny spec compiled to a build directory, for runtime tests."""

from __future__ import annotations

import copy

import pytest
import yaml

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


RANKS_STEPS, RANKS_EVERY = 24, 8


def ranks_spec_data() -> dict:
    """The spec the data-parallel tests train on 1 and 2 ranks. No dropout anywhere: with it, each rank would
    draw masks for its half of the batch, one rank for all of it. Batch 8: 8 x 1 on one rank, 4 x 1 on each of
    two."""
    spec = train_spec_data()
    for name in ("text_tower", "vision_tower"):
        spec["nodes"][name]["dropout"] = 0.0
    # ITC contrasts every rank's rows (gathered with their gradients), as one rank contrasts the whole batch
    spec["heads"]["itc"] = {"kind": "itc", "inputs": {"text": "text_tower", "image": "vision_tower"}, "dim": 16}
    spec["objectives"]["itc"] = {"weight": 1.0}
    spec["train"].update(steps=RANKS_STEPS, log_every=1, val_every=None, checkpoint_every=RANKS_EVERY,
                         keep_checkpoints=1)
    spec["data"]["val"] = None
    return spec


@pytest.fixture(scope="session")
def two_ranks(tmp_path_factory):
    """(spec file, run directory) of `graphspec run SPEC --nproc 2` at ZeRO 0, launched from the test process:
    the 2-rank run more than one test compares with (test_distributed's stage 0, test_slurm's step), made once."""
    from graphspec.cli import main

    base = tmp_path_factory.mktemp("two-ranks")
    (base / "spec.yaml").write_text(yaml.safe_dump(ranks_spec_data()))
    assert main(["run", str(base / "spec.yaml"), "--nproc", "2", "--set", "distributed.zero_stage=0", "--run-dir",
                 str(base / "run"), "--build-dir", str(base / "b")]) == 0
    return base / "spec.yaml", base / "run"


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
