"""Adapters: a transformers or timm backbone behind one interface.

An adapter's forward returns `{"seq": (hidden (B, T, D), mask (B, T))}`; it
also names its layer stack and embeddings so freeze annotations can resolve
`layers: "0:6"` and `embeddings: true` to parameter names.
"""

from __future__ import annotations

import torch
from torch import nn


def _layer_stack(model: nn.Module, count: int | None = None) -> str | None:
    """Dotted name of the backbone's stack of transformer blocks (or CNN stages)."""
    for name, mod in model.named_modules():
        if isinstance(mod, (nn.ModuleList, nn.Sequential)) and len(mod) > 0:
            leaf = name.rsplit(".", 1)[-1]
            if count is not None and len(mod) == count and name:
                return name
            if count is None and leaf in ("blocks", "stages", "layers", "layer"):
                return name
    return None


class _Adapter(nn.Module):
    """Shared: layer prefixes and embedding prefixes, relative to the adapter."""

    stack: str | None = None

    def layer_prefixes(self) -> list[str]:
        if self.stack is None:
            return []
        stack = self.get_submodule(self.stack)
        return [f"{self.stack}.{i}." for i in range(len(stack))]

    def embedding_prefixes(self) -> list[str]:
        """What runs before the layer stack: top-level parameters and children registered before it."""
        top = self.stack.split(".")[1] if self.stack and self.stack.count(".") >= 1 else None
        out = [f"model.{n}" for n, _ in self.model.named_parameters(recurse=False)]
        for name, _ in self.model.named_children():
            if name == top:
                break
            out.append(f"model.{name}.")
        return out


class HFTextEncoder(_Adapter):
    """A transformers text encoder (BERT, ELECTRA, RoBERTa, ...)."""

    needs_fake_shapes = True  # transformers checks `mask.all()` to choose its attention path

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.width = model.config.hidden_size
        self.max_positions = getattr(model.config, "max_position_embeddings", None)
        stack = _layer_stack(model, model.config.num_hidden_layers)
        self.stack = f"model.{stack}" if stack else None

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> dict:
        hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state  # (B, T, D)
        return {"seq": (hidden, mask.bool())}


class HFVisionEncoder(_Adapter):
    """A transformers vision encoder (ViT, DeiT, ...): its patch tokens, CLS first."""

    def __init__(self, model: nn.Module, interpolate_pos_encoding: bool = False):
        super().__init__()
        self.model = model
        self.width = model.config.hidden_size
        self.interpolate = interpolate_pos_encoding
        stack = _layer_stack(model, model.config.num_hidden_layers)
        self.stack = f"model.{stack}" if stack else None

    def forward(self, pixels: torch.Tensor) -> dict:
        kwargs = {"interpolate_pos_encoding": True} if self.interpolate else {}
        hidden = self.model(pixel_values=pixels, **kwargs).last_hidden_state  # (B, T, D)
        mask = torch.ones(hidden.shape[:2], dtype=torch.bool, device=hidden.device)  # (B, T)
        return {"seq": (hidden, mask)}


class TimmVisionEncoder(_Adapter):
    """A timm model: a ViT's token sequence, or a CNN's last feature map flattened to tokens."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.width = model.num_features
        stack = _layer_stack(model)
        self.stack = f"model.{stack}" if stack else None

    def forward(self, pixels: torch.Tensor) -> dict:
        feats = self.model.forward_features(pixels)
        if feats.dim() == 4:  # CNN: (B, C, H, W) -> (B, H*W, C)
            feats = feats.flatten(2).transpose(1, 2)
        mask = torch.ones(feats.shape[:2], dtype=torch.bool, device=feats.device)  # (B, T)
        return {"seq": (feats, mask)}
