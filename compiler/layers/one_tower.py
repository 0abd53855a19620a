"""A single-stream encoder over text tokens and image patches together (ViLT-style).

A backbone (a transformers text or vision encoder, or a timm vision transformer) runs the joint sequence through
its layers. With its own embeddings it embeds its own modality and the other modality gets new embeddings of its
width; without them (`embeddings: new`, the Renaissance platform's one tower) both modalities get new embeddings
at the backbone's embedding width, each projected to the hidden width where the two differ.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .adapter import Adapter
from .encoders import layer_stack
from .recompute import run_layer


def _count(*modules: nn.Module | nn.Parameter | None) -> int:
    total = 0
    for m in modules:
        if isinstance(m, nn.Parameter):
            total += m.numel()
        elif m is not None:
            total += sum(p.numel() for p in m.parameters())
    return total


class PatchEmbed(nn.Module):
    """Image -> (B, [1 +] N, D) patch tokens: a Conv2d per patch, an optional [CLS] token, learned positions.

    The positions are for a grid of `position_size // patch` squared; another grid gets them resampled bicubically
    (the [CLS] position as it is), with the scale the Renaissance platform (and DINO) uses: (grid + 0.1) / theirs.
    `init="torch"` keeps what the platform gets: [CLS] and positions from torch.randn, the Conv2d at PyTorch's
    default (`keeps_init` tells graphspec's `param_init` to leave it)."""

    cls: nn.Parameter | None
    pos: nn.Parameter

    def __init__(self, channels: int, patch: int, position_size: int, width: int, cls: bool = False,
                 dropout: float = 0.0, init: str = "bert"):
        super().__init__()
        self.proj = nn.Conv2d(channels, width, kernel_size=patch, stride=patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, width)) if cls else None
        self.grid = position_size // patch
        self.pos = nn.Parameter(torch.zeros(1, self.grid ** 2 + int(cls), width))
        self.drop = nn.Dropout(dropout)
        for p in (self.cls, self.pos):
            if p is None:
                continue
            if init == "torch":
                nn.init.normal_(p)  # torch.randn's N(0, 1)
            else:
                nn.init.trunc_normal_(p, std=0.02)
        if init == "torch":
            setattr(self.proj, "keeps_init", True)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.proj(pixels)  # (B, D, h, w)
        h, w = x.shape[-2:]
        x = x.flatten(2).transpose(1, 2)  # (B, N, D)
        if self.cls is not None:
            x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1)  # (B, 1 + N, D)
        return self.drop(x + (self.pos if (h, w) == (self.grid, self.grid) else self.resampled(h, w)))

    def resampled(self, h: int, w: int) -> torch.Tensor:
        """The positions for an h x w grid: (1, [1 +] h w, D)."""
        first = int(self.cls is not None)
        grid = self.pos[:, first:].reshape(1, self.grid, self.grid, -1).permute(0, 3, 1, 2)  # (1, D, g, g)
        grid = nn.functional.interpolate(grid, scale_factor=((h + 0.1) / self.grid, (w + 0.1) / self.grid),
                                         mode="bicubic", align_corners=False)  # (1, D, h, w)
        return torch.cat([self.pos[:, :first], grid.permute(0, 2, 3, 1).reshape(1, h * w, -1)], dim=1)


class TokenEmbed(nn.Module):
    """Token ids -> (B, T, D): token + learned position embeddings, LayerNorm, dropout.

    `init="torch"`: the token table has a padding row (id 0) that gets no gradient, drawn from N(0, 0.02) like the
    other rows, as the Renaissance platform's `init_weights` leaves it; `param_init` would zero it."""

    def __init__(self, vocab_size: int, max_positions: int, width: int, dropout: float = 0.0, init: str = "bert"):
        super().__init__()
        self.tokens = nn.Embedding(vocab_size, width, padding_idx=0 if init == "torch" else None)
        self.pos = nn.Embedding(max_positions, width)
        setattr(self.pos, "rows_resize", True)  # a checkpoint with another text length gives its first rows (init_from)
        self.norm = nn.LayerNorm(width, eps=1e-12)
        self.drop = nn.Dropout(dropout)
        if init == "torch":
            nn.init.normal_(self.tokens.weight, std=0.02)
            setattr(self.tokens, "keeps_init", True)
        else:
            nn.init.trunc_normal_(self.tokens.weight, std=0.02)
        nn.init.trunc_normal_(self.pos.weight, std=0.02)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(ids.shape[1], device=ids.device)
        return self.drop(self.norm(self.tokens(ids) + self.pos(positions)))  # (B, T, D)


