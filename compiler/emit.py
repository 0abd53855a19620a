"""Emit the model as a torch.fx GraphModule whose code reads like the spec.

One `call_module` per spec node (the adapter/layer built for it), one
`getitem` per output port used, one placeholder per input tensor; heads live
under `heads.` and the output is a dict of head outputs.
"""

from __future__ import annotations

import operator
import re

import networkx as nx
import torch.fx as fx
from torch import nn

from graphspec.schema import Spec, ref_node, ref_port

from .graph import port_name, references


def input_names(spec: Spec) -> list[str]:
    """The model's forward arguments, in order: each input's tensors (`Input.tensors` names them)."""
    return [n for names in spec.input_tensors().values() for n in names]


def label_names(spec: Spec) -> list[str]:
    """Optional arguments: labels for mlm heads, so only labelled positions are decoded."""
    return [spec.labels_of(name) for name, head in spec.heads.items() if head.kind == "mlm"]


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
    calls: dict[str, fx.Node] = {}
    outputs = {}
    for name in nx.topological_sort(g):
        attrs = g.nodes[name]
        if attrs["section"] == "inputs":
            continue
        args: list = []
        for dst_port, ref, _ in references(attrs["spec"]):
            if dst_port != "vocab_from":
                args += _value(graph, g, values, calls, ref)
        target = f"heads.{name}" if attrs["section"] == "heads" else name
        kwargs = {"labels": labels[spec.labels_of(name)]} if spec.labels_of(name) in labels else {}
        calls[name] = graph.create_node("call_module", target, tuple(args), kwargs, name=name)
        if attrs["section"] == "heads":
            outputs[name] = calls[name]
    graph.output(outputs)
    return fx.GraphModule(_Root(spec, modules), graph, class_name=class_name(spec))


def _value(graph: fx.Graph, g, values: dict, calls: dict, ref: str) -> tuple:
    """The fx value(s) a reference names; ports are read with getitem once and reused."""
    src = ref_node(ref)
    port = port_name(g, src, ref_port(ref))
    if g.nodes[src]["section"] == "inputs":
        return values[(src, None)]
    key = (src, port)
    if key not in values:
        values[key] = (graph.create_node("call_function", operator.getitem, (calls[src], port), name=f"{src}_{port}"),)
    return values[key]
