"""The contract between graphspec and a node's module, for modules that hold a stack of layers (encoders,
fusion, one tower): what freezing, port widths, tower records, MLM tying and the frozen-tower runner read of
it. A layer module that subclasses `Adapter` gets these; any other module is a plain block (no layers to freeze
by range, no embeddings, one width)."""

from __future__ import annotations

from torch import nn


class Adapter(nn.Module):
    """stack: the dotted name of its stack of blocks (None: none); width: its main output's width."""

    stack: str | None = None
    width: int

    def layer_prefixes(self) -> list[str]:
        """Each block's parameter prefix, in order: what `freeze: {layers: "0:6"}` picks from."""
        if self.stack is None:
            return []
        return [f"{self.stack}.{i}." for i in range(self.num_layers)]

    def embedding_prefixes(self) -> list[str]:
        """Parameter prefixes of what runs before the stack: what `freeze: {embeddings: true}` picks."""
        return []

    @property
    def num_layers(self) -> int:
        return len(list(self.get_submodule(self.stack).children())) if self.stack else 0

    def port_widths(self) -> dict[str, int]:
        """Width of each output port that differs from `width` (a CNN's stages differ from its last map)."""
        return {}

    def input_embeddings(self) -> nn.Embedding | None:
        """The text token embeddings (an MLM head ties its decoder to them); None: it embeds no text."""
        return None
