"""The FLOPs `graphspec cost` predicts on the meta device are those torch's FlopCounterMode counts over a real
training step on the same batch: every spec in specs/, each freeze variant (nothing frozen, each tower alone,
every tower), towers at random init, two rows a micro batch. Specs that differ only in what they freeze are
one model: each model is checked once, with all its variants."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import pytest
import torch

import graphspec
from graphspec.compiler.pipeline import apply_freeze, build_weights, compile_spec
from graphspec.compiler.placement import frozen_dtype
from graphspec.cost.calibrate import random_towers
from graphspec.cost.sample import Sampled, sample_batch
from graphspec.cost.step import count_step, flop_counter, plain_step, prepare
from graphspec.language.reading import override
from graphspec.language.schema.nodes import OneTower, Tower

from ..test_specs import SPECS, _needs_packages

ROWS = 2


def _model_key(path: Path) -> str:
    """What a spec builds, its freeze annotations and name aside."""
    data = graphspec.load(path).model_dump(mode="json", exclude={"extends", "name"})
    for node in data["nodes"].values():
        node.pop("freeze", None)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def _models() -> list[Path]:
    seen: dict[str, Path] = {}
    for path in SPECS:
        seen.setdefault(_model_key(path), path)
    return list(seen.values())


def _variants(spec) -> dict[str, list[str]]:
    towers = [n for n, node in spec.nodes.items() if isinstance(node, (Tower, OneTower))]
    unfreeze = [f"nodes.{n}.freeze=false" for n, node in spec.nodes.items() if node.freeze]
    out = {"none": unfreeze}
    out.update({f"{t} frozen": unfreeze + [f"nodes.{t}.freeze=true"] for t in towers})
    if len(towers) > 1:
        out["all towers frozen"] = unfreeze + [f"nodes.{t}.freeze=true" for t in towers]
    return out


@pytest.mark.parametrize("path", _models(), ids=lambda p: str(p.relative_to(p.parents[1])))
def test_predicted_flops_are_torchs_count_of_a_real_step(path):
    _needs_packages(path)
    base = random_towers(graphspec.load(path))
    torch.manual_seed(0)
    plan = compile_spec(base).plan
    real, meta = build_weights(base, plan), build_weights(base, plan, meta=True)  # one model for every variant
    batches: dict[bool, Sampled] = {}  # by whether a two-pass batch shares its images (a frozen image tower's)
    checked = []
    for name, sets in _variants(base).items():
        spec = override(base, sets)
        c = compile_spec(spec)
        outside = [n for n, r in c.placed.items() if r["where"] == "outside"]
        share = c.shared_images[0]
        if share not in batches:
            batches[share] = sample_batch(spec, meta, share, ROWS)
        sampled = batches[share]
        apply_freeze(meta, c.plan)
        predicted = count_step(meta, c.plan, outside, sampled.task.losses, copy.copy(sampled.batch),
                               spec.train.precision, frozen_dtype(spec), "meta", "cpu", spec.train.kernels)
        apply_freeze(real, c.plan)
        root = prepare(real, c.plan, outside, spec.train.precision, frozen_dtype(spec), "cpu", "cpu",
                       spec.train.kernels)
        with flop_counter() as counter:  # torch's own count of the plain step: nothing of graphspec.cost's
            plain_step(root, sampled.task.losses, copy.copy(sampled.batch))
        measured = counter.get_total_flops()
        assert measured > 0
        assert predicted.flops == pytest.approx(measured, rel=0.01), (name, predicted.flops, measured)
        checked.append(name)
    assert "none" in checked and len(checked) >= 2
