"""A plugin in one file: a node kind (`bag_text`, a text encoder), a head kind (`cosine_match`) and a task
(`toy_match`: does this text describe this image?), registered by importing this module.

tests/test_plugins.py takes them through validate, compile, run, export and predict in-process, and finds this
module through the entry-point group `graphspec.plugins` for the command line and `graphspec schema`.
docs/extending.md walks through it.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from graphspec.compiler.kinds import EITHER, TOKENS, HeadOutputs, Port, Want, register, seq
from graphspec.compiler.layers.adapter import Adapter
from graphspec.language.schema import Ref, Strict, TaskFacts, add_task
from graphspec.language.schema.nodes import Freeze, FreezeField
from graphspec.runtime.tasks.base import Example, ExampleTask, example_images
from graphspec.runtime.tasks.base import register as register_task
from graphspec.runtime.tasks.snli_ve import generate as statements

# --- the spec language: one class per kind, its `kind` the name a spec file writes ---------------------------


class BagText(Strict):
    """Token embeddings and a few residual MLP blocks: a text encoder without attention."""

    kind: Literal["bag_text"] = Field(description="A bag-of-embeddings text encoder (a plugin's kind).")
    input: Ref = Field(description="A text input.")
    width: int = Field(64, ge=8, description="Hidden width.")
    layers: int = Field(2, ge=1, description="Residual MLP blocks.")
    vocab_size: int = Field(512, ge=16, description="Entries of the token embeddings (the tokenizer is trained).")
    freeze: bool | Freeze = FreezeField


class MatchInputs(Strict):
    text: Ref = Field(description="A text vector or sequence (its first token is read).")
    image: Ref = Field(description="An image vector or sequence (its first token is read).")


class CosineMatch(Strict):
    """Whether a text and an image match: their projections' cosine, scaled, as (no match, match) logits."""

    kind: Literal["cosine_match"] = Field(description="A cosine image-text match head (a plugin's kind).")
    inputs: MatchInputs = Field(description="The text and the image streams.")
    dim: int = Field(32, ge=4, description="Width of the shared space.")
    freeze: bool | Freeze = FreezeField


# --- the layers: modules with flat arguments that return their ports -----------------------------------------


class BagTextEncoder(Adapter):
    """An Adapter: `freeze: {layers: "0:1"}` and `{embeddings: true}` pick from its blocks and embeddings, and an
    mlm head can tie its decoder to `input_embeddings()`."""

    def __init__(self, vocab_size: int, width: int, layers: int):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, width)
        self.blocks = nn.ModuleList(nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width), nn.GELU())
                                    for _ in range(layers))
        self.stack, self.width, self.vocab_size = "blocks", width, vocab_size

    def embedding_prefixes(self) -> list[str]:
        return ["embed."]

    def input_embeddings(self) -> nn.Embedding:
        return self.embed

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> dict:
        x = self.embed(ids)  # (B, T, D)
        for block in self.blocks:
            x = x + block(x)
        return {"seq": (x, mask.bool())}


def _first(x) -> torch.Tensor:
    hidden = x[0] if isinstance(x, tuple) else x
    return hidden[:, 0] if hidden.dim() == 3 else hidden  # (B, D)


class CosineMatchHead(nn.Module):
    def __init__(self, text_width: int, image_width: int, dim: int):
        super().__init__()
        self.text, self.image = nn.Linear(text_width, dim), nn.Linear(image_width, dim)
        self.scale = nn.Parameter(torch.full((1,), 5.0))  # not 0-dim: DeepSpeed flattens parameters

    def forward(self, text, image) -> torch.Tensor:
        t = nn.functional.normalize(self.text(_first(text)), dim=-1)
        i = nn.functional.normalize(self.image(_first(image)), dim=-1)
        cos = (t * i).sum(-1, keepdim=True) * self.scale  # (B, 1)
        return torch.cat([-cos, cos], dim=-1)  # (B, 2): (no match, match)


# --- the registrations: each kind's builder with every fact graphspec reads of it ----------------------------


@register(BagText, reads={"input": TOKENS}, gives={"seq": seq("text")}, main="seq",
          text_vocabulary=True)
def build_bag_text(node, path, ins, ctx):
    return BagTextEncoder(node.vocab_size, node.width, node.layers)


@register(CosineMatch, reads={"inputs.text": Want(EITHER), "inputs.image": Want(EITHER)},
          gives={"logits": Port("vector", "joint")},
          outputs=HeadOutputs(lambda head, raw: {f"{head}_prediction": raw.float().argmax(-1),
                                                 f"{head}_probability": raw.float().softmax(-1)[:, 1]},
                              classes=("no match", "match")))
def build_cosine_match(node, path, ins, ctx):
    return CosineMatchHead(ins["inputs.text"].width, ins["inputs.image"].width, node.dim)


# --- the task: its row in the table, and its module ----------------------------------------------------------

add_task(TaskFacts("toy_match", "an image and a statement about it: does it hold?", "cosine_match",
                   ("cosine_match",), ("text", "image"), metric="toy_match_acc"))


@register_task
class ToyMatch(ExampleTask):
    """Built-in scenes with SNLI-VE's statements; a statement that is entailed matches, any other does not."""

    name = "toy_match"

    @classmethod
    def generate_examples(cls, config, source, n, image):
        return [Example((image(e.scene),), e.hypothesis, int(e.label == 2))
                for e in statements(config, source.split, n, source.shapes.seed)]

    @classmethod
    def example(cls, record):
        return Example(example_images(record), record["text"], int(record["label"]))
