"""Fusion of a text and an image stream: co-attention (LXMERT), cross-attention (METER), merged attention."""

from __future__ import annotations

import torch
from torch import nn

from .adapter import Adapter
from .attention import Attention, FeedForward, Residual
from .recompute import run_layer


class StreamLayer(nn.Module):
    """One stream's half of a fusion layer: attention to the other stream and to itself, then an FFN.

    `cross_first` gives LXMERT's order (cross, self); otherwise METER's (self, cross).
    `cross=False` leaves out the cross-attention (a stream that only attends to itself).
    """

    def __init__(self, width: int, heads: int, mlp_hidden: int, dropout: float, cross_first: bool, cross: bool = True):
        super().__init__()
        self.cross_first = cross_first
        self.cross = Attention(width, heads, dropout) if cross else None
        self.cross_res = Residual(width, dropout) if cross else None
        self.self_attn = Attention(width, heads, dropout)
        self.self_res = Residual(width, dropout)
        self.ffn = FeedForward(width, mlp_hidden, dropout)
        self.ffn_norm = nn.LayerNorm(width, eps=1e-12)

    def forward(self, x, x_mask, other, other_mask):
        if self.cross is not None and self.cross_first:
            x = self.cross_res(x, self.cross(x, other, other_mask))  # (B, T, D)
        x = self.self_res(x, self.self_attn(x, x, x_mask))  # (B, T, D)
        if self.cross is not None and not self.cross_first:
            x = self.cross_res(x, self.cross(x, other, other_mask))  # (B, T, D)
        return self.ffn_norm(x + self.ffn(x))  # (B, T, D)


class FusionLayer(nn.Module):
    """Both streams' halves of a layer. With `share_cross` (co-attention only), one cross-attention block and
    its residual norm serve both directions, then each stream's self-attention and FFN: transformers'
    `LxmertXLayer`, whose `visual_attention` both streams call. `i_mask` None: the image stream has no padding
    (attention to it takes no mask)."""

    def __init__(self, width: int, heads: int, mlp_hidden: int, dropout: float, cross_first: bool,
                 text: bool = True, image: bool = True, share_cross: bool = False):
        super().__init__()
        own = not share_cross
        self.cross = Attention(width, heads, dropout) if share_cross else None
        self.cross_res = Residual(width, dropout) if share_cross else None
        self.text = StreamLayer(width, heads, mlp_hidden, dropout, cross_first, cross=own) if text else None
        self.image = StreamLayer(width, heads, mlp_hidden, dropout, cross_first, cross=own) if image else None

    def forward(self, t, t_mask, i, i_mask):
        # Both directions read the other stream as it was before this layer.
        if self.cross is not None:
            t, i = self.cross_res(t, self.cross(t, i, i_mask)), self.cross_res(i, self.cross(i, t, t_mask))
        t_new = self.text(t, t_mask, i, i_mask) if self.text is not None else t
        i_new = self.image(i, i_mask, t, t_mask) if self.image is not None else i
        return t_new, i_new


class _Streams(Adapter):
    """Shared front of every fusion kind: project each stream to the width, add a modality-type embedding."""

    def __init__(self, text_width: int, image_width: int, width: int, always_project: bool = False):
        super().__init__()
        self.text_proj = nn.Linear(text_width, width) if always_project or text_width != width else nn.Identity()
        self.image_proj = nn.Linear(image_width, width) if always_project or image_width != width else nn.Identity()
        self.type_embed = nn.Embedding(2, width)
        self.width = width

    stack = "layers"

    def embedding_prefixes(self) -> list[str]:
        return ["text_proj.", "image_proj.", "type_embed."]

    def embed(self, text: tuple, image: tuple):
        (t, t_mask), (i, i_mask) = text, image
        t = self.text_proj(t) + self.type_embed.weight[0]  # (B, T_txt, D)
        i = self.image_proj(i) + self.type_embed.weight[1]  # (B, T_img, D)
        return t, t_mask, i, i_mask


class TwoStreamFusion(_Streams):
    """Co-attention (LXMERT: cross then self) or cross-attention (METER: self then cross), per stream.

    The image stream comes from a vision tower, which gives every patch or feature-map token: attention to it
    needs no mask, so none is passed (SDPA's flash kernels on a GPU take none). `image_padded` is for a
    stream that may be padded. `checkpoint`: each layer's activations are recomputed in the backward pass."""

    def __init__(self, text_width: int, image_width: int, width: int, layers: int, heads: int, mlp_ratio: float,
                 dropout: float, cross_first: bool, text: bool = True, image: bool = True,
                 share_cross: bool = False, always_project: bool = False, image_padded: bool = False,
                 checkpoint: bool = False):
        super().__init__(text_width, image_width, width, always_project)
        self.image_padded = image_padded
        self.checkpoint = checkpoint
        hidden = int(width * mlp_ratio)
        self.layers = nn.ModuleList(FusionLayer(width, heads, hidden, dropout, cross_first, text, image, share_cross)
                                    for _ in range(layers))

    def forward(self, text: tuple, image: tuple) -> dict:
        t, t_mask, i, i_mask = self.embed(text, image)
        attend_i = i_mask if self.image_padded else None
        for layer in self.layers:
            t, i = run_layer(layer, t, t_mask, i, attend_i, recompute=self.checkpoint and self.training)
        return {"text": (t, t_mask), "image": (i, i_mask)}


class EncoderLayer(nn.Module):
    """A post-norm transformer encoder layer (BERT's)."""

    def __init__(self, width: int, heads: int, mlp_hidden: int, dropout: float):
        super().__init__()
        self.attn = Attention(width, heads, dropout)
        self.attn_res = Residual(width, dropout)
        self.ffn = FeedForward(width, mlp_hidden, dropout)
        self.ffn_norm = nn.LayerNorm(width, eps=1e-12)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.attn_res(x, self.attn(x, x, mask))  # (B, T, D)
        return self.ffn_norm(x + self.ffn(x))  # (B, T, D)


class MergedAttention(_Streams):
    """Merged attention: [text; image] through self-attention layers; outputs split back, and joint.
    `checkpoint`: each layer's activations are recomputed in the backward pass."""

    def __init__(self, text_width: int, image_width: int, width: int, layers: int, heads: int, mlp_ratio: float,
                 dropout: float, always_project: bool = False, checkpoint: bool = False):
        super().__init__(text_width, image_width, width, always_project)
        self.checkpoint = checkpoint
        self.layers = nn.ModuleList(EncoderLayer(width, heads, int(width * mlp_ratio), dropout) for _ in range(layers))

    def forward(self, text: tuple, image: tuple) -> dict:
        t, t_mask, i, i_mask = self.embed(text, image)
        n = t.shape[1]
        x, mask = torch.cat([t, i], dim=1), torch.cat([t_mask, i_mask], dim=1)  # (B, T_txt + T_img, D)
        for layer in self.layers:
            x = run_layer(layer, x, mask, recompute=self.checkpoint and self.training)  # (B, T_txt + T_img, D)
        return {"text": (x[:, :n], t_mask), "image": (x[:, n:], i_mask), "seq": (x, mask)}
