"""Shared test setup: offline, quiet, few threads, and a tiny two-tower spec to vary."""

from __future__ import annotations

import copy
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never wait on the network: it is not there
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The tests start some 60 processes (ranks, launched runs, study stages), each importing graphspec's modules:
# where PYTHONDONTWRITEBYTECODE is set (it is on the project's machines), each compiled them all again, 0.8 s
# a process (measured). The suite keeps their bytecode (__pycache__, ignored by git) for its children and itself.
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
sys.dont_write_bytecode = False
# Tower records (compiler/tower_records.py) of this session only: tests neither read nor fill the user's.
_OWN_RECORDS = "GRAPHSPEC_TOWER_RECORDS" not in os.environ
if _OWN_RECORDS:
    os.environ["GRAPHSPEC_TOWER_RECORDS"] = tempfile.mkdtemp(prefix="graphspec-records-")
# A suite run as a task of a Slurm job step (`srun python -m pytest`) tests what it tests anywhere: its `graphspec
# run` processes are no tasks of that step (tests/runtime/test_slurm.py builds the steps it runs)
os.environ.setdefault("GRAPHSPEC_IGNORE_SLURM", "1")
# `graphspec run` predicts its cost first (graphspec.cost.predict.ensure, 5-10 s); the tests of that turn it on
os.environ.setdefault("GRAPHSPEC_COST", "off")

def _own_extensions_folder() -> None:
    """DeepSpeed's C++ ops in this installation's own folder, as every engine graphspec makes builds them (tests
    that call deepspeed.initialize themselves would otherwise build them again in torch's shared folder: 20 s)."""
    from graphspec.runtime.engine import own_extensions_folder

    own_extensions_folder()


_own_extensions_folder()


def pytest_sessionfinish(session, exitstatus):
    if _OWN_RECORDS:
        shutil.rmtree(os.environ["GRAPHSPEC_TOWER_RECORDS"], ignore_errors=True)

TINY = {
    "name": "tiny",
    "inputs": {"text": {"modality": "text", "max_length": 12}, "image": {"modality": "image", "size": 32}},
    "nodes": {
        "text_tower": {"kind": "hf_text", "model_type": "bert", "init": "random", "input": "text",
                       "size": {"hidden": 32, "layers": 2, "heads": 2, "mlp_ratio": 2, "vocab_size": 64,
                                "max_positions": 16}},
        "vision_tower": {"kind": "timm_vision", "source": "vit_tiny_patch16_224", "init": "random", "input": "image",
                         "size": {"hidden": 32, "layers": 2, "heads": 2, "mlp_ratio": 2, "patch_size": 8}},
        "fusion": {"kind": "co_attention", "inputs": {"text": "text_tower", "image": "vision_tower"},
                   "layers": 2, "heads": 2, "mlp_ratio": 2, "dropout": 0.0},
        "pooled": {"kind": "cls_pool", "inputs": ["fusion.text", "fusion.image"]},
    },
    "heads": {"itm": {"kind": "itm", "input": "pooled"},
              "mlm": {"kind": "mlm", "input": "fusion.text", "vocab_from": "text_tower"}},
    "objectives": {"itm": {"weight": 1.0}, "mlm": {"weight": 1.0}},
    "train": {"steps": 20, "batch_size": 8, "optimizer": {"lr": 1e-3}, "schedule": {"warmup": 2}},
}


@pytest.fixture
def tiny() -> dict:
    """A fresh copy of the tiny spec as plain data, to modify per test."""
    return copy.deepcopy(TINY)


@pytest.fixture
def write_spec(tmp_path):
    """write_spec(data_or_text, name='spec.yaml') -> path of a spec file in tmp_path."""

    def write(data, name: str = "spec.yaml"):
        path = tmp_path / name
        path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
        return path

    return write


@pytest.fixture
def tiny_bert(tmp_path):
    """A tiny BERT with its tokenizer, saved to tmp_path/bert as a pretrained model would be."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    directory = tmp_path / "bert"
    torch.manual_seed(3)
    model = BertModel(BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                 vocab_size=64, max_position_embeddings=16), add_pooling_layer=False)
    model.save_pretrained(directory)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "red", "blue", "circle", "square", "left", "of"]
    (directory / "vocab.txt").write_text("\n".join(words + [f"w{i}" for i in range(64 - len(words))]) + "\n")
    BertTokenizerFast(vocab_file=str(directory / "vocab.txt")).save_pretrained(directory)
    return model


def _line_of(text, needle: str, nth: int = 1) -> int:
    """1-based line of the `nth` line of `text` (a string or a file path) that contains `needle`."""
    text = text if isinstance(text, str) else text.read_text()
    hits = [i for i, line in enumerate(text.splitlines(), 1) if needle in line]
    assert len(hits) >= nth, f"{needle!r} is not in the text {nth} time(s)"
    return hits[nth - 1]


@pytest.fixture
def line_of():
    """line_of(text_or_path, needle, nth=1): where a spec says something, to check located errors."""
    return _line_of


def finished_run(base, name: str, samples: int, val_samples: int, steps: int, batch_size: int,
                 warmup: int) -> tuple[dict, Path]:
    """Train the tiny spec for a few steps in `base` (module-scoped fixtures share one): (its spec, the run's
    final checkpoint)."""
    from graphspec.cli import main

    spec = copy.deepcopy(TINY)
    spec["nodes"]["text_tower"]["size"]["vocab_size"] = 128
    spec["data"] = {"train": {"samples": samples}, "val": {"split": "val", "samples": val_samples}}
    spec["train"].update(steps=steps, batch_size=batch_size, schedule={"warmup": warmup})
    (base / f"{name}.yaml").write_text(yaml.safe_dump(spec))
    assert main(["run", str(base / f"{name}.yaml"), "--run-dir", str(base / "run"),
                 "--build-dir", str(base / "build")]) == 0
    return spec, base / "run" / "checkpoint"
