"""The registry of node and head kinds: each kind's builder, with the ports it reads and gives and the input
preparation an encoder needs, declared once where the builder is registered (`graphspec.compiler.builders`).

A registry is a dict and a decorator; the key is the kind's name, which is also its spec class's `kind`.
Everything else reads the registry: the graph (which ports a node gives, which one a bare reference names),
the rules (what each port accepts), assembly (which builder to call) and the runtime (an encoder's tokenizer and
image transform).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any, Callable

LAYER_PORT = re.compile(r"^layer_(\d+)$")  # an encoder's hidden states after its N-th layer (1-based)


@dataclass(frozen=True)
class Port:
    """A value flowing along an edge.

    form: 'tokens' (ids + mask), 'pixels', 'boxes' (+ mask), 'sequence' ((B, T, D) + mask)
    or 'vector' ((B, D)). modality: 'text', 'image' or 'joint'. width: D, once known.
    """

    form: str
    modality: str
    width: int | None = None

    def with_width(self, width: int | None) -> "Port":
        return replace(self, width=width)

    def describe(self) -> str:
        w = f" of width {self.width}" if self.width else ""
        return article(f"{self.modality} {self.form}{w}")


@dataclass(frozen=True)
class Want:
    """What an input port accepts: forms, and a modality (None: any)."""

    forms: tuple[str, ...]
    modality: str | None = None

    def describe(self) -> str:
        mod = f"{self.modality} " if self.modality else ""
        return article(f"{mod}{' or '.join(self.forms)}")


def article(phrase: str) -> str:
    if phrase.split(" of ")[0].endswith(("pixels", "tokens", "boxes")):
        return phrase
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


Gives = dict[str, Port] | Callable[[dict[str, "Port | None"]], dict[str, Port]]


@dataclass(frozen=True)
class HeadOutputs:
    """What a head gives a person, named once for `load_model`, `predict` and the `.pt2` program.

    named(head, raw) -> {output name: tensor}: e.g. ITM's `{head}_probability`, a class head's
    `{head}_prediction`, ITC's `text_embedding` / `image_embedding`. classes: the names of its classes where the
    index alone means nothing (ITM's 'no match', 'match'); a task may name them instead (VQA's answers).
    features: its input (the pooled vector) is also given, as `{head}_features`. exported: the program keeps it
    (an MLM decoder tied to the text tower's embeddings holds one weight under two names, which torch.export
    cannot rebuild)."""

    named: Callable[[str, Any], dict[str, Any]] = lambda head, raw: {}
    classes: tuple[str, ...] = ()
    features: bool = False
    exported: bool = True


@dataclass(frozen=True)
class Kind:
    """A node or head kind, registered against its spec class (`schema`; the kind's name is that class's `kind`).

    reads: the ports it reads, named by the spec field that holds the reference ('input', 'inputs.text',
    'inputs.0', 'vocab_from'). gives: its output ports (widths filled in once built), or a function of the
    ports feeding it for kinds whose output follows their input. main: the port a bare reference `node` names
    when it gives several. layers: it also gives `layer_N`, its N-th layer's output, on demand.
    image_transform(node, module, size) -> uint8 (H, W, 3) array -> (3, size, size) tensor, for the image
    input it reads; tokenizer(node, path) -> the tokenizer of its text input, or None to train one.
    library(node) -> 'transformers', 'timm' or None: the library its builder builds the node with (its build
    is then recorded, `tower_records`; a transformers tower's config is exported with it). text_vocabulary: it
    embeds text tokens, so an mlm head may take its vocabulary (`vocab_from`). image_processor: an exported
    tower also keeps its hub image processor. outputs: a head's outputs for people (HeadOutputs).
    """

    name: str
    schema: type
    build: Callable
    reads: dict[str, Want]
    gives: Gives
    main: str | None = None
    layers: bool = False
    image_transform: Callable | None = None
    tokenizer: Callable | None = None
    library: Callable[[Any], str | None] = lambda node: None
    text_vocabulary: bool = False
    image_processor: bool = False
    outputs: HeadOutputs | None = None

    def ports(self, ins: dict[str, "Port | None"]) -> dict[str, Port]:
        return dict(self.gives(ins)) if callable(self.gives) else dict(self.gives)


KINDS: dict[str, Kind] = {}


def register(schema: type, *, reads: dict[str, Want], gives: Gives, main: str | None = None, layers: bool = False,
             image_transform: Callable | None = None, tokenizer: Callable | None = None,
             library: str | Callable[[Any], str | None] | None = None, text_vocabulary: bool = False,
             image_processor: bool = False, outputs: HeadOutputs | None = None):
    """Register the decorated builder for the kind of spec class `schema`, with every fact the compiler, the
    runtime, export and inference read of it. A spec class not yet in the spec language (a plugin's) is added
    to it here."""
    from graphspec.language.schema import extend, kind_of

    name = kind_of(schema)

    def lib(node: Any) -> str | None:
        return library(node) if callable(library) else library

    def deco(build: Callable) -> Callable:
        if name in KINDS:
            raise ValueError(f"a builder for '{name}' is already registered")
        extend(schema, head=outputs is not None)
        KINDS[name] = Kind(name, schema, build, dict(reads), gives, main, layers, image_transform, tokenizer, lib,
                           text_vocabulary, image_processor, outputs)
        return build

    return deco


def seq(modality: str) -> Port:
    return Port("sequence", modality)


SEQ, EITHER = ("sequence",), ("vector", "sequence")
TOKENS, PIXELS, BOXES = Want(("tokens",), "text"), Want(("pixels",), "image"), Want(("boxes",))


def input_port_for(modality: str) -> Port:
    """What a model input gives."""
    return {"text": Port("tokens", "text"), "image": Port("pixels", "image"), "boxes": Port("boxes", "joint")}[modality]

