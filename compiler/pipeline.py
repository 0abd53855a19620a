"""Spec -> graph -> checks -> GraphModule + DeepSpeed config + report.

Each stage collects all of its problems and raises them together; a later
stage runs only when the earlier ones found no error, so one mistake is not
reported three times.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import networkx as nx
import torch.fx as fx

from graphspec.language.errors import Issue, SpecError
from graphspec.language.reading import source_map, spec_warnings
from graphspec.language.schema import Spec

from .assemble import build_modules
from .ds_check import check_ds_config
from .ds_config import emit_ds_config
from .emit import emit_module
from .freeze import FreezePlan, resolve_freeze
from .init_from import load_into, match_checkpoint
from .graph import build_graph
from .groups import param_groups, unmatched_multipliers
from .rules import STRUCTURE_RULES, WIDTH_RULES, run_rules
from .meta_shapes import propagate_shapes
from .placement import placement, placement_issues, shared_images
from .summary import build_summary
from .tower_records import TowerRecords


@dataclass
class Compiled:
    spec: Spec
    graph: nx.MultiDiGraph
    module: fx.GraphModule  # built on the meta device: structure and shapes, no weights
    plan: FreezePlan
    groups: list[dict]
    ds_config: dict
    summary: dict
    placed: dict  # node -> where it runs (engine or outside), as `placement` decided
    shared_images: tuple[bool, str]  # whether a two-pass batch passes each distinct image once, and why
    warnings: list[Issue] = field(default_factory=list)
    seconds: float = 0.0


def _raise_if_errors(spec: Spec, issues: list[Issue], stage: str) -> list[Issue]:
    smap = source_map(spec)
    located = [i.located(smap.locate(i.path)) for i in issues]
    if any(i.severity == "error" for i in located):
        # Warnings wait until the errors are fixed: a broken reference also makes nodes look unused.
        raise SpecError([i for i in located if i.severity == "error"], title=f"{stage} failed")
    return located


def build_checked_graph(spec: Spec) -> tuple[nx.MultiDiGraph, list[Issue]]:
    g = build_graph(spec)
    return g, _raise_if_errors(spec, run_rules(STRUCTURE_RULES, spec, g), "graph checks")


def compile_spec(spec: Spec) -> Compiled:
    """Every check, on the meta device: no weights are read or allocated."""
    start = time.perf_counter()
    g, warnings = build_checked_graph(spec)
    warnings = spec_warnings(spec) + warnings
    records = TowerRecords()
    modules, issues = build_modules(spec, g, meta=True, records=records)
    warnings += _raise_if_errors(spec, issues + run_rules(WIDTH_RULES, spec, g), "building the nodes")
    gm = emit_module(spec, g, modules)
    propagate_shapes(spec, gm, node_paths(spec))
    records.save(gm)
    plan, issues = resolve_freeze(spec, gm)
    match = None
    if spec.init_from:
        match, more = match_checkpoint(spec.init_from, gm, plan.frozen)
        issues += more
    issues += unmatched_multipliers(spec, gm)
    groups = param_groups(spec, gm, plan.frozen)
    ds = emit_ds_config(spec, groups, sum(p.numel() for n, p in gm.named_parameters() if n not in plan.frozen))
    placed = placement(spec, gm, plan)
    warnings += _raise_if_errors(spec, issues + check_ds_config(ds, spec, groups) + placement_issues(spec, placed),
                                 "freeze and DeepSpeed checks")
    shapes = {n.name: n.meta.get("shape") for n in gm.graph.nodes if n.op == "call_module"}
    shapes = {(f"heads.{k}" if k in spec.heads else k): _brief(v) for k, v in shapes.items()}
    summary = build_summary(spec, gm, plan, shapes, placed)
    if match is not None:
        summary["init_from"] = {"checkpoint": spec.init_from, **match.as_dict()}
    return Compiled(spec, g, gm, plan, groups, ds, summary, placed, shared_images(spec, gm, plan), warnings,
                    time.perf_counter() - start)


def node_paths(spec: Spec) -> dict[str, tuple]:
    return {**{n: ("nodes", n) for n in spec.nodes}, **{h: ("heads", h) for h in spec.heads}}


def _brief(shape) -> str:
    """{'seq': ((2, 40, 256), (2, 40))} -> 'seq (B, 40, 256)'."""
    def one(s):
        s = s[0] if isinstance(s, tuple) and s and isinstance(s[0], tuple) else s
        return "(B, " + ", ".join(str(d) for d in s[1:]) + ")" if isinstance(s, tuple) else str(s)
    if isinstance(shape, dict):
        return ", ".join(f"{k} {one(v)}" for k, v in shape.items())
    return one(shape)


def build_weights(spec: Spec, plan: FreezePlan, meta: bool = False) -> fx.GraphModule:
    """The model with real weights (random init seeded by `train.seed`, or loaded), `plan` applied: the model
    of a spec that compiled, built from what its build folder (or checkpoint, or export) recorded. No check runs
    again; the caller compares the result with the recorded parameter list (`folders.check_parameters`).
    `meta`: on the meta device (shapes, no memory), to compare before anything is allocated."""
    g = build_graph(spec)
    modules, issues = build_modules(spec, g, meta=meta)
    _raise_if_errors(spec, issues, "building the nodes")
    gm = emit_module(spec, g, modules)
    unknown = sorted(plan.frozen - {n for n, _ in gm.named_parameters(remove_duplicate=False)})
    if unknown:
        raise SpecError([Issue(("nodes",), f"the recorded freeze plan names {len(unknown)} parameters this "
                               f"model does not have (e.g. {unknown[0]})", "recompile the spec")],
                        title="the build does not match this graphspec")
    if spec.init_from and not meta:
        load_into(gm, spec.init_from)
    apply_freeze(gm, plan)
    return gm


def build_model(spec: Spec) -> tuple[fx.GraphModule, FreezePlan]:
    """A spec's model with real weights, for a spec that has not been compiled (tests, benchmarks, notebooks):
    every compile check first, so a spec that would not compile never allocates weights."""
    plan = compile_spec(spec).plan
    return build_weights(spec, plan), plan


def apply_freeze(model: fx.GraphModule, plan: FreezePlan) -> None:
    for name, p in model.named_parameters():
        p.requires_grad_(name not in plan.frozen)
