"""A single-stream encoder over text tokens and image patches together (ViLT-style).

The backbone (a transformers text encoder or a timm vision transformer) embeds
its own modality and runs the joint sequence through its layers; the other
modality gets new embeddings of the backbone's width.
"""

from __future__ import annotations

import torch
from torch import nn

from .adapter import Adapter
from .encoders import layer_stack
from .recompute import run_layer


class PatchEmbed(nn.Module):
    """Image -> (B, N, D) patch tokens with learned positions (for a text backbone, which has none)."""

    def __init__(self, channels: int, patch: int, image_size: int, width: int):
        super().__init__()
        self.proj = nn.Conv2d(channels, width, kernel_size=patch, stride=patch)
        self.pos = nn.Parameter(torch.zeros(1, (image_size // patch) ** 2, width))
        nn.init.trunc_normal_(self.pos, std=0.02)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.proj(pixels).flatten(2).transpose(1, 2) + self.pos  # (B, N, D)


class TokenEmbed(nn.Module):
    """Token ids -> (B, T, D) with learned positions and LayerNorm (for a vision backbone, which has none)."""

    def __init__(self, vocab_size: int, max_positions: int, width: int):
        super().__init__()
        self.tokens = nn.Embedding(vocab_size, width)
        self.pos = nn.Embedding(max_positions, width)
        self.norm = nn.LayerNorm(width, eps=1e-12)
        nn.init.trunc_normal_(self.tokens.weight, std=0.02)
        nn.init.trunc_normal_(self.pos.weight, std=0.02)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(ids.shape[1], device=ids.device)
        return self.norm(self.tokens(ids) + self.pos(positions))  # (B, T, D)


class HFTextBackbone(nn.Module):
    """A transformers text encoder split in two: its embeddings, and its layers under a joint mask."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.width = model.config.hidden_size
        self.stack = "model." + layer_stack(model, model.config.num_hidden_layers)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.model.embeddings(input_ids=ids)  # (B, T, E)
        project = getattr(self.model, "embeddings_project", None)  # ELECTRA: E -> D
        return project(x) if project is not None else x  # (B, T, D)

    def layers(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        from transformers.masking_utils import create_bidirectional_mask

        attn = create_bidirectional_mask(config=self.model.config, inputs_embeds=x, attention_mask=mask)
        return self.model.encoder(x, attention_mask=attn).last_hidden_state  # (B, T, D)

    def input_embeddings(self) -> nn.Embedding:
        return self.model.get_input_embeddings()


class TimmViTBackbone(nn.Module):
    """A timm vision transformer split in two: patch + class-token + position embedding, and its blocks.

    It runs the blocks itself (timm's forward takes no mask), so `checkpoint` is done here, per block, not by
    timm's `set_grad_checkpointing`."""

    def __init__(self, model: nn.Module, checkpoint: bool = False):
        super().__init__()
        self.model = model
        self.width = model.num_features
        self.stack = "model.blocks"
        self.checkpoint = checkpoint

    def embed(self, pixels: torch.Tensor) -> torch.Tensor:
        m = self.model
        # timm's own position-embedding step (class/register tokens and positions, its conventions).
        return m.norm_pre(m.patch_drop(m._pos_embed(m.patch_embed(pixels))))  # (B, 1 + N, D)

    def layers(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        additive = torch.zeros(mask.shape, dtype=x.dtype, device=x.device).masked_fill(~mask, torch.finfo(x.dtype).min)
        additive = additive[:, None, None, :]  # (B, 1, 1, T): timm adds it to the attention scores
        for block in self.model.blocks:
            x = run_layer(block, x, attn_mask=additive, recompute=self.checkpoint and self.training)  # (B, T, D)
        return self.model.norm(x)  # (B, T, D)


class OneTower(Adapter):
    """[text tokens; image tokens] + modality-type embeddings through one backbone's layers.

    The joint mask masks text padding (ViLT does not, so padding leaks into real
    tokens there). Outputs: `text` and `image` (the two parts) and `seq` (all).
    """

    needs_fake_shapes = True  # a transformers backbone inspects the mask

    def __init__(self, backbone: nn.Module, other: nn.Module, text_backbone: bool, vocab_size: int,
                 max_positions: int | None, patch_size: int | None):
        super().__init__()
        self.backbone, self.other, self.text_backbone = backbone, other, text_backbone
        self.width = backbone.width
        self.type_embed = nn.Embedding(2, self.width)
        self.vocab_size, self.max_positions, self.patch_size = vocab_size, max_positions, patch_size
        self.stack = "backbone." + backbone.stack

    def embedding_prefixes(self) -> list[str]:
        top = self.stack.split(".")[2]
        before = []
        for name, _ in self.backbone.model.named_children():
            if name == top:
                break
            before.append(f"backbone.model.{name}.")
        own = [f"backbone.model.{n}" for n, _ in self.backbone.model.named_parameters(recurse=False)]
        return before + own + ["other.", "type_embed."]

    def input_embeddings(self) -> nn.Embedding:
        return self.backbone.input_embeddings() if self.text_backbone else self.other.tokens

    def forward(self, ids: torch.Tensor, mask: torch.Tensor, pixels: torch.Tensor) -> dict:
        text = self.backbone.embed(ids) if self.text_backbone else self.other(ids)  # (B, T, D)
        image = self.other(pixels) if self.text_backbone else self.backbone.embed(pixels)  # (B, N, D)
        text = text + self.type_embed.weight[0]
        image = image + self.type_embed.weight[1]
        t = text.shape[1]
        image_mask = torch.ones(image.shape[:2], dtype=torch.bool, device=image.device)  # (B, N)
        joint_mask = torch.cat([mask.bool(), image_mask], dim=1)  # (B, T + N)
        joint = self.backbone.layers(torch.cat([text, image], dim=1), joint_mask)  # (B, T + N, D)
        return {"text": (joint[:, :t], joint_mask[:, :t]), "image": (joint[:, t:], image_mask),
                "seq": (joint, joint_mask)}
