"""Build every node's module in dependency order, storing each port's width on the graph."""

from __future__ import annotations

import contextlib

import networkx as nx
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from graphspec.language.errors import EnvironmentProblem, Issue, SpecError
from graphspec.language.schema import Spec

from .builders import BuildContext
from .kinds import KINDS
from .graph import resolve_port
from .init_params import init_new_params, library_params
from .layers.adapter import Adapter
from .layers.attention import use_fast_dropout, use_plain_kernels
from .tower_records import TowerRecords


class _NoRandomFillOnMeta(TorchFunctionMode):
    """Random initialisation is a no-op on meta tensors, which hold no values; skipping it also spares importing
    torch._dynamo (about 1 s), which torch's meta `normal_` pulls in on first use."""

    SKIP = frozenset({torch.Tensor.normal_, torch.Tensor.uniform_, torch.Tensor.erfinv_, torch.Tensor.random_,
                      torch.Tensor.exponential_, torch.Tensor.bernoulli_})

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        target = args[0] if args else kwargs.get("tensor")  # torch.nn.init passes it by keyword
        if ((func in self.SKIP or getattr(func, "__module__", None) == "torch.nn.init")
                and isinstance(target, torch.Tensor) and target.is_meta):
            return target
        return func(*args, **kwargs)


@contextlib.contextmanager
def _building(meta: bool):
    if not meta:
        yield
        return
    with torch.device("meta"), _NoRandomFillOnMeta():
        yield


def input_ports(g: nx.MultiDiGraph, name: str) -> dict:
    return {e["dst_port"]: resolve_port(g, src, e["src_port"]) for src, _, e in g.in_edges(name, data=True)}


def build_modules(spec: Spec, g: nx.MultiDiGraph, meta: bool,
                  records: TowerRecords | None = None) -> tuple[dict[str, nn.Module], list[Issue]]:
    """(name -> module, issues). A node whose inputs failed to build is skipped, not reported twice.

    With `records` (meta only), a library tower recorded before is rebuilt from its record instead of its library.
    """
    if not meta:
        torch.manual_seed(spec.train.seed)  # random init is reproducible from the spec
    ctx = BuildContext(spec=spec, graph=g, meta=meta, modules={}, warnings=[])
    issues: list[Issue] = []
    env: list[Issue] = []
    library: set[int] = set()  # library towers' parameters: they keep their own initialisation
    for name in nx.topological_sort(g):
        attrs = g.nodes[name]
        if attrs["section"] == "inputs":
            continue
        ins = input_ports(g, name)
        if any(p is None or (p.width is None and p.form in ("sequence", "vector")) for p in ins.values()):
            continue
        key = records.key(spec, g, name) if records is not None and meta else None
        found = records.lookup(key) if key is not None else None
        if found is not None:
            ctx.modules[name], recorded_warnings = found
            ctx.warnings.extend(recorded_warnings)
            _store_widths(attrs, ctx.modules[name])
            continue
        before = len(ctx.warnings)
        try:
            with _building(meta):
                module = KINDS[attrs["kind"]].build(attrs["spec"], attrs["path"], ins, ctx)
        except EnvironmentProblem as e:
            env.extend(e.issues)
            continue
        except SpecError as e:
            issues.extend(e.issues)
            continue
        if not meta:
            library |= library_params(module)
            init_new_params(module, spec.param_init, library)
        if spec.train.kernels == "fast":
            use_fast_dropout(module)
        else:
            use_plain_kernels(module)
        ctx.modules[name] = module
        _store_widths(attrs, module)
        if key is not None:
            records.remember(name, key, module, ctx.warnings[before:])
    if env and not issues:
        raise EnvironmentProblem(env, title="the spec needs what this machine lacks")
    return ctx.modules, issues + env + ctx.warnings


def _store_widths(attrs: dict, module: nn.Module) -> None:
    """Port widths, and the facts later rules check (text positions, patch size) on the graph."""
    if attrs["section"] == "heads":
        return
    widths = module.port_widths() if isinstance(module, Adapter) else {}
    attrs["out"] = {port: p.with_width(widths.get(port, module.width)) for port, p in attrs["out"].items()}
    for fact in ("max_positions", "patch_size"):
        if getattr(module, fact, None):
            attrs[fact] = getattr(module, fact)
