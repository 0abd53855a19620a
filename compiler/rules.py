"""Graph rules: small named functions, one rule each, run from plain lists.

Structural rules need only the graph built from the spec; width rules run once
graphspec.compiler.assemble has stored each port's width on the graph.
"""

from __future__ import annotations

from typing import Callable, Iterator

import networkx as nx

from graphspec.language.errors import Issue, suggest
from graphspec.language.schema import Fusion, Spec, ref_node, ref_port

from .graph import references, resolve_port
from .kinds import KINDS

Rule = Callable[[Spec, nx.MultiDiGraph], Iterator[Issue]]

_FORM_FIX = {
    "vector": "pool the sequence first (a cls_pool node)",
    "sequence": "feed it a sequence: an encoder, fusion stream or projection",
    "tokens": "feed it a text input",
    "pixels": "feed it an image input",
}


def _all_refs(spec: Spec):
    for section in ("nodes", "heads"):
        for name, obj in getattr(spec, section).items():
            for dst_port, ref, rel in references(obj):
                yield section, name, obj, dst_port, ref, (section, name) + rel


def unknown_reference(spec: Spec, g: nx.MultiDiGraph) -> Iterator[Issue]:
    for _, _, _, _, ref, field in _all_refs(spec):
        src = ref_node(ref)
        if src not in g:
            yield Issue(field, f"unknown node '{src}'", suggest(src, g.nodes))


def unknown_port(spec: Spec, g: nx.MultiDiGraph) -> Iterator[Issue]:
    for _, _, _, _, ref, field in _all_refs(spec):
        src, port = ref_node(ref), ref_port(ref)
        if src in g and port is not None and port not in g.nodes[src]["out"]:
            ports = list(g.nodes[src]["out"])
            yield Issue(field, f"'{src}' has no port '{port}' (it has: {', '.join(ports)})", suggest(port, ports))


def cycle(spec: Spec, g: nx.MultiDiGraph) -> Iterator[Issue]:
    for found in list(nx.simple_cycles(nx.DiGraph(g)))[:3]:
        loop = " -> ".join(found + [found[0]])
        first = g.nodes[found[0]]["path"]
        yield Issue(first, f"the graph has a cycle: {loop}", "a node cannot depend on its own output: remove one reference")


def form_and_modality(spec: Spec, g: nx.MultiDiGraph) -> Iterator[Issue]:
    for src, dst, e in g.edges(data=True):
        port = resolve_port(g, src, e["src_port"])
        want = KINDS[g.nodes[dst]["kind"]].reads.get(e["dst_port"])
        if port is None or want is None:
            continue
        given = f"'{e['ref']}' gives {port.describe()}"
        if port.form not in want.forms:
            yield Issue(e["field"], f"{g.nodes[dst]['kind']} needs {want.describe()}, but {given}", _FORM_FIX[want.forms[0]])
        elif want.modality and port.modality != want.modality:
            yield Issue(e["field"], f"{g.nodes[dst]['kind']} needs {want.describe()}, but {given}",
                        f"feed it a {want.modality} stream")


def mlm_vocabulary(spec: Spec, g: nx.MultiDiGraph) -> Iterator[Issue]:
    for name, head in spec.heads.items():
        if head.kind != "mlm":
            continue
        if head.vocab_from is None and head.vocab_size is None:
            texts = [n for n, node in spec.nodes.items() if KINDS[node.kind].text_vocabulary]
            yield Issue(("heads", name), "an mlm head needs a vocabulary: `vocab_from` or `vocab_size`",
                        f"set `vocab_from: {texts[0]}`" if texts else "set `vocab_size`")
        elif head.vocab_from is not None:
            src = ref_node(head.vocab_from)
            if src in spec.nodes and not KINDS[spec.nodes[src].kind].text_vocabulary:
                kinds = " or ".join(sorted(k.name for k in KINDS.values() if k.text_vocabulary))
                yield Issue(("heads", name, "vocab_from"), f"'{src}' is a {spec.nodes[src].kind}, not a text encoder",
                            f"name a node of a kind with a text vocabulary ({kinds})")


def objectives_reference_heads(spec: Spec, g: nx.MultiDiGraph) -> Iterator[Issue]:
    for name, obj in spec.objectives.items():
        head = spec.objective_head(name)
        field = ("objectives", name, "head") if obj.head else ("objectives", name)
        if head not in spec.heads:
            yield Issue(field, f"objective '{name}' trains head '{head}', which does not exist",
                        suggest(head, spec.heads) or "add the head, or set `head:`")
        elif spec.heads[head].kind != obj.kind:
            yield Issue(field, f"a {obj.kind} objective cannot train head '{head}', a {spec.heads[head].kind} head",
                        f"point it at a {obj.kind} head")


