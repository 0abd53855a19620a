"""The FLOP check of one model of specs/ (tests/cost/test_flops.py), in a module of its own so that a pool of
processes can run it: each freeze variant's meta-device count beside torch's FlopCounterMode over a real step."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import torch

import graphspec
from graphspec.compiler.pipeline import apply_freeze, build_weights, compile_spec
from graphspec.compiler.placement import frozen_dtype
from graphspec.cost.calibrate import random_towers
from graphspec.cost.sample import Sampled, sample_batch
from graphspec.cost.kernels import flop_counter
from graphspec.cost.step import count_step, plain_step, prepare
from graphspec.language.reading import override
from graphspec.language.schema.nodes import OneTower, Tower

ROWS = 1


def model_key(path: Path) -> str:
    """What a spec builds, its freeze annotations and name aside: specs that differ only in what they freeze
    are one model, checked once with all its variants."""
    data = graphspec.load(path).model_dump(mode="json", exclude={"extends", "name"})
    for node in data["nodes"].values():
        node.pop("freeze", None)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def variants(spec) -> dict[str, list[str]]:
    """Nothing frozen, each tower frozen alone, every tower frozen."""
    towers = [n for n, node in spec.nodes.items() if isinstance(node, (Tower, OneTower))]
    unfreeze = [f"nodes.{n}.freeze=false" for n, node in spec.nodes.items() if node.freeze]
    out = {"none": unfreeze}
    out.update({f"{t} frozen": unfreeze + [f"nodes.{t}.freeze=true"] for t in towers})
    if len(towers) > 1:
        out["all towers frozen"] = unfreeze + [f"nodes.{t}.freeze=true" for t in towers]
    return out


def one_thread() -> None:
    torch.set_num_threads(1)  # two of these processes share the machine's cores


def check_model(path: str) -> list[tuple[str, int, int]]:
    """(variant, predicted FLOPs, torch's count) for every freeze variant of the spec at `path`, its towers at
    random init, one row a micro batch (a two-pass batch holds two)."""
    base = random_towers(graphspec.load(path))
    torch.manual_seed(0)
    plan = compile_spec(base).plan
    real, meta = build_weights(base, plan), build_weights(base, plan, meta=True)  # one model for every variant
    batches: dict[bool, Sampled] = {}  # by whether a two-pass batch shares its images (a frozen image tower's)
    out = []
    for name, sets in variants(base).items():
        spec = override(base, sets)
        c = compile_spec(spec)
        outside = [n for n, r in c.placed.items() if r["where"] == "outside"]
        share = c.shared_images[0]
        if share not in batches:
            batches[share] = sample_batch(spec, meta, share, ROWS)
        sampled = batches[share]
        apply_freeze(meta, c.plan)
        predicted = count_step(meta, c.plan, outside, sampled.task.losses, copy.copy(sampled.batch),
                               spec.train.precision, frozen_dtype(spec), "meta", "cpu", spec.train.kernels,
                               memory=False)
        apply_freeze(real, c.plan)
        root = prepare(real, c.plan, outside, spec.train.precision, frozen_dtype(spec), "cpu", "cpu",
                       spec.train.kernels)
        with flop_counter() as counter:  # torch's own count of the plain step: nothing of graphspec.cost's
            plain_step(root, sampled.task.losses, copy.copy(sampled.batch))
        out.append((name, predicted.flops, counter.get_total_flops()))
    return out
