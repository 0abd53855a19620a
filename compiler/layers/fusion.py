"""Fusion of a text and an image stream."""

from __future__ import annotations

from torch import nn

from .attention import Attention, FeedForward, Residual


class StreamLayer(nn.Module):
    """One stream's half of a co-attention layer: attend to the other stream, then itself, then FFN."""

    def __init__(self, width: int, heads: int, mlp_hidden: int, dropout: float):
        super().__init__()
        self.cross = Attention(width, heads, dropout)
        self.cross_res = Residual(width, dropout)
        self.self_attn = Attention(width, heads, dropout)
        self.self_res = Residual(width, dropout)
        self.ffn = FeedForward(width, mlp_hidden, dropout)
        self.ffn_norm = nn.LayerNorm(width, eps=1e-12)

    def forward(self, x, x_mask, other, other_mask):
        x = self.cross_res(x, self.cross(x, other, other_mask))  # (B, T, D)
        x = self.self_res(x, self.self_attn(x, x, x_mask))  # (B, T, D)
        return self.ffn_norm(x + self.ffn(x))  # (B, T, D)


class CoAttentionLayer(nn.Module):
    def __init__(self, width: int, heads: int, mlp_hidden: int, dropout: float):
        super().__init__()
        self.text = StreamLayer(width, heads, mlp_hidden, dropout)
        self.image = StreamLayer(width, heads, mlp_hidden, dropout)

    def forward(self, t, t_mask, i, i_mask):
        # Both directions read the other stream as it was before this layer (LXMERT).
        return self.text(t, t_mask, i, i_mask), self.image(i, i_mask, t, t_mask)


class CoAttention(nn.Module):
    """LXMERT-style co-attention over a text and an image stream.

    Each stream is projected to the fusion width when its width differs, and
    gets a learned modality-type embedding so the layers can tell them apart.
    """

    def __init__(self, text_width: int, image_width: int, width: int, layers: int, heads: int,
                 mlp_ratio: float, dropout: float):
        super().__init__()
        self.text_proj = nn.Linear(text_width, width) if text_width != width else nn.Identity()
        self.image_proj = nn.Linear(image_width, width) if image_width != width else nn.Identity()
        self.type_embed = nn.Embedding(2, width)
        hidden = int(width * mlp_ratio)
        self.layers = nn.ModuleList(CoAttentionLayer(width, heads, hidden, dropout) for _ in range(layers))
        self.width = width

    def layer_prefixes(self) -> list[str]:
        return [f"layers.{i}." for i in range(len(self.layers))]

    def embedding_prefixes(self) -> list[str]:
        return ["text_proj.", "image_proj.", "type_embed."]

    def forward(self, text: tuple, image: tuple) -> dict:
        (t, t_mask), (i, i_mask) = text, image
        t = self.text_proj(t) + self.type_embed.weight[0]  # (B, T_txt, D)
        i = self.image_proj(i) + self.type_embed.weight[1]  # (B, T_img, D)
        for layer in self.layers:
            t, i = layer(t, t_mask, i, i_mask)
        return {"text": (t, t_mask), "image": (i, i_mask)}

