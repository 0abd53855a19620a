"""A picture of the graph: Mermaid text always, DOT text always, SVG/PNG when graphviz's `dot` exists."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import networkx as nx

_MERMAID_SHAPE = {"inputs": ('(["', '"])'), "nodes": ('["', '"]'), "heads": ('{{"', '"}}')}
_DOT_SHAPE = {"inputs": "ellipse", "nodes": "box", "heads": "hexagon"}


def _label(name: str, attrs: dict, frozen: set[str]) -> str:
    prefix = f"heads.{name}" if attrs["section"] == "heads" else name
    ice = " (frozen)" if prefix in frozen else ""
    return f"{name}: {attrs['kind']}{ice}"


def _port(g, src: str, e: dict) -> str:
    return "vocab" if e["dst_port"] == "vocab_from" else (e["src_port"] or "")


def mermaid(g: nx.MultiDiGraph, frozen_nodes: set[str]) -> str:
    lines = ["flowchart LR"]
    for name, attrs in g.nodes(data=True):
        a, b = _MERMAID_SHAPE[attrs["section"]]
        lines.append(f"  {name}{a}{_label(name, attrs, frozen_nodes)}{b}")
    for src, dst, e in g.edges(data=True):
        port = _port(g, src, e)
        arrow = "-.->" if e["dst_port"] == "vocab_from" else "-->"
        lines.append(f"  {src} {arrow}|{port}| {dst}" if port else f"  {src} {arrow} {dst}")
    for name, attrs in g.nodes(data=True):
        prefix = f"heads.{name}" if attrs["section"] == "heads" else name
        if prefix in frozen_nodes:
            lines.append(f"  style {name} fill:#dbeafe,stroke:#1e40af")
    return "\n".join(lines) + "\n"


def dot(g: nx.MultiDiGraph, frozen_nodes: set[str]) -> str:
    lines = ["digraph model {", "  rankdir=LR;"]
    for name, attrs in g.nodes(data=True):
        prefix = f"heads.{name}" if attrs["section"] == "heads" else name
        fill = ', style=filled, fillcolor="#dbeafe"' if prefix in frozen_nodes else ""
        lines.append(f'  {name} [shape={_DOT_SHAPE[attrs["section"]]}, label="{_label(name, attrs, frozen_nodes)}"{fill}];')
    for src, dst, e in g.edges(data=True):
        style = ", style=dashed" if e["dst_port"] == "vocab_from" else ""
        lines.append(f'  {src} -> {dst} [label="{_port(g, src, e)}"{style}];')
    return "\n".join(lines + ["}"]) + "\n"


def write_pictures(g: nx.MultiDiGraph, frozen_nodes: set[str], out: Path) -> list[Path]:
    written = []
    (out / "graph.mmd").write_text(mermaid(g, frozen_nodes))
    (out / "graph.dot").write_text(dot(g, frozen_nodes))
    written += [out / "graph.mmd", out / "graph.dot"]
    exe = shutil.which("dot")
    if exe:
        for fmt in ("svg", "png"):
            subprocess.run([exe, f"-T{fmt}", str(out / "graph.dot"), "-o", str(out / f"graph.{fmt}")], check=True,
                           capture_output=True, timeout=60)
            written.append(out / f"graph.{fmt}")
    return written
