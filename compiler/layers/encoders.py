"""Adapters: a transformers or timm backbone behind one interface.

An adapter's forward returns `{"seq": (hidden (B, T, D), mask (B, T))}` plus
`layer_N` entries for the intermediate layers the graph reads. It also names
its layer stack and embeddings, so freeze annotations can resolve
`layers: "0:6"` and `embeddings: true` to parameter names, and tells the
compiler its widths, patch size and vocabulary.
"""

from __future__ import annotations

import torch
from torch import nn

from .adapter import Adapter


def layer_stack(model: nn.Module, count: int | None = None) -> str | None:
    """Dotted name of the backbone's stack of transformer blocks (or CNN stages)."""
    for name, mod in model.named_modules():
        if isinstance(mod, (nn.ModuleList, nn.Sequential)) and len(mod) > 0 and name:
            leaf = name.rsplit(".", 1)[-1]
            if count is not None and len(mod) == count:
                return name
            if count is None and leaf in ("blocks", "stages", "layers", "layer"):
                return name
    return None


def _ones_mask(hidden: torch.Tensor) -> torch.Tensor:
    return torch.ones(hidden.shape[:2], dtype=torch.bool, device=hidden.device)  # (B, T)


class _Backbone(Adapter):
    """A library backbone: embedding prefixes (relative to the adapter) and the requested layer outputs."""

    layers: tuple[int, ...] = ()  # 1-based intermediate layers to return as `layer_N`

    def embedding_prefixes(self) -> list[str]:
        """What runs before the layer stack: top-level parameters and children registered before it."""
        top = self.stack.split(".")[1] if self.stack and self.stack.count(".") >= 1 else None
        out = [f"model.{n}" for n, _ in self.model.named_parameters(recurse=False)]
        for name, _ in self.model.named_children():
            if name == top:
                break
            out.append(f"model.{name}.")
        return out

    def port_widths(self) -> dict[str, int]:
        """Width of each output port: a CNN's stages differ from its last feature map."""
        widths = {"seq": self.width}
        for n in self.layers:
            widths[f"layer_{n}"] = _out_width(self.get_submodule(self.stack)[n - 1]) or self.width
        return widths


def _out_width(block: nn.Module) -> int | None:
    """The output width of a block: that of its last submodule that declares one."""
    for mod in reversed(list(block.modules())):
        for attr in ("out_channels", "out_features", "num_features", "normalized_shape"):
            value = getattr(mod, attr, None)
            if isinstance(value, int):
                return value
            if isinstance(value, tuple) and value:
                return value[-1]
    return None


class HFTextEncoder(_Backbone):
    """A transformers text encoder (BERT, ELECTRA, RoBERTa, ...)."""

    needs_fake_shapes = True  # transformers checks `mask.all()` to choose its attention path

    def __init__(self, model: nn.Module, layers: tuple[int, ...] = ()):
        super().__init__()
        self.model = model
        self.width = model.config.hidden_size
        self.vocab_size = model.config.vocab_size
        self.max_positions = getattr(model.config, "max_position_embeddings", None)
        stack = layer_stack(model, model.config.num_hidden_layers)
        self.stack = f"model.{stack}" if stack else None
        self.layers = tuple(layers)

    def input_embeddings(self) -> nn.Embedding:
        return self.model.get_input_embeddings()

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> dict:
        out = self.model(input_ids=ids, attention_mask=mask, output_hidden_states=bool(self.layers))
        seq_mask = mask.bool()
        ports = {"seq": (out.last_hidden_state, seq_mask)}  # (B, T, D)
        for n in self.layers:
            ports[f"layer_{n}"] = (out.hidden_states[n], seq_mask)  # hidden_states[0] is the embeddings
        return ports


class HFVisionEncoder(_Backbone):
    """A transformers vision encoder (ViT, DeiT, ...): its patch tokens, CLS first."""

    def __init__(self, model: nn.Module, interpolate_pos_encoding: bool = False, layers: tuple[int, ...] = ()):
        super().__init__()
        self.model = model
        self.width = model.config.hidden_size
        self.patch_size = getattr(model.config, "patch_size", None)
        self.interpolate = interpolate_pos_encoding
        stack = layer_stack(model, model.config.num_hidden_layers)
        self.stack = f"model.{stack}" if stack else None
        self.layers = tuple(layers)

    def forward(self, pixels: torch.Tensor) -> dict:
        kwargs = {"interpolate_pos_encoding": True} if self.interpolate else {}
        out = self.model(pixel_values=pixels, output_hidden_states=bool(self.layers), **kwargs)
        hidden = out.last_hidden_state  # (B, T, D)
        ports = {"seq": (hidden, _ones_mask(hidden))}
        for n in self.layers:
            ports[f"layer_{n}"] = (out.hidden_states[n], _ones_mask(hidden))
        return ports


def _tokens(feats: torch.Tensor) -> torch.Tensor:
    """A CNN's (B, C, H, W) feature map as (B, H*W, C) tokens; sequences pass through."""
    return feats.flatten(2).transpose(1, 2) if feats.dim() == 4 else feats


class TimmVisionEncoder(_Backbone):
    """A timm model: a ViT's token sequence, or a CNN's last feature map flattened to tokens."""

    def __init__(self, model: nn.Module, layers: tuple[int, ...] = ()):
        super().__init__()
        self.model = model
        self.width = model.num_features
        patch = getattr(getattr(model, "patch_embed", None), "patch_size", None)
        self.patch_size = patch[0] if isinstance(patch, (tuple, list)) else patch
        stack = layer_stack(model)
        self.stack = f"model.{stack}" if stack else None
        self.layers = tuple(layers)

    def forward(self, pixels: torch.Tensor) -> dict:
        captured: dict[int, torch.Tensor] = {}
        hooks = [self.get_submodule(self.stack)[n - 1].register_forward_hook(
            lambda m, i, o, n=n: captured.__setitem__(n, o)) for n in self.layers]
        try:
            feats = _tokens(self.model.forward_features(pixels))  # (B, T, D)
        finally:
            for h in hooks:
                h.remove()
        ports = {"seq": (feats, _ones_mask(feats))}
        for n in self.layers:
            layer = _tokens(captured[n])
            ports[f"layer_{n}"] = (layer, _ones_mask(layer))
        return ports
