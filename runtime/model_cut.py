"""The model cut around its outside towers: wholly frozen input-side towers taken out of what the engine trains.

A tower that is frozen whole and reads only model inputs needs no gradient and
no optimizer state, and under ZeRO-3 DeepSpeed would shard and re-gather its
weights every step. It runs outside the engine (graphspec.runtime.towers: under
no_grad, in eval mode); the engine gets the rest of the graph, with the tower's
output as an input. Which towers go out is decided by graphspec.compiler.placement.
"""

from __future__ import annotations

import torch.fx as fx
from torch import nn


class ModelCut(nn.Module):
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

    def inner_inputs(self, batch: dict, tower_outputs: dict) -> dict:
        merged = {**batch, **tower_outputs}
        return {k: merged[k] for k in self.inner_args if k in merged}
