"""Fixtures for the spec-language tests: a small valid spec as text, written to tmp_path and loaded.

The spec is kept here (not read from specs/) so that line numbers the tests
expect stay put; tests find a line by its text with `line_of`, never by number.
"""

from __future__ import annotations

import pytest
import yaml

import graphspec
from graphspec import SpecError

SPEC = """\
name: small
inputs:
  text:  {modality: text, max_length: 12}
  image: {modality: image, size: 32}
nodes:
  text_tower:
    kind: hf_text
    model_type: bert
    init: random
    input: text
    size: {hidden: 32, layers: 2, heads: 2, vocab_size: 64, max_positions: 16}
  vision_tower:
    kind: timm_vision
    source: vit_tiny_patch16_224
    init: random
    input: image
    size: {hidden: 32, layers: 2, heads: 2, patch_size: 8}
  fusion:
    kind: co_attention
    inputs: {text: text_tower, image: vision_tower}
    layers: 2
    heads: 2
    dropout: 0.0
  pooled:
    kind: cls_pool
    inputs: [fusion.text, fusion.image]
heads:
  itm: {kind: itm, input: pooled}
  mlm: {kind: mlm, input: fusion.text, vocab_from: text_tower}
objectives:
  itm: {weight: 1.0}
  mlm: {weight: 1.0}
train:
  steps: 20
  batch_size: 8
  optimizer: {name: adamw, lr: 1.0e-3}
  schedule: {warmup: 2}
distributed:
  zero_stage: 0
"""


@pytest.fixture
def spec_text() -> str:
    return SPEC


@pytest.fixture
def spec_data() -> dict:
    """The small spec as plain data (a fresh copy)."""
    return yaml.safe_load(SPEC)


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """tmp_path as the current directory, so errors name files as written ('spec.yaml:3:1')."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def write(workdir):
    """write(text, name='spec.yaml') -> the file's name, relative to the current directory."""

    def write_(text: str, name: str = "spec.yaml") -> str:
        path = workdir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return name

    return write_


@pytest.fixture
def load_error(write):
    """load_error(text, name='spec.yaml', overrides=None) -> the SpecError that loading raises."""

    def load_error_(text: str, name: str = "spec.yaml", overrides=None) -> SpecError:
        path = write(text, name)
        with pytest.raises(SpecError) as info:
            graphspec.load(path, overrides=overrides)
        return info.value

    return load_error_
