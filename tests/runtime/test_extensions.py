"""DeepSpeed's C++ ops are built once per installation: each installation of DeepSpeed and torch gets a build
folder of its own, so two environments on one machine no longer rebuild each other's ops."""

from __future__ import annotations

import os

import deepspeed

from graphspec.runtime.engine import own_extensions_folder


def test_each_installation_builds_its_ops_in_a_folder_of_its_own(monkeypatch, tmp_path):
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR", raising=False)
    here = own_extensions_folder()
    assert here is not None and os.environ["TORCH_EXTENSIONS_DIR"] == here and "graphspec-" in here
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR")
    assert own_extensions_folder() == here  # the same installation: the same folder, run after run
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR")
    other = tmp_path / "venv" / "site-packages" / "deepspeed"
    other.mkdir(parents=True)
    monkeypatch.setattr(deepspeed, "__file__", str(other / "__init__.py"))  # another environment's DeepSpeed
    assert own_extensions_folder() not in (None, here)


def test_a_folder_the_user_chose_is_kept(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    assert own_extensions_folder() is None and os.environ["TORCH_EXTENSIONS_DIR"] == str(tmp_path)


def test_every_engine_uses_the_installations_folder_not_only_the_command(train_spec, compile_build, monkeypatch):
    """The freeze benchmark and in-process runs make engines without `graphspec run`: in a fresh environment they
    built the ops a second time, in torch's shared folder (49 s for the benchmark's test in CI, against 23 s)."""
    from graphspec.runtime.train import prepare

    monkeypatch.delenv("TORCH_EXTENSIONS_DIR", raising=False)
    prepare(compile_build(train_spec, ["train.steps=4", "data.val=null"]))
    assert "graphspec-" in os.environ["TORCH_EXTENSIONS_DIR"]
