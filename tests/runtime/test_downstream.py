"""Fine-tuning on the built-in downstream tasks, from a pretraining checkpoint, and evaluating them."""

from __future__ import annotations

import json

import pytest

from graphspec.cli import main
from graphspec.runtime.train import run

TASKS = {
    "nlvr2": ({"kind": "pair_classify", "input": "pooled"}, "nlvr2_acc"),
    "snli_ve": ({"kind": "classify", "input": "pooled", "classes": 3}, "snli_ve_acc"),
    "vqa": ({"kind": "vqa", "input": "pooled", "answers": 15}, "vqa_score"),
    "refexp": ({"kind": "ref", "inputs": {"image": "fusion.image", "text": "pooled", "boxes": "regions"},
                "heads": 2}, "refexp_acc"),
    "retrieval": ({"kind": "itc", "inputs": {"text": "text_tower", "image": "vision_tower"}, "dim": 16},
                  "retrieval_t2i_r1"),
}


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A tiny captions run whose checkpoint the fine-tuning starts from."""
    from tests.conftest import finished_run

    return finished_run(tmp_path_factory.mktemp("pretrain"), "pretrain", samples=64, val_samples=16, steps=5,
                        batch_size=8, warmup=1)


@pytest.mark.parametrize("task", list(TASKS))
def test_finetune_and_eval(task, pretrained, compile_build, tmp_path, capsys):
    spec, checkpoint = pretrained
    spec = json.loads(json.dumps(spec))
    head, metric = TASKS[task]
    if task == "refexp":
        spec["inputs"]["regions"] = {"modality": "boxes", "max_candidates": 4}
    spec.update(init_from=str(checkpoint), heads={task: head}, objectives={task: {"kind": head["kind"]}},
                data={"train": {"task": task, "samples": 24}, "val": {"task": task, "split": "val", "samples": 8}})
    if task == "retrieval":  # the pretrained ITM head, kept to re-rank ITC's top k (ALBEF)
        spec["heads"]["itm"] = {"kind": "itm", "input": "pooled"}
        spec["objectives"][task]["rerank_k"] = 4
    spec["train"].update(steps=4, batch_size=4, val_every=4, log_every=2)
    build = compile_build(spec)
    assert build.ds_config and (build.dir / "summary.json").is_file()
    summary = run(build, tmp_path / "run", show_bar=False)
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "run")]) == 0
    metrics = json.loads(capsys.readouterr().out)  # evaluation recomputes exactly what training validated
    assert metric in summary["val"] and metrics[metric] == summary["val"][metric]
    assert metrics == {"checkpoint": str(tmp_path / "run" / "checkpoint"), "split": "val", **summary["val"]}
    assert not (build.dir / "tokenizer-text.json").exists()  # the pretraining vocabulary was reused
    if task == "retrieval":  # 8 scenes x 3 captions: 24 rows encoded, at most 4 x (24 + 8) pairs re-ranked
        assert summary["val"]["retrieval_encoded_rows"] == 24 and summary["val"]["retrieval_rerank_k"] == 4
        assert 0 < summary["val"]["retrieval_fusion_pairs"] <= 4 * 32 and "retrieval_itm_i2t_r10" in summary["val"]


def _retrieval_task(itm: bool, k: int = 6):
    """A retrieval task over 7 flat scenes x 3 captions, batches of 3 (padding is exercised)."""
    import numpy as np
    import torch

    from graphspec.runtime.tasks.base import Example
    from graphspec.runtime.tasks.retrieval import Retrieval
    from graphspec.language.schema import TASKS, Roles, Spec

    task = object.__new__(Retrieval)
    heads = {"itc": {"kind": "itc", "inputs": {"text": "t", "image": "t"}, "dim": 4},
             **({"itm": {"kind": "itm", "input": "t"}} if itm else {})}
    task.spec = Spec.model_validate({
        "name": "r", "inputs": {"text": {"modality": "text", "max_length": 4}, "image": {"modality": "image"}},
        "nodes": {"t": {"kind": "hf_text", "model_type": "bert", "init": "random", "input": "text"}},
        "heads": heads, "objectives": {"itc": {"kind": "itc", "rerank_k": k}}, "train": {"batch_size": 3}})
    task.roles = Roles(TASKS["retrieval"], "text", "image", None, "itc", "itc")

    class Flat:  # an image reference whose pixels all hold its scene's number
        def __init__(self, s):
            self.s = s

        def load(self, size):
            return np.full((2, 2, 3), self.s, dtype=np.uint8), (2, 2)

    task.val = [Example((Flat(s),), f"scene {s}", s) for s in range(7) for _ in range(3)]
    task.transform, task.size = (lambda px: torch.from_numpy(px).permute(2, 0, 1).float()), 2

    def tokenizer(texts, **_):
        ids = torch.tensor([[int(t.split()[1])] for t in texts])
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    task.tokenizer = tokenizer
    return task


def test_recall_ranks_every_text_against_every_image_from_features_computed_once():
    """A forward that scores a text against an image by the scene they come from: recall must be perfect, and
    each text and image is encoded once (21 rows for 21 texts and 7 images), not in 21 x 7 pairs."""
    import torch

    task = _retrieval_task(itm=False)
    rows = []

    def forward(batch):  # one-hot features of the scene each side shows: similar exactly when the scenes agree
        text_scene, image_scene = batch["text_ids"][:, 0], batch["image"][:, 0, 0, 0].long()
        rows.append(len(text_scene))
        onehot = torch.nn.functional.one_hot
        return {"itc": {"text": onehot(text_scene, 7).float(), "image": onehot(image_scene, 7).float(),
                        "scale": torch.ones(1)}}

    metrics = task.evaluate(forward)
    assert metrics["retrieval_t2i_r1"] == 1.0 and metrics["retrieval_i2t_r1"] == 1.0
    assert sum(rows) == metrics["retrieval_encoded_rows"] == 21 and "retrieval_itm_t2i_r1" not in metrics


def test_itm_reranks_the_itc_top_k():
    """ITC puts every true image second (and an image's true texts 4th-6th); ITM knows the truth: re-ranking
    the top 6 both ways recovers recall@1, at k x (texts + images) fusion pairs at most."""
    import torch

    task = _retrieval_task(itm=True, k=6)
    rows = []

    def forward(batch):
        text_scene, image_scene = batch["text_ids"][:, 0], batch["image"][:, 0, 0, 0].long()
        rows.append(len(text_scene))
        onehot = torch.nn.functional.one_hot
        text = onehot(text_scene, 7).float() * 0.9 + onehot((text_scene + 1) % 7, 7).float()
        same = (text_scene == image_scene).float() * 20 - 10
        return {"itc": {"text": text, "image": onehot(image_scene, 7).float(), "scale": torch.ones(1)},
                "itm": torch.stack([torch.zeros_like(same), same], dim=1)}

    metrics = task.evaluate(forward)
    assert metrics["retrieval_t2i_r1"] == 0.0 and metrics["retrieval_t2i_r5"] == 1.0  # ITC alone
    assert metrics["retrieval_itm_t2i_r1"] == 1.0 and metrics["retrieval_itm_i2t_r1"] == 1.0
    assert metrics["retrieval_rerank_k"] == 6
    assert metrics["retrieval_fusion_pairs"] <= 6 * (21 + 7)
    assert sum(rows) == metrics["retrieval_encoded_rows"] + metrics["retrieval_fusion_pairs"]
    task_low = _retrieval_task(itm=True, k=1)  # k = 1: nothing to re-rank against, ITM cannot help
    assert task_low.evaluate(forward)["retrieval_itm_t2i_r1"] == 0.0
