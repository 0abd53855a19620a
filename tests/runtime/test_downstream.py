"""Fine-tuning on the built-in downstream tasks, from a pretraining checkpoint, and evaluating them."""

from __future__ import annotations

import json

import pytest

from graphspec.cli import main
from graphspec.runtime.run import run

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


def test_recall_fills_the_whole_similarity_matrix_block_by_block():
    """A forward that scores a text against an image by the scene they come from: recall must be perfect."""
    import numpy as np
    import torch

    from graphspec.runtime.tasks.base import Example
    from graphspec.runtime.tasks.retrieval import Retrieval
    from graphspec.schema import TASKS, Roles, Spec

    task = object.__new__(Retrieval)
    task.spec = Spec.model_validate({
        "name": "r", "inputs": {"text": {"modality": "text", "max_length": 4}, "image": {"modality": "image"}},
        "nodes": {"t": {"kind": "hf_text", "model_type": "bert", "init": "random", "input": "text"}},
        "train": {"batch_size": 3}})  # blocks of 3 over 7 scenes x 3 captions: padding is exercised
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

    def forward(batch):  # one-hot features of the scene each side shows: similar exactly when the scenes agree
        text_scene, image_scene = batch["text_ids"][:, 0], batch["image"][:, 0, 0, 0].long()
        onehot = torch.nn.functional.one_hot
        return {"itc": {"text": onehot(text_scene, 7).float(), "image": onehot(image_scene, 7).float(),
                        "scale": torch.ones(1)}}

    metrics = task.evaluate(forward)
    assert metrics["retrieval_t2i_r1"] == 1.0 and metrics["retrieval_i2t_r1"] == 1.0
