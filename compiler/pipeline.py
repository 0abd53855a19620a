"""Spec -> graph -> checks -> GraphModule + DeepSpeed config + report.

Each stage collects all of its problems and raises them together; a later
stage runs only when the earlier ones found no error, so one mistake is not
reported three times.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import networkx as nx
import torch.fx as fx

from graphspec.errors import Issue, SpecError
from graphspec.loader import source_map, spec_warnings
from graphspec.schema import Spec

from .assemble import build_modules
from .ds_check import check_ds_config
from .ds_config import emit_ds_config
from .emit import emit_module, input_names, optional_names
from .freeze import FreezePlan, resolve_freeze
from .init_from import load_into, match_checkpoint
from .graph import build_graph
from .groups import param_groups, unmatched_multipliers
from .picture import write_pictures
from .rules import STRUCTURE_RULES, WIDTH_RULES, run_rules
from .meta_shapes import propagate_shapes
from .placement import placement, placement_issues
from .summary import build_summary, format_summary
from .tower_records import TowerRecords


FORMAT_VERSION = 2  # of the build directory; the runtime refuses other versions (2: graphspec 0.2's names)


@dataclass
class Compiled:
    spec: Spec
    graph: nx.MultiDiGraph
    module: fx.GraphModule  # built on the meta device: structure and shapes, no weights
    plan: FreezePlan
    groups: list[dict]
    ds_config: dict
    summary: dict
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
    return Compiled(spec, g, gm, plan, groups, ds, summary, warnings, time.perf_counter() - start)


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


def write_artifacts(c: Compiled, out: Path) -> list[Path]:
    """The build directory the runtime reads (it never parses a spec file itself)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = {
        "manifest.json": _manifest(c),
        "spec.resolved.json": c.spec.model_dump(mode="json", exclude={"extends"}),
        "ds_config.json": c.ds_config,
        "param_groups.json": c.groups,
        "freeze.json": c.plan.to_json(),
        "summary.json": c.summary,
    }
    written = []
    for name, data in files.items():
        _atomic_write(out / name, json.dumps(data, indent=2) + "\n")
        written.append(out / name)
    _atomic_write(out / "summary.txt", format_summary(c.summary) + "\n")
    _atomic_write(out / "model.py", f"# Generated by graphspec from spec '{c.spec.name}'. Read-only: edit the spec.\n"
                  f"# forward({', '.join(input_names(c.spec) + [n + '=None' for n in optional_names(c.spec)])})\n"
                  + c.module.code)
    written += [out / "summary.txt", out / "model.py"]
    return written + write_pictures(c.graph, set(c.plan.frozen_nodes), out)


def _manifest(c: Compiled) -> dict:
    import torch

    from graphspec.version import __version__

    from .tower_records import library_version  # the installed versions, without importing the libraries

    return {"format_version": FORMAT_VERSION, "graphspec": __version__, "torch": torch.__version__,
            "transformers": library_version("transformers"), "timm": library_version("timm"),
            "spec_name": c.spec.name,
            "inputs": input_names(c.spec), "optional_inputs": optional_names(c.spec)}


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def build_model(spec: Spec, plan: FreezePlan | None = None) -> tuple[fx.GraphModule, FreezePlan]:
    """The model with real weights (random init seeded by `train.seed`, or loaded), freezing applied.

    Runs the same checks as `compile_spec` first, so a spec that would not compile never allocates weights.
    `plan`: the freeze plan a build or checkpoint recorded, applied as it is (it must name parameters of this
    model); without one, the spec's annotations are resolved as `compile_spec` does.
    """
    g, _ = build_checked_graph(spec)
    modules, issues = build_modules(spec, g, meta=False)
    _raise_if_errors(spec, issues, "building the nodes")
    gm = emit_module(spec, g, modules)
    if plan is None:
        plan, issues = resolve_freeze(spec, gm)
        _raise_if_errors(spec, issues, "freeze checks")
    else:
        unknown = sorted(plan.frozen - {n for n, _ in gm.named_parameters(remove_duplicate=False)})
        if unknown:
            raise SpecError([Issue(("nodes",), f"the recorded freeze plan names {len(unknown)} parameters this "
                                   f"model does not have (e.g. {unknown[0]})", "recompile the spec")],
                            title="the build does not match this graphspec")
    if spec.init_from:
        load_into(gm, spec.init_from)
    apply_freeze(gm, plan)
    return gm, plan


def apply_freeze(model: fx.GraphModule, plan: FreezePlan) -> None:
    for name, p in model.named_parameters():
        p.requires_grad_(name not in plan.frozen)
