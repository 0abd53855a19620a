"""Typed ports: what each kind reads and gives, so edges are checked before any weight exists."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

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


def _seq(modality: str) -> Port:
    return Port("sequence", modality)


def _pooled(ins: dict[str, "Port | None"]) -> dict[str, Port]:
    mods = {p.modality for p in ins.values() if p is not None}
    return {"pooled": Port("vector", mods.pop() if len(mods) == 1 else "joint")}


def output_ports(kind: str, ins: dict[str, "Port | None"]) -> dict[str, Port]:
    """Ports a kind gives, widths unknown until the node is built (encoders add `layer_N` ports on demand).

    `ins` maps the node's input port names to the ports feeding them, for kinds whose
    output follows their input (a projection keeps its input's form and modality).
    """
    if kind == "hf_text":
        return {"seq": _seq("text")}
    if kind in ("hf_vision", "timm_vision"):
        return {"seq": _seq("image")}
    if kind in ("co_attention", "cross_attention"):
        return {"text": _seq("text"), "image": _seq("image")}
    if kind in ("merged_attention", "one_tower"):
        return {"text": _seq("text"), "image": _seq("image"), "seq": _seq("joint")}
    if kind in ("cls_pool", "mean_pool"):
        return _pooled(ins)
    if kind == "projection":
        src = ins.get("input")
        form = src.form if src is not None and src.form in ("sequence", "vector") else "sequence"
        return {"out": Port(form, src.modality if src is not None else "joint")}
    if kind == "mlm":
        return {"logits": Port("sequence", "text")}
    if kind in ("itm", "itc", "classify", "pair_classify", "vqa", "ref"):
        return {"logits": Port("vector", "joint")}
    raise KeyError(kind)


DEFAULT_PORT = {
    "hf_text": "seq", "hf_vision": "seq", "timm_vision": "seq", "one_tower": "seq", "merged_attention": "seq",
    "cls_pool": "pooled", "mean_pool": "pooled", "projection": "out",
}
ENCODERS = ("hf_text", "hf_vision", "timm_vision")

_SEQ = ("sequence",)
_EITHER = ("vector", "sequence")
_WANTS = {
    "hf_text": {"input": Want(("tokens",), "text")},
    "hf_vision": {"input": Want(("pixels",), "image")},
    "timm_vision": {"input": Want(("pixels",), "image")},
    "one_tower": {"inputs.text": Want(("tokens",), "text"), "inputs.image": Want(("pixels",), "image")},
    "co_attention": {"inputs.text": Want(_SEQ, "text"), "inputs.image": Want(_SEQ, "image")},
    "cross_attention": {"inputs.text": Want(_SEQ, "text"), "inputs.image": Want(_SEQ, "image")},
    "merged_attention": {"inputs.text": Want(_SEQ, "text"), "inputs.image": Want(_SEQ, "image")},
    "cls_pool": {"inputs.0": Want(_SEQ), "inputs.1": Want(_SEQ)},
    "mean_pool": {"input": Want(_SEQ)},
    "projection": {"input": Want(_EITHER)},
    "itm": {"input": Want(("vector",))},
    "mlm": {"input": Want(_SEQ, "text"), "vocab_from": Want(_SEQ)},
    "itc": {"inputs.text": Want(_EITHER), "inputs.image": Want(_EITHER)},
    "classify": {"input": Want(("vector",))},
    "pair_classify": {"input": Want(("vector",))},
    "vqa": {"input": Want(("vector",))},
    "ref": {"inputs.image": Want(_SEQ, "image"), "inputs.text": Want(_EITHER), "inputs.boxes": Want(("boxes",))},
}


def input_wants(kind: str) -> dict[str, Want]:
    """Ports a kind reads. Port names are the spec fields that hold the reference."""
    return _WANTS[kind]


def input_port_for(modality: str) -> Port:
    return {"text": Port("tokens", "text"), "image": Port("pixels", "image"), "boxes": Port("boxes", "joint")}[modality]
