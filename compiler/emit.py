"""Emit the model as a torch.fx GraphModule whose code reads like the spec.

One `call_module` per spec node (the adapter/layer built for it), one
`getitem` per output port used, one placeholder per input tensor; heads live
under `heads.` and the output is a dict of head outputs.

Each image input also takes an optional `<image>_rows`: for a batch whose rows
share images (the two-pass recipe reads each image twice), the pixels hold each
distinct image once and `rows` says which one each row reads. A node that reads
that image alone (a vision tower) then runs once per distinct image and its
ports are spread to the rows (`select_rows`); any other reader gets the pixels
spread first. Without `rows` both are the identity.
"""

from __future__ import annotations

import operator
import re

import networkx as nx
import torch
import torch.fx as fx
from torch import nn

from graphspec.language.schema import Spec, ref_node, ref_port

from .graph import port_name, references


def input_names(spec: Spec) -> list[str]:
    """The model's forward arguments, in order: each input's tensors (`Input.tensors` names them)."""
    return [n for names in spec.input_tensors().values() for n in names]


def label_names(spec: Spec) -> list[str]:
    """Optional arguments: labels for mlm heads, so only labelled positions are decoded."""
    return [spec.labels_of(name) for name, head in spec.heads.items() if head.kind == "mlm"]


def rows_names(spec: Spec) -> dict[str, str]:
    """Optional arguments: image input -> the argument saying which of its distinct images each row reads."""
    return {name: spec.rows_of(name) for name, inp in spec.inputs.items() if inp.modality == "image"}


def optional_names(spec: Spec) -> list[str]:
    """Every optional forward argument, in order."""
    return label_names(spec) + list(rows_names(spec).values())


def select_rows(value, rows):
    """`value` (a tensor, or a dict or tuple of them, batch first) for each row: its entry `rows[i]`."""
    if rows is None:
        return value
    if isinstance(value, torch.Tensor):
        return value.index_select(0, rows)
    if isinstance(value, dict):
        return {k: select_rows(v, rows) for k, v in value.items()}
    if isinstance(value, tuple):
        return tuple(select_rows(v, rows) for v in value)
    return value


def class_name(spec: Spec) -> str:
    return "".join(p.capitalize() for p in re.split(r"[^A-Za-z0-9]", spec.name) if p) or "Model"


class _Root(nn.Module):
    def __init__(self, spec: Spec, modules: dict[str, nn.Module]):
        super().__init__()
        for name in spec.nodes:
            self.add_module(name, modules[name])
        self.heads = nn.ModuleDict({name: modules[name] for name in spec.heads})


def emit_module(spec: Spec, g: nx.MultiDiGraph, modules: dict[str, nn.Module]) -> fx.GraphModule:
    graph = fx.Graph()
    values: dict[tuple[str, str | None], object] = {}
    for name, tensors in spec.input_tensors().items():
        values[(name, None)] = tuple(graph.placeholder(n) for n in tensors)
    labels = {n: graph.placeholder(n, default_value=None) for n in label_names(spec)}
    rows = {name: graph.placeholder(n, default_value=None) for name, n in rows_names(spec).items()}
    calls: dict[str, fx.Node] = {}
    spread: dict[str, fx.Node] = {}  # node reading one image input alone -> its rows argument
    outputs = {}
    for name in nx.topological_sort(g):
        attrs = g.nodes[name]
        if attrs["section"] == "inputs":
            continue
        refs = [ref for dst_port, ref, _ in references(attrs["spec"]) if dst_port != "vocab_from"]
        sources = {ref_node(r) for r in refs}
        alone = next(iter(sources)) if len(sources) == 1 and next(iter(sources)) in rows else None
        if alone is not None:
            spread[name] = rows[alone]
        args: list = []
        for ref in refs:
            args += _value(graph, g, values, calls, ref, {} if alone else rows, spread)
        target = f"heads.{name}" if attrs["section"] == "heads" else name
        kwargs = {"labels": labels[spec.labels_of(name)]} if spec.labels_of(name) in labels else {}
        calls[name] = graph.create_node("call_module", target, tuple(args), kwargs, name=name)
        if attrs["section"] == "heads":
            outputs[name] = calls[name]
    graph.output(outputs)
    return fx.GraphModule(_Root(spec, modules), graph, class_name=class_name(spec))


def _value(graph: fx.Graph, g, values: dict, calls: dict, ref: str, rows: dict, spread: dict) -> tuple:
    """The fx value(s) a reference names, one per row; ports are read with getitem once and reused.

    `rows`: the image inputs this consumer reads spread to the rows (a consumer reading one image alone
    gets the distinct images: its own ports are spread, `spread`)."""
    src = ref_node(ref)
    port = port_name(g, src, ref_port(ref))
    if g.nodes[src]["section"] == "inputs":
        if src not in rows:
            return values[(src, None)]
        key = (src, "rows")
        if key not in values:
            values[key] = tuple(graph.create_node("call_function", select_rows, (v, rows[src]), name=f"{v.name}_spread")
                                for v in values[(src, None)])
        return values[key]
    key = (src, port)
    if key not in values:
        read = graph.create_node("call_function", operator.getitem, (calls[src], port), name=f"{src}_{port}")
        if src in spread:
            read = graph.create_node("call_function", select_rows, (read, spread[src]), name=f"{src}_{port}_rows")
        values[key] = (read,)
    return values[key]
