"""Losses and metrics of the downstream heads (pure functions of head outputs and targets)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def itc_logits(out: dict) -> torch.Tensor:
    """An itc head's similarities, text rows against image columns: (B_text, B_image)."""
    return out["scale"].float() * out["text"].float() @ out["image"].float().T


def itc_loss(logits: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE: text i matches image i; logits (B_text, B_image)."""
    target = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits.float(), target) + F.cross_entropy(logits.float().T, target)) / 2


def classify_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy for classify, pair_classify and ref (padded candidates already score -inf-like)."""
    return F.cross_entropy(logits.float(), labels)


def vqa_loss(logits: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy against soft answer scores, summed over answers as ViLT and METER do."""
    return F.binary_cross_entropy_with_logits(logits.float(), scores, reduction="sum") / logits.shape[0]


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, int]:
    """(number right, number of examples)."""
    return float((logits.argmax(-1) == labels).sum()), labels.numel()


def vqa_score(logits: torch.Tensor, scores: torch.Tensor) -> tuple[float, int]:
    """VQA score: the soft score of the predicted answer, summed over questions."""
    picked = scores.gather(1, logits.argmax(-1, keepdim=True)).squeeze(1)  # (B,)
    return float(picked.sum()), scores.shape[0]


def recall_at_k(similarity: torch.Tensor, text_to_image: list[int], ks=(1, 5, 10)) -> dict[str, float]:
    """Retrieval recall both ways; similarity (texts, images), text_to_image[t] = the image text t describes.

    Ranks are counted, not sorted (one pass over T x I, no T x I sort): a text's rank is how many images score
    above its own; an image's, how many texts score above the best of its own texts (an image no text
    describes is a miss). A tie counts for the truth."""
    t_count, i_count = similarity.shape
    truth = torch.tensor(text_to_image, device=similarity.device)  # (T,)
    ranks_t2i = (similarity > similarity.gather(1, truth[:, None])).sum(1)  # (T,)
    owned = torch.zeros(t_count, i_count, dtype=torch.bool, device=similarity.device)
    owned[torch.arange(t_count, device=similarity.device), truth] = True  # (T, I): text t describes image i
    best_own = similarity.masked_fill(~owned, float("-inf")).amax(0)  # (I,)
    ranks_i2t = torch.where(owned.any(0), (similarity > best_own[None, :]).sum(0), t_count)  # (I,)
    out = {f"t2i_r{k}": float((ranks_t2i < k).float().mean()) for k in ks}
    out.update({f"i2t_r{k}": float((ranks_i2t < k).float().mean()) for k in ks})
    return out


class _GatherWithGrad(torch.autograd.Function):
    """All ranks' rows of a (B, D) tensor, (W * B, D); the gradient of each rank's rows is the sum of what
    every rank's loss gives them (an all-reduce, which gloo has; its reduce-scatter is not everywhere)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        ctx.rows = x.shape[0]
        return torch.cat(parts)  # (W * B, D)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        start = dist.get_rank() * ctx.rows
        return grad[start:start + ctx.rows]


def contrastive_loss(out: dict, keep: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric InfoNCE of an itc head's features against the whole global batch.

    With several ranks, features are gathered from every rank with their gradients (the local-loss /
    gather-with-grad approach): each rank contrasts its own rows against all ranks' rows, and its loss is
    weighted by its share of the rows, so the ranks' average (what data parallelism takes) is the loss one
    rank would compute over the whole batch. `keep` (B,) marks the rows that take part (captions: the
    matching pairs; a negative pair's image is no positive for its text).
    """
    from .ranks import group_active, rank, world

    t, i = out["text"].float(), out["image"].float()  # (B, dim) each
    keep = torch.ones(t.shape[0], dtype=torch.bool, device=t.device) if keep is None else keep.bool()
    if not group_active():
        if not keep.any():  # a batch of negatives only: nothing to contrast (a mean over no rows is NaN)
            return (t.sum() + i.sum() + out["scale"].float().sum()) * 0.0
        return itc_loss(out["scale"].float() * t[keep] @ i[keep].T)
    import torch.distributed as dist

    all_t, all_i = _GatherWithGrad.apply(t), _GatherWithGrad.apply(i)  # (W * B, dim)
    flags = keep.to(torch.uint8)  # NCCL has no bool
    kept = [torch.empty_like(flags) for _ in range(world())]
    dist.all_gather(kept, flags)
    all_keep = torch.cat(kept).bool()  # (W * B,)
    before = int(all_keep[: rank() * keep.shape[0]].sum())  # kept rows of the ranks before this one
    mine, total = int(keep.sum()), int(all_keep.sum())
    if mine == 0:  # nothing of ours to contrast: every input stays in the graph, so that this rank's backward
        # joins the others' all-reduces and gives the temperature a zero gradient, not none (ZeRO reduces
        # gradient buckets of the same size on every rank)
        return (all_t.sum() + all_i.sum() + out["scale"].float().sum()) * 0.0
    scale = out["scale"].float()
    target = torch.arange(before, before + mine, device=t.device)
    t2i = F.cross_entropy(scale * t[keep] @ all_i[all_keep].T, target)  # (mine, total)
    i2t = F.cross_entropy(scale * i[keep] @ all_t[all_keep].T, target)
    return (t2i + i2t) / 2 * (mine * world() / total)
