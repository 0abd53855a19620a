"""Shared test setup: offline, quiet, few threads, and a tiny two-tower spec to vary."""

from __future__ import annotations

import copy
import os

import pytest
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never wait on the network: it is not there
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

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