class HFBackbone(nn.Module):
    """A transformers encoder (text: BERT, ELECTRA...; vision: ViT, DeiT...) split in two: its embeddings, and its
    layers under a joint mask (or none). Without its own embeddings they are removed, so nothing unused is counted
    or trained; without `final_norm` a vision model's LayerNorm after the layers is removed too."""

    model: Any  # a transformers PreTrainedModel
    width: int

    def __init__(self, model: nn.Module, vision: bool, own_embeddings: bool = True, final_norm: bool = True,
                 interpolate: bool = False):
        super().__init__()
        hf: Any = model
        self.model, self.vision, self.interpolate = hf, vision, interpolate
        self.width = hf.config.hidden_size
        self.stack = f"model.{layer_stack(hf, hf.config.num_hidden_layers)}"
        if not own_embeddings:
            hf.embeddings = None
            if getattr(hf, "embeddings_project", None) is not None:  # ELECTRA: E -> D
                hf.embeddings_project = None
        if not final_norm and getattr(hf, "layernorm", None) is not None:
            hf.layernorm = None

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        if self.vision:
            return self.model.embeddings(x, interpolate_pos_encoding=self.interpolate)  # (B, 1 + N, D)
        x = self.model.embeddings(input_ids=x)  # (B, T, E)
        project = getattr(self.model, "embeddings_project", None)  # ELECTRA: E -> D
        return project(x) if project is not None else x  # (B, T, D)

    def layers(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        from transformers.masking_utils import create_bidirectional_mask

        attn = None if mask is None else create_bidirectional_mask(config=self.model.config, inputs_embeds=x,
                                                                   attention_mask=mask)
        encoder = getattr(self.model, "encoder", None)
        if encoder is not None:
            x = encoder(x, attention_mask=attn).last_hidden_state  # (B, T, D)
        else:
            for layer in self.model.get_submodule(self.stack.removeprefix("model.")):
                x = layer(x, attn)  # (B, T, D)
        norm = getattr(self.model, "layernorm", None)
        return norm(x) if norm is not None else x

    def input_embeddings(self) -> nn.Embedding:
        return self.model.get_input_embeddings()

    def final_norm(self) -> nn.Module | None:
        return getattr(self.model, "layernorm", None)


class TimmViTBackbone(nn.Module):
    """A timm vision transformer split in two: patch + class-token + position embedding, and its blocks.

    It runs the blocks itself (timm's forward takes no mask), so `checkpoint` is done here, per block, not by
    timm's `set_grad_checkpointing`."""

    model: Any  # a timm VisionTransformer
    width: int

    def __init__(self, model: nn.Module, checkpoint: bool = False, own_embeddings: bool = True,
                 final_norm: bool = True):
        super().__init__()
        vit: Any = model
        self.model = vit
        self.width = vit.num_features
        self.stack = "model.blocks"
        self.checkpoint = checkpoint
        if not own_embeddings:
            setattr(model, "patch_embed", None)
            for name in ("cls_token", "reg_token", "pos_embed"):
                if getattr(model, name, None) is not None:
                    setattr(model, name, None)
        if not final_norm:
            model.norm = nn.Identity()

    def final_norm(self) -> nn.Module | None:
        return self.model.norm

    def embed(self, pixels: torch.Tensor) -> torch.Tensor:
        m = self.model
        # timm's own position-embedding step (class/register tokens and positions, its conventions).
        return m.norm_pre(m.patch_drop(m._pos_embed(m.patch_embed(pixels))))  # (B, 1 + N, D)

    def layers(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        additive = None
        if mask is not None:
            additive = torch.zeros(mask.shape, dtype=x.dtype, device=x.device).masked_fill(
                ~mask, torch.finfo(x.dtype).min)[:, None, None, :]  # (B, 1, 1, T): timm adds it to the scores
        for block in self.model.blocks:
            x = run_layer(block, x, attn_mask=additive, recompute=self.checkpoint and self.training)  # (B, T, D)
        return self.model.norm(x)  # (B, T, D)


class OneTower(Adapter):
    """[text tokens; image tokens] + modality-type embeddings through one backbone's layers.

    `text_embed` / `image_embed` are the new embeddings (None: the backbone embeds that modality itself). The
    type embedding has their width and is added before the projections to the hidden width, if any. With
    `mask_padding` the joint attention masks text padding (ViLT does not, so padding leaks into real tokens
    there). Outputs: `text` and `image` (the two parts) and `seq` (all), each with the real tokens' mask.
    """

    needs_fake_shapes = True  # a transformers backbone inspects the mask
    backbone: Any  # HFBackbone or TimmViTBackbone
    text_embed: Any  # TokenEmbed or None
    image_embed: Any  # PatchEmbed or None
    text_project: nn.Linear | None
    image_project: nn.Linear | None

    def __init__(self, backbone: Any, text_embed: nn.Module | None, image_embed: nn.Module | None,
                 embed_width: int, mask_padding: bool, vocab_size: int, max_positions: int | None,
                 patch_size: int | None):
        super().__init__()
        self.backbone, self.text_embed, self.image_embed = backbone, text_embed, image_embed
        self.width = backbone.width
        self.type_embed = nn.Embedding(2, embed_width)
        project = embed_width != self.width
        self.text_project = nn.Linear(embed_width, self.width) if project else None
        self.image_project = nn.Linear(embed_width, self.width) if project else None
        self.mask_padding = mask_padding
        self.vocab_size, self.max_positions, self.patch_size = vocab_size, max_positions, patch_size
        self.stack = "backbone." + backbone.stack

    def embedding_prefixes(self) -> list[str]:
        top = str(self.stack).split(".")[2]
        before = []
        for name, _ in self.backbone.model.named_children():
            if name == top:
                break
            before.append(f"backbone.model.{name}.")
        own = [f"backbone.model.{n}" for n, _ in self.backbone.model.named_parameters(recurse=False)]
        new = [f"{n}." for n in ("text_embed", "image_embed", "type_embed", "text_project", "image_project")
               if getattr(self, n) is not None]
        return before + own + new

    def input_embeddings(self) -> nn.Embedding:
        return self.backbone.input_embeddings() if self.text_embed is None else self.text_embed.tokens

    def parts(self) -> dict[str, int]:
        """Parameters by part, as docs/paper.md's Experiment 2 table counts them; they sum to the node's total."""
        stack, norm = self.get_submodule(str(self.stack)), self.backbone.final_norm()
        inside = {id(p) for p in stack.parameters()} | {id(p) for p in (norm.parameters() if norm else ())}
        rest = [p for p in self.backbone.parameters() if id(p) not in inside]  # what embeds its own modality
        out = {"layers": _count(stack), "final norm": _count(norm),
               "backbone embeddings": sum(p.numel() for p in rest)}
        if self.text_embed is not None:
            out["text embeddings"] = _count(self.text_embed)
        if self.image_embed is not None:
            out["patch conv"] = _count(self.image_embed.proj)
            out["[CLS] + positions"] = _count(self.image_embed.cls, self.image_embed.pos)
        out["type + projections"] = _count(self.type_embed, self.text_project, self.image_project)
        return out

    def forward(self, ids: torch.Tensor, mask: torch.Tensor, pixels: torch.Tensor) -> dict:
        text = self.backbone.embed(ids) if self.text_embed is None else self.text_embed(ids)  # (B, T, E)
        image = self.backbone.embed(pixels) if self.image_embed is None else self.image_embed(pixels)  # (B, N, E)
        text = text + self.type_embed.weight[0]
        image = image + self.type_embed.weight[1]
        if self.text_project is not None and self.image_project is not None:
            text, image = self.text_project(text), self.image_project(image)  # (B, T | N, D)
        t = text.shape[1]
        image_mask = torch.ones(image.shape[:2], dtype=torch.bool, device=image.device)  # (B, N)
        joint_mask = torch.cat([mask.bool(), image_mask], dim=1)  # (B, T + N)
        joint = self.backbone.layers(torch.cat([text, image], dim=1),
                                     joint_mask if self.mask_padding else None)  # (B, T + N, D)
        return {"text": (joint[:, :t], joint_mask[:, :t]), "image": (joint[:, t:], image_mask),
                "seq": (joint, joint_mask)}
