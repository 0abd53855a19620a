"""A PNG of the compiled graph priced: each node coloured and sized by its share of the training step's FLOPs.

Matplotlib only (no graphviz): the layout is computed here, left to right, a layer per longest path from the
inputs, and the figure is drawn on its own Agg canvas, so no global backend is switched. A node's label holds
its name, kind, FLOP share (forward + backward) and memory (activation MiB, parameters in M and how many of them
train); frozen nodes are hatched and outlined. Inputs have no cost row: they are small and grey.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import matplotlib
import networkx as nx
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.patches import FancyBboxPatch

X_STEP, Y_STEP = 3.4, 1.7  # data units between layers and between nodes of a layer (about inches)
FROZEN_EDGE = "#1e40af"
GREY = "#d1d5db"


def _row_name(name: str, attrs: dict) -> str:
    return f"heads.{name}" if attrs["section"] == "heads" else name


def _layers(graph: nx.MultiDiGraph) -> dict[str, int]:
    """Layer of each node: its longest path from a node without inputs (cycles, if any, share a layer)."""
    dag = nx.condensation(graph)  # the graph itself, each node alone, when it has no cycle
    depth: dict[int, int] = {}
    for c in nx.topological_sort(dag):
        depth[c] = max((depth[p] + 1 for p in dag.predecessors(c)), default=0)
    return {n: depth[c] for n, c in dag.graph["mapping"].items()}


def _positions(graph: nx.MultiDiGraph) -> dict[str, tuple[float, float]]:
    """Left to right by layer; within a layer, ordered by the mean height of the predecessors, then centred."""
    layers = _layers(graph)
    by_layer: dict[int, list[str]] = defaultdict(list)
    for n in graph.nodes:
        by_layer[layers[n]].append(n)
    pos: dict[str, tuple[float, float]] = {}
    for layer in sorted(by_layer):
        def mean_y(n: str) -> float:
            ys = [pos[p][1] for p in graph.predecessors(n) if p in pos]
            return -sum(ys) / len(ys) if ys else 0.0
        members = sorted(by_layer[layer], key=mean_y) if layer else by_layer[layer]
        for i, n in enumerate(members):
            pos[n] = (layer * X_STEP, ((len(members) - 1) / 2 - i) * Y_STEP)
    return pos


def _label(name: str, attrs: dict, row: dict | None, share: float) -> str:
    if attrs["section"] == "inputs":
        return f"{name}\n{attrs['kind']}"
    if row is None:
        return f"{name}\n{attrs['kind']}\n(no cost row)"
    where = row.get("where", "engine")
    head = f"{name} (frozen)" if row.get("frozen") else name
    kind = attrs["kind"] if where == "engine" else f"{attrs['kind']} · {where}"
    return (f"{head}\n{kind}\n{100 * share:.1f}% of FLOPs\nact {row.get('activation_mb', 0.0):.1f} MiB\n"
            f"{row.get('params', 0) / 1e6:.2f}M params, {row.get('trainable', 0) / 1e6:.2f}M trainable")


def draw_cost(graph: nx.MultiDiGraph, nodes: dict[str, dict], path: Path, title: str = "") -> Path:
    """Draw `graph` with its cost rows (`nodes`: row name, "heads.X" for heads -> fwd_flops, bwd_flops,
    params, trainable, activation_mb, frozen, where) as a PNG at `path`; returns `path`."""
    flops = {k: r.get("fwd_flops", 0) + r.get("bwd_flops", 0) for k, r in nodes.items()}
    total = sum(flops.values())
    share = {k: f / total if total > 0 else 0.0 for k, f in flops.items()}
    top = max(share.values(), default=0.0) or 1.0
    cmap, norm = matplotlib.colormaps["YlOrRd"], Normalize(0.0, 100 * top)

    pos = _positions(graph)
    xs, ys = [p[0] for p in pos.values()] or [0.0], [p[1] for p in pos.values()] or [0.0]
    width, height = max(xs) - min(xs) + 1.2 * X_STEP, max(ys) - min(ys) + 1.5 * Y_STEP
    fig_w, fig_h = max(6.0, width + 1.6), max(4.0, height + 0.9)  # room for the colour bar and the title
    fig = Figure(figsize=(fig_w, fig_h), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.0, 0.3 / fig_h, 1 - 1.6 / fig_w, 1 - 0.9 / fig_h))
    ax.set_xlim(min(xs) - 0.6 * X_STEP, max(xs) + 0.6 * X_STEP)
    ax.set_ylim(min(ys) - 0.75 * Y_STEP, max(ys) + 0.75 * Y_STEP)
    ax.axis("off")

    size: dict[str, tuple[float, float]] = {}
    for name, attrs in graph.nodes(data=True):
        row = nodes.get(_row_name(name, attrs))
        s = share.get(_row_name(name, attrs), 0.0)
        rel = (s / top) ** 0.5
        w, h = (1.4, 0.55) if attrs["section"] == "inputs" else (2.2 + 0.7 * rel, 1.0 + 0.4 * rel)
        size[name] = (w, h)
        frozen = bool(row and row.get("frozen"))
        face = GREY if row is None else cmap(norm(100 * s))
        style = "round4,pad=0.05" if attrs["section"] == "heads" else "round,pad=0.05"
        x, y = pos[name]
        ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle=style, facecolor=face, zorder=2,
                                    edgecolor=FROZEN_EDGE if frozen else "#374151", linewidth=2.0 if frozen else 0.8,
                                    hatch="//" if frozen else None, linestyle="--" if frozen else "-"))
        ink = "white" if row is not None and norm(100 * s) > 0.6 else "black"
        ax.text(x, y, _label(name, attrs, row, s), ha="center", va="center", fontsize=7.5, color=ink, zorder=3,
                bbox=dict(boxstyle="round,pad=0.15", facecolor=face, edgecolor="none") if frozen else None)

    parallel: dict[tuple[str, str], int] = defaultdict(int)
    for src, dst, _ in graph.edges(data=True):
        parallel[(src, dst)] += 1
    seen: dict[tuple[str, str], int] = defaultdict(int)
    for src, dst, e in graph.edges(data=True):
        k, n = seen[(src, dst)], parallel[(src, dst)]
        seen[(src, dst)] += 1
        rad = 0.25 * (k - (n - 1) / 2)
        (x1, y1), (x2, y2) = pos[src], pos[dst]
        a, b = (x1 + size[src][0] / 2 + 0.05, y1), (x2 - size[dst][0] / 2 - 0.05, y2)
        vocab = e.get("dst_port") == "vocab_from"
        ax.annotate("", xy=b, xytext=a, zorder=1, arrowprops=dict(
            arrowstyle="-|>", color="#4b5563", linewidth=0.9, linestyle="--" if vocab else "-",
            connectionstyle=f"arc3,rad={rad}", shrinkA=0, shrinkB=0))
        port = "vocab" if vocab else (e.get("src_port") or "")
        if port:
            mx, my = (a[0] + b[0]) / 2 + rad * (b[1] - a[1]) / 2, (a[1] + b[1]) / 2 - rad * (b[0] - a[0]) / 2
            ax.text(mx, my, port, fontsize=6, color="#374151", ha="center", va="bottom", zorder=1)

    cax = fig.add_axes((1 - 1.2 / fig_w, 0.2, 0.18 / fig_w, 0.6))
    bar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), cax=cax)
    bar.set_label("share of the step's FLOPs, forward + backward (%)", fontsize=8)
    bar.ax.tick_params(labelsize=7)
    fig.text(0.01, 0.01, "hatched, blue dashed outline: frozen;  grey: input or no cost row;  dashed arrow: "
             "vocabulary shared (vocab_from)", fontsize=7, va="bottom")
    if title:
        fig.suptitle(title, fontsize=11, y=0.985)
    path = Path(path)
    fig.savefig(path, format="png", dpi=120)
    return path