def lr_multipliers_reference_nodes(spec: Spec, g: nx.MultiDiGraph) -> Iterator[Issue]:
    known = set(spec.nodes) | {"heads"} | {f"heads.{h}" for h in spec.heads}
    for key in spec.train.lr_multipliers:
        if key not in known and not any(key.startswith(k + ".") for k in known):  # a node, or a part of one
            yield Issue(("train", "lr_multipliers", key), f"unknown node '{key}'", suggest(key, known))


def feeds_nothing(spec: Spec, g: nx.MultiDiGraph) -> Iterator[Issue]:
    heads = [n for n, a in g.nodes(data=True) if a["section"] == "heads"]
    if not heads:
        yield Issue(("heads",), "no heads: the model computes nothing to train", "add a head, e.g. itm", "warning")
        return
    useful = set(heads).union(*(nx.ancestors(g, h) for h in heads))
    for name, attrs in g.nodes(data=True):
        if name not in useful:
            yield Issue(attrs["path"], f"'{name}' feeds no head: it would be computed for nothing",
                        "reference it from a head's path, or remove it", "warning")


STRUCTURE_RULES: list[Rule] = [
    unknown_reference, unknown_port, cycle, form_and_modality, mlm_vocabulary,
    objectives_reference_heads, lr_multipliers_reference_nodes, feeds_nothing,
]


def _stream_widths(g: nx.MultiDiGraph, node) -> dict[str, int | None]:
    ports = {k: resolve_port(g, ref_node(getattr(node.inputs, k)), ref_port(getattr(node.inputs, k)))
             for k in ("text", "image")}
    return {k: p.width if p is not None else None for k, p in ports.items()}


def fusion_widths_agree(spec: Spec, g: nx.MultiDiGraph) -> Iterator[Issue]:
    for name, node in spec.nodes.items():
        if not isinstance(node, Fusion):
            continue
        widths = _stream_widths(g, node)
        if None in widths.values():
            continue
        refs = {k: getattr(node.inputs, k) for k in widths}
        if node.width is None and widths["text"] != widths["image"]:
            yield Issue(("nodes", name, "inputs"),
                        f"the streams differ in width: '{refs['text']}' gives {widths['text']}, '{refs['image']}' gives {widths['image']}",
                        f"set `nodes.{name}.width` (e.g. {max(widths.values())}) to project both, or add a projection node")
        elif node.width is not None and not node.project_inputs:
            for k, w in widths.items():
                if w != node.width:
                    yield Issue(("nodes", name, "inputs", k),
                                f"'{refs[k]}' is {w} wide but the fusion is {node.width} wide, and project_inputs is false",
                                f"add a projection node to {node.width}, or set `project_inputs: true`")
        if node.width is None and widths["text"] % node.heads:
            yield Issue(("nodes", name, "heads"), f"{node.heads} heads do not divide the width {widths['text']}",
                        "pick heads that divide it, or set `width`")


def _fed_inputs(spec: Spec, g: nx.MultiDiGraph, fact: str, modality: str):
    """(node, fact value, input name, input) for nodes carrying `fact` that read a `modality` input directly."""
    for name, attrs in g.nodes(data=True):
        value = attrs.get(fact)
        for src, _, _ in g.in_edges(name, data=True) if value else ():
            inp = spec.inputs.get(src)
            if inp is not None and inp.modality == modality:
                yield name, value, src, inp


def text_fits_encoder(spec: Spec, g: nx.MultiDiGraph) -> Iterator[Issue]:
    for name, limit, src, inp in _fed_inputs(spec, g, "max_positions", "text"):
        if inp.max_length > limit:
            yield Issue(("inputs", src, "max_length"), f"{inp.max_length} tokens exceed the {limit} positions of '{name}'",
                        f"use max_length <= {limit}, or a larger `size.max_positions` with init: random")


def patches_tile_the_image(spec: Spec, g: nx.MultiDiGraph) -> Iterator[Issue]:
    for name, patch, src, inp in _fed_inputs(spec, g, "patch_size", "image"):
        if inp.size % patch:
            lower, upper = inp.size // patch * patch, (inp.size // patch + 1) * patch
            yield Issue(("inputs", src, "size"), f"{inp.size}-pixel images do not split into {patch}-pixel "
                        f"patches of '{name}'", f"use a multiple of {patch}, e.g. {lower or upper} or {upper}")


def attention_heads_divide(spec: Spec, g: nx.MultiDiGraph) -> Iterator[Issue]:
    for name, head in spec.heads.items():
        if head.kind == "ref":
            port = resolve_port(g, ref_node(head.inputs.image), ref_port(head.inputs.image))
            if port is not None and port.width and port.width % head.heads:
                yield Issue(("heads", name, "heads"), f"{head.heads} heads do not divide the image stream's width {port.width}",
                            "pick heads that divide it")


WIDTH_RULES: list[Rule] = [fusion_widths_agree, text_fits_encoder, patches_tile_the_image, attention_heads_divide]


def run_rules(rules: list[Rule], spec: Spec, g: nx.MultiDiGraph) -> list[Issue]:
    return [issue for rule in rules for issue in rule(spec, g)]
