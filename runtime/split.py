"""Taking wholly frozen input-side towers out of the model the engine trains.

A tower that is frozen whole and reads only model inputs needs no gradient and
no optimizer state, and under ZeRO-3 DeepSpeed would shard and re-gather its
weights every step. It runs outside the engine, under no_grad, in eval mode; the
engine gets the rest of the graph, with the tower's output as an input.
"""

from __future__ import annotations

import torch
import torch.fx as fx
from torch import nn


def outside_towers(gm: fx.GraphModule, frozen_nodes: list[str]) -> list[str]:
    """Frozen nodes whose every argument is a model input."""
    out = []
    for node in gm.graph.nodes:
        if node.op == "call_module" and node.target in frozen_nodes:
            if all(isinstance(a, fx.Node) and a.op == "placeholder" for a in node.all_input_nodes):
                out.append(node.target)
    return out


class Split(nn.Module):
    """`towers` (frozen, outside) feeding `inner` (what the engine trains)."""

    def __init__(self, gm: fx.GraphModule, towers: list[str]):
        super().__init__()
        self.tower_args: dict[str, list[str]] = {}
        graph = fx.Graph()
        env: dict[fx.Node, fx.Node] = {}
        tower_calls = [n for n in gm.graph.nodes if n.op == "call_module" and n.target in towers]
        for t in tower_calls:
            self.tower_args[t.target] = [a.name for a in t.args]
            env[t] = graph.placeholder(t.target)  # the tower's output dict arrives as an input
        for node in gm.graph.nodes:
            if node in env:
                continue
            if node.op == "placeholder" and all(u in env for u in node.users):
                continue  # read only by outside towers
            env[node] = graph.node_copy(node, lambda n: env[n])
        self.inner = fx.GraphModule(gm, graph, class_name=type(gm).__name__ + "Inner")
        self.towers = nn.ModuleDict({t: gm.get_submodule(t) for t in towers})
        self.inner_args = [n.name for n in graph.nodes if n.op == "placeholder"]

    @torch.no_grad()
    def run_towers(self, batch: dict) -> dict:
        return {name: tower(*[batch[a] for a in self.tower_args[name]]) for name, tower in self.towers.items()}

    def inner_inputs(self, batch: dict, tower_outputs: dict) -> dict:
        merged = {**batch, **tower_outputs}
        return {k: merged[k] for k in self.inner_args if k in merged}
