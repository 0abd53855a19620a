"""Attention to a stream that is never padded takes no mask (SDPA's flash kernels on a GPU take none): the same
outputs as with a mask of all True, on graphspec's CPU kernels and on torch's SDPA."""

from __future__ import annotations

import pytest
import torch

from graphspec.compiler.layers.attention import use_plain_kernels
from graphspec.compiler.layers.fusion import TwoStreamFusion


@pytest.mark.parametrize("kernels", ["fast", "plain"])
@pytest.mark.parametrize("share_cross", [False, True])
def test_an_unpadded_image_stream_is_attended_without_a_mask(kernels, share_cross):
    torch.manual_seed(0)
    fusion = TwoStreamFusion(24, 20, 16, layers=2, heads=2, mlp_ratio=2, dropout=0.0, cross_first=True,
                             share_cross=share_cross).eval()
    if kernels == "plain":
        use_plain_kernels(fusion)
    t, i = torch.randn(3, 5, 24), torch.randn(3, 7, 20)
    t_mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0]])  # padded text
    i_mask = torch.ones(3, 7, dtype=torch.long)
    seen: list = []
    hooks = [m.register_forward_pre_hook(lambda m, args: seen.append(args[2])) for m in fusion.modules()
             if type(m).__name__ == "Attention"]
    without = fusion((t, t_mask), (i, i_mask))
    assert any(mask is None for mask in seen) and any(mask is not None for mask in seen)  # text stays masked
    fusion.image_padded = True
    seen.clear()
    masked = fusion((t, t_mask), (i, i_mask))
    assert all(mask is not None for mask in seen)
    for h in hooks:
        h.remove()
    for stream in ("text", "image"):
        assert torch.allclose(without[stream][0], masked[stream][0], atol=1e-6), stream
