"""Losses and metrics of the downstream heads (pure functions of head outputs and targets)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


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
    """Retrieval recall both ways; similarity (texts, images), text_to_image[t] = the image text t describes."""
    truth = torch.tensor(text_to_image)  # (T,)
    ranks_t2i = (similarity.argsort(dim=1, descending=True) == truth[:, None]).float().argmax(1)  # (T,)
    out = {f"t2i_r{k}": float((ranks_t2i < k).float().mean()) for k in ks}
    best_i2t = []
    order = similarity.T.argsort(dim=1, descending=True)  # (I, T)
    for image in range(similarity.shape[1]):
        own = (truth == image).nonzero().flatten()
        positions = torch.isin(order[image], own).float().argmax()  # first matching text
        best_i2t.append(int(positions))
    ranks_i2t = torch.tensor(best_i2t)
    out.update({f"i2t_r{k}": float((ranks_i2t < k).float().mean()) for k in ks})
    return out
