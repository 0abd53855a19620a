"""Spec -> networkx graph: one vertex per input, node and head; one edge per reference.

Vertex attributes: `section` ('inputs' | 'nodes' | 'heads'), `kind`, `spec` (the
Pydantic object), `path` (its field path), `out` (name -> Port; widths filled in
by graphspec.compiler.assemble). Edge attributes: `field` (the consumer's field path holding
the reference), `dst_port` (the consumer's input port), `src_port` (the
producer's port, resolved when the reference names a known port).
"""

from __future__ import annotations

import networkx as nx

from graphspec.language.schema import Spec, ref_node, ref_port

from .kinds import KINDS, LAYER_PORT, input_port_for


def references(spec_obj) -> list[tuple[str, str, tuple]]:
    """(input port, reference, field path relative to the node) for every reference a node makes.

    References live in `input`, in `inputs` (a list, or an object of named streams)
    and in `vocab_from`; the port a reference feeds is named after its field.
    """
    refs: list[tuple[str, str, tuple]] = []
    if getattr(spec_obj, "input", None) is not None:
        refs.append(("input", spec_obj.input, ("input",)))
    inputs = getattr(spec_obj, "inputs", None)
    if isinstance(inputs, list):
        refs += [(f"inputs.{i}", r, ("inputs", i)) for i, r in enumerate(inputs)]
    elif inputs is not None:
        refs += [(f"inputs.{k}", getattr(inputs, k), ("inputs", k)) for k in type(inputs).model_fields]
    if getattr(spec_obj, "vocab_from", None):
        refs.append(("vocab_from", spec_obj.vocab_from, ("vocab_from",)))
    return refs


def build_graph(spec: Spec) -> nx.MultiDiGraph:
    g = nx.MultiDiGraph(name=spec.name)
    for name, inp in spec.inputs.items():
        g.add_node(name, section="inputs", kind=inp.modality, spec=inp, path=("inputs", name),
                   out={inp.modality: input_port_for(inp.modality)})
    for section in ("nodes", "heads"):
        for name, obj in getattr(spec, section).items():
            g.add_node(name, section=section, kind=obj.kind, spec=obj, path=(section, name), out={})
    for section in ("nodes", "heads"):
        for name, obj in getattr(spec, section).items():
            for dst_port, ref, rel in references(obj):
                src = ref_node(ref)
                if src not in g:
                    continue  # reported by rules.unknown_reference
                g.add_edge(src, name, field=(section, name) + rel, dst_port=dst_port, ref=ref,
                           src_port=ref_port(ref))
    _fill_outputs(g)
    return g


def _fill_outputs(g: nx.MultiDiGraph) -> None:
    """Output ports of nodes and heads (widths unknown yet), in dependency order."""
    order = list(nx.topological_sort(g)) if nx.is_directed_acyclic_graph(g) else list(g.nodes)
    for name in order:
        attrs = g.nodes[name]
        if attrs["section"] != "inputs":
            ins = {e["dst_port"]: resolve_port(g, src, e["src_port"]) for src, _, e in g.in_edges(name, data=True)}
            attrs["out"] = KINDS[attrs["kind"]].ports(ins)
            if KINDS[attrs["kind"]].layers:  # intermediate layers that consumers ask for: `tower.layer_6`
                for _, _, e in g.out_edges(name, data=True):
                    if LAYER_PORT.match(e["src_port"] or ""):
                        attrs["out"][e["src_port"]] = attrs["out"]["seq"]


def port_name(g: nx.MultiDiGraph, node: str, port: str | None) -> str | None:
    """The port a reference `node[.port]` reads: the named one, else the node's only or main port."""
    out = g.nodes[node]["out"]
    if port is not None:
        return port
    if len(out) == 1:
        return next(iter(out))
    kind = KINDS.get(g.nodes[node]["kind"])
    return kind.main if kind is not None else None


def resolve_port(g: nx.MultiDiGraph, node: str, port: str | None):
    """The Port a reference `node[.port]` names, or None when the port does not exist."""
    return g.nodes[node]["out"].get(port_name(g, node, port))
