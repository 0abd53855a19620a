"""Typed ports: what each kind reads and gives, so edges are checked before any weight exists."""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Port:
    """A value flowing along an edge.

    form: 'tokens' (ids + mask), 'pixels', 'sequence' ((B, T, D) + mask) or 'vector' ((B, D)).
    modality: 'text', 'image' or 'joint'. width: D, once known.
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
    if phrase.endswith(("pixels", "tokens")):
        return phrase
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def output_ports(kind: str, ins: dict[str, "Port | None"]) -> dict[str, Port]:
    """Ports a node kind gives, widths unknown until the node is built.

    `ins` maps the node's input port names to the ports feeding them, for kinds whose
    output follows their input (a projection keeps its input's form and modality).
    """
    if kind == "hf_text":
        return {"seq": Port("sequence", "text")}
    if kind in ("hf_vision", "timm_vision"):
        return {"seq": Port("sequence", "image")}
    if kind == "co_attention":
        return {"text": Port("sequence", "text"), "image": Port("sequence", "image")}
    if kind == "cls_pool":
        return {"pooled": Port("vector", "joint")}
    if kind == "projection":
        src = ins.get("input")
        form = src.form if src is not None and src.form in ("sequence", "vector") else "sequence"
        return {"out": Port(form, src.modality if src is not None else "joint")}
    if kind == "itm":
        return {"logits": Port("vector", "joint", 2)}
    if kind == "mlm":
        return {"logits": Port("sequence", "text")}
    raise KeyError(kind)


DEFAULT_PORT = {
    "hf_text": "seq", "hf_vision": "seq", "timm_vision": "seq", "cls_pool": "pooled",
    "projection": "out", "itm": "logits", "mlm": "logits",
}


def input_wants(kind: str) -> dict[str, Want]:
    """Ports a kind reads. Port names are the spec fields that hold the reference."""
    seq = ("sequence",)
    if kind == "hf_text":
        return {"input": Want(("tokens",), "text")}
    if kind in ("hf_vision", "timm_vision"):
        return {"input": Want(("pixels",), "image")}
    if kind == "co_attention":
        return {"inputs.text": Want(seq, "text"), "inputs.image": Want(seq, "image")}
    if kind == "cls_pool":
        return {"inputs.0": Want(seq), "inputs.1": Want(seq)}
    if kind == "projection":
        return {"input": Want(("sequence", "vector"))}
    if kind == "itm":
        return {"input": Want(("vector",))}
    if kind == "mlm":
        return {"input": Want(seq, "text"), "vocab_from": Want(("sequence",), "text")}
    raise KeyError(kind)


def input_port_for(modality: str) -> Port:
    return Port("tokens", "text") if modality == "text" else Port("pixels", "image")
