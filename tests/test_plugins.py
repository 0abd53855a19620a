"""Extension in one file: tests/plugins/toy_plugin.py registers a node kind, a head kind and a task, and that is
enough, in-process by importing it and for the command line through the entry-point group `graphspec.plugins`.
docs/extending.md describes what these tests do."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import graphspec
from graphspec.cli import main

PLUGINS = Path(__file__).parent / "plugins"
SPEC = {
    "name": "toy",
    "inputs": {"text": {"modality": "text", "max_length": 16}, "image": {"modality": "image", "size": 32}},
    "nodes": {
        "words": {"kind": "bag_text", "input": "text", "width": 32, "layers": 2, "vocab_size": 256,
                  "freeze": {"layers": "0:1"}},
        "pixels": {"kind": "timm_vision", "source": "vit_tiny_patch16_224", "init": "random", "input": "image",
                   "size": {"hidden": 32, "layers": 1, "heads": 2, "mlp_ratio": 2, "patch_size": 8}},
    },
    "heads": {"match": {"kind": "cosine_match", "inputs": {"text": "words", "image": "pixels"}}},
    "objectives": {"match": {"kind": "cosine_match", "weight": 1.0}},
    "data": {"train": {"source": "builtin:shapes", "task": "toy_match", "split": "train", "samples": 48},
             "val": {"source": "builtin:shapes", "task": "toy_match", "split": "val", "samples": 16}},
    "train": {"steps": 3, "batch_size": 8, "optimizer": {"lr": 1e-3}, "val_every": 3},
}


@pytest.fixture
def plugin(monkeypatch):
    """The plugin imported (its registrations made), and every registry as it was afterwards."""
    from graphspec.compiler.kinds import KINDS
    from graphspec.language import schema
    from graphspec.runtime.tasks import REGISTRY

    saved = (dict(KINDS), list(schema.NODE_CLASSES), list(schema.HEAD_CLASSES), dict(schema.TASKS),
             dict(schema.FAMILY_TASK), dict(REGISTRY))
    monkeypatch.syspath_prepend(str(PLUGINS))
    yield importlib.import_module("toy_plugin")
    sys.modules.pop("toy_plugin", None)
    kinds, nodes, heads, tasks, families, registry = saved
    schema.NODE_CLASSES[:], schema.HEAD_CLASSES[:] = nodes, heads
    for table, before in ((KINDS, kinds), (schema.TASKS, tasks), (schema.FAMILY_TASK, families), (REGISTRY, registry)):
        table.clear()
        table.update(before)  # type: ignore[arg-type]
    schema._rebuild()


@pytest.mark.integration
def test_a_plugin_in_one_file_goes_through_validate_compile_run_export_and_predict(plugin, tmp_path, monkeypatch):
    from skimage import data
    from PIL import Image

    monkeypatch.chdir(tmp_path)
    Path("toy.yaml").write_text(yaml.safe_dump(SPEC, sort_keys=False))
    assert graphspec.validate(graphspec.load("toy.yaml")) == []
    compiled = graphspec.compile(graphspec.load("toy.yaml"), out="build")
    assert {"words.blocks.0.1.weight", "words.blocks.0.1.bias"} <= compiled.plan.frozen  # its Adapter's layers
    assert not any(n.startswith("words.blocks.1.") for n in compiled.plan.frozen)
    assert main(["run", "build", "--run-dir", "run"]) == 0
    summary = json.loads(Path("run/summary.json").read_text())
    assert set(summary["val"]) == {"toy_match_acc", "toy_match_loss"}
    assert main(["eval", "run"]) == 0
    assert json.loads(Path("run/eval-val.json").read_text())["toy_match_acc"] == summary["val"]["toy_match_acc"]
    assert main(["export", "run", "-o", "exported"]) == 0
    manifest = json.loads(Path("exported/graphspec.json").read_text())
    assert manifest["labels"] == {"match": ["no match", "match"]}
    Image.fromarray(data.astronaut()).save("photo.png")
    model, processor = graphspec.load_model("exported")
    out = model(**processor(images=["photo.png"], text=["a red circle", "a blue square"]))
    assert {"match", "match_prediction", "match_probability"} <= set(out)
    assert set(manifest["program"]["outputs"]) == {"match", "match_prediction", "match_probability"}  # one naming
    assert main(["predict", "exported", "--image", "photo.png", "--text", "a red circle", "--json"]) == 0


def _site(tmp_path: Path, target: str) -> Path:
    """A folder on the path holding a .dist-info whose entry point (group graphspec.plugins) names `target`."""
    site = tmp_path / "site"
    dist = site / "toyplugin-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: toyplugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[graphspec.plugins]\ntoy = {target}\n")
    return site


def _graphspec(args: list[str], path: list[Path], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(p) for p in path)}
    return subprocess.run([sys.executable, "-m", "graphspec", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=300)


@pytest.mark.integration
def test_the_command_line_and_the_schema_find_a_plugin_through_its_entry_point(tmp_path):
    (tmp_path / "toy.yaml").write_text(yaml.safe_dump(SPEC, sort_keys=False))
    without = _graphspec(["validate", "toy.yaml"], [PLUGINS], tmp_path)  # importable, but not installed
    assert without.returncode == 2 and "unknown kind 'bag_text'" in without.stderr, without.stderr
    site = _site(tmp_path, "toy_plugin")
    schema = _graphspec(["schema"], [site, PLUGINS], tmp_path)
    assert schema.returncode == 0, schema.stderr
    text = json.loads(schema.stdout)
    kinds = {d["properties"]["kind"].get("const") for d in text["$defs"].values() if "kind" in d.get("properties", {})}
    assert {"bag_text", "cosine_match"} <= kinds
    assert "toy_match" in text["$defs"]["DataSource"]["properties"]["task"]["enum"]
    checked = _graphspec(["validate", "toy.yaml"], [site, PLUGINS], tmp_path)
    assert checked.returncode == 0 and "toy.yaml: ok" in checked.stdout, checked.stderr


def test_a_plugin_that_cannot_import_is_named(tmp_path):
    broken = _graphspec(["schema"], [_site(tmp_path, "no_such_plugin_module")], tmp_path)
    assert broken.returncode == 3, broken.stderr
    assert "the plugin 'toy' (no_such_plugin_module, from toyplugin) failed to import" in broken.stderr
    assert "Traceback" not in broken.stderr
