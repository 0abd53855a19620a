"""graphspec/cost/picture.py: the priced graph drawn as a PNG, whatever the rows hold (none, all zero FLOPs)."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image
import networkx as nx
import pytest

import graphspec
from graphspec.compiler.graph import build_graph
from graphspec.cost.picture import draw_cost

SPECS = Path(__file__).resolve().parents[2] / "specs"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def graph() -> nx.MultiDiGraph:
    return build_graph(graphspec.load(SPECS / "quickstart.yaml"))


def rows_for(graph: nx.MultiDiGraph, flops: int = 10**9, frozen: bool = False) -> dict[str, dict]:
    """A made-up cost row for every node and head (named heads.X), none for the inputs."""
    rows = {}
    for i, (name, attrs) in enumerate(graph.nodes(data=True)):
        if attrs["section"] == "inputs":
            continue
        params = (i + 1) * 1_000_000
        rows[f"heads.{name}" if attrs["section"] == "heads" else name] = {
            "fwd_flops": flops * (i + 1), "bwd_flops": 2 * flops * (i + 1), "params": params,
            "trainable": 0 if frozen else params, "activation_mb": 1.5 * i, "frozen": frozen}
    return rows


def assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    image = matplotlib.image.imread(path)
    assert image.shape[0] > 200 and image.shape[1] > 200


def test_draws_the_quickstart_graph(graph, tmp_path):
    rows = rows_for(graph)
    assert {"text_tower", "fusion", "heads.itm", "heads.mlm"} <= rows.keys()
    rows["text_tower"] |= {"frozen": True, "trainable": 0, "where": "cache"}
    rows["vision_tower"]["where"] = "outside"
    out = draw_cost(graph, rows, tmp_path / "cost.png", title="quickstart: made-up costs")
    assert out == tmp_path / "cost.png"
    assert_png(out)


def test_zero_flops_everywhere_divides_by_nothing(graph, tmp_path):
    assert_png(draw_cost(graph, rows_for(graph, flops=0, frozen=True), tmp_path / "zero.png"))


def test_one_zero_flop_node_among_others(graph, tmp_path):
    rows = rows_for(graph)
    rows["pooled"] |= {"fwd_flops": 0, "bwd_flops": 0, "frozen": True, "trainable": 0}
    assert_png(draw_cost(graph, rows, tmp_path / "one_zero.png"))


def test_no_rows_still_draws(graph, tmp_path):
    assert_png(draw_cost(graph, {}, tmp_path / "empty.png", title="no cost rows"))
