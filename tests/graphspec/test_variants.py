"""graphspec.studies.variants: grids and lists of changes -> named, validated spec files that extend the base."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import graphspec
from graphspec import SpecError
from graphspec.cli import main
from graphspec.studies.grid import load_grid

REPO = Path(__file__).resolve().parents[2]
EXP1 = REPO / "specs" / "paper" / "exp1_two_tower.yaml"
FREEZE_GRID = {"nodes.vision_tower.freeze": [False, True], "nodes.text_tower.freeze": [False, True]}


def _unnamed(spec) -> dict:
    return spec.model_dump(mode="json", exclude={"name"})


def _raise(*args, **kwargs) -> SpecError:
    with pytest.raises(SpecError) as info:
        graphspec.variants(*args, **kwargs)
    return info.value


# --- Experiment 1: the freeze grid -------------------------------------------------------------------


def test_exp1_freeze_grid_gives_four_named_variants_in_grid_order():
    found = graphspec.variants(EXP1, grid=FREEZE_GRID, compile_check=False)
    assert [v.name for v in found] == [
        "exp1-two-tower-vision_tower-freeze-false__text_tower-freeze-false",
        "exp1-two-tower-vision_tower-freeze-false__text_tower-freeze-true",
        "exp1-two-tower-vision_tower-freeze-true__text_tower-freeze-false",
        "exp1-two-tower-vision_tower-freeze-true__text_tower-freeze-true",
    ]
    assert [(v.spec.nodes["vision_tower"].freeze, v.spec.nodes["text_tower"].freeze) for v in found] == [
        (False, False), (False, True), (True, False), (True, True)]
    assert found[1].changes == {"nodes.vision_tower.freeze": False, "nodes.text_tower.freeze": True}
    assert found[1].describe() == "nodes.vision_tower.freeze=false, nodes.text_tower.freeze=true"
    assert all(v.spec.name == v.name and v.base == EXP1 for v in found)


def test_exp1_variants_equal_the_hand_written_freeze_specs(tmp_path):
    found = graphspec.variants(EXP1, grid=FREEZE_GRID, compile_check=False)
    files = graphspec.write_variants(found, tmp_path / "exp1")
    hand = ["exp1_two_tower", "exp1_freeze_text", "exp1_freeze_vision", "exp1_freeze_both"]
    for path, name in zip(files, hand):
        assert _unnamed(graphspec.load(path)) == _unnamed(graphspec.load(EXP1.parent / f"{name}.yaml")), name


# --- the files written -------------------------------------------------------------------------------


def test_files_extend_the_base_by_a_relative_path_and_load_as_the_overridden_base(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a relative output directory elsewhere than the base
    found = graphspec.variants(EXP1, grid=FREEZE_GRID, compile_check=False)
    files = graphspec.write_variants(found, Path("deep") / "out")
    assert files == [Path("deep/out") / f"{v.name}.yaml" for v in found]
    base = graphspec.load(EXP1)
    for path, v in zip(files, found):
        data = yaml.safe_load(path.read_text())
        assert data["extends"] == os.path.relpath(EXP1, tmp_path / "deep" / "out")
        assert (path.parent / data["extends"]).resolve() == EXP1
        assert data == {"extends": data["extends"], "name": v.name, "nodes": {
            "vision_tower": {"freeze": v.changes["nodes.vision_tower.freeze"]},
            "text_tower": {"freeze": v.changes["nodes.text_tower.freeze"]}}}
        assert path.read_text().startswith(f"# {v.name}: {v.describe()}\n")
        loaded = graphspec.load(path)
        assert loaded.name == v.name
        assert _unnamed(loaded) == _unnamed(graphspec.override(base, v.changes)) == _unnamed(v.spec)


@pytest.fixture
def small(write, spec_text):
    """The small spec with a freeze annotation, lr multipliers and a clip that is not the default."""
    text = spec_text.replace("    dropout: 0.0\n", "    dropout: 0.0\n    freeze: {layers: '0:1', embeddings: true}\n")
    return write(text.replace("  schedule: {warmup: 2}\n",
                              "  schedule: {warmup: 2}\n  lr_multipliers: {fusion: 5, heads: 5}\n  grad_clip: 0.5\n"))


@pytest.mark.parametrize("path, value", [
    ("nodes.fusion.freeze", {"params": ["text_layers.*"]}),  # a mapping replaces the annotation whole
    ("nodes.fusion.freeze", True),
    ("nodes.vision_tower.freeze", {"layers": "0:1"}),
    ("train.lr_multipliers", {"fusion": 2}),  # a free-keyed mapping: 'heads' goes
    ("train", {"steps": 5, "batch_size": 4}),  # grad_clip goes back to its default, not to null
    ("train.optimizer.betas.1", 0.95),  # a list item
    ("nodes.text_tower.model_type", "1e3"),  # text that YAML 1.2 would read as a number
    ("heads.mlm", None), ("objectives.mlm", None),  # null deletes, as --set does
])
def test_a_change_written_as_a_file_loads_as_set_would_apply_it(small, path, value):
    base = graphspec.load(small)
    changes = {path: value} if path != "heads.mlm" else {path: value, "objectives.mlm": None}
    [v] = graphspec.variants(small, variants=[changes], compile_check=False)
    [file] = graphspec.write_variants([v], "out")
    assert _unnamed(graphspec.load(file)) == _unnamed(graphspec.override(base, changes)) == _unnamed(v.spec)


def test_write_variants_takes_the_base_path_for_a_spec_given_as_an_object(small, tmp_path):
    found = graphspec.variants(graphspec.load(small), grid={"nodes.fusion.layers": [1, 3]}, compile_check=False)
    assert [v.name for v in found] == ["small-fusion-layers-1", "small-fusion-layers-3"]
    with pytest.raises(SpecError) as info:
        graphspec.write_variants(found, "out")
    assert info.value.issues[0].message == "variant small-fusion-layers-1: no base spec file to extend"
    files = graphspec.write_variants(found, tmp_path / "o", base_path=small)
    assert [graphspec.load(f).nodes["fusion"].layers for f in files] == [1, 3]


def test_nothing_is_written_when_a_file_would_not_load_as_its_variant(small, write, spec_text):
    other = write(spec_text.replace("  steps: 20", "  steps: 30"), "other.yaml")
    found = graphspec.variants(small, grid={"nodes.fusion.layers": [1]}, compile_check=False)
    with pytest.raises(SpecError) as info:
        graphspec.write_variants(found, "out", base_path=other)
    assert [(i.message, i.hint) for i in info.value.issues] == [
        ("variant small-fusion-layers-1: a file extending other.yaml would not load as this variant",
         "give the base_path of the spec the variants were made from")]
    assert info.value.format().endswith("1 error: nothing written to out") and not Path("out").exists()


# --- names -------------------------------------------------------------------------------------------


def test_list_variants_are_combined_with_every_grid_point_and_named_by_their_changes(small):
    found = graphspec.variants(small, grid={"train.optimizer.lr": [1e-4, 3e-4]}, compile_check=False,
                               variants=[{"nodes.fusion.freeze": False},
                                         {"nodes.vision_tower.freeze": {"layers": "0:1", "embeddings": True}}])
    assert [v.name for v in found] == [
        "small-fusion-freeze-false__optimizer-lr-0.0001",
        "small-fusion-freeze-false__optimizer-lr-0.0003",
        "small-vision_tower-freeze-layers-0_1_embeddings-true__optimizer-lr-0.0001",
        "small-vision_tower-freeze-layers-0_1_embeddings-true__optimizer-lr-0.0003",
    ]
    assert found[3].spec.nodes["vision_tower"].freeze.layers == "0:1"
    assert found[3].spec.train.optimizer.lr == 3e-4


def test_a_listed_variant_may_name_itself_and_keeps_its_changes(small, tmp_path):
    found = graphspec.variants(small, grid={"train.optimizer.lr": [1e-4]}, compile_check=False,
                               variants=[{"name": "Frozen Vision", "nodes.vision_tower.freeze": True}, {}])
    assert [v.name for v in found] == ["small-frozen_vision__optimizer-lr-0.0001", "small-optimizer-lr-0.0001"]
    assert found[0].changes == {"nodes.vision_tower.freeze": True, "train.optimizer.lr": 1e-4}
    assert found[0].spec.nodes["vision_tower"].freeze and found[0].spec.name == found[0].name


def test_names_are_safe_deterministic_and_unique(small):
    grid = {"nodes.text_tower.size.layers": [1, 2], "nodes.vision_tower.size.layers": [2],
            "nodes.text_tower.model_type": ["Bert", "bert", "a/b c:d"]}
    names = [v.name for v in graphspec.variants(small, grid=grid, compile_check=False)]
    assert names == [v.name for v in graphspec.variants(small, grid=grid, compile_check=False)]
    assert len(set(n.lower() for n in names)) == len(names) == 6
    assert names[:3] == ["small-text_tower-size-layers-1__vision_tower-size-layers-2__text_tower-model_type-bert",
                         "small-text_tower-size-layers-1__vision_tower-size-layers-2__text_tower-model_type-bert-2",
                         "small-text_tower-size-layers-1__vision_tower-size-layers-2__text_tower-model_type-a_b_c_d"]
    assert all(re.fullmatch(r"[a-z0-9][a-z0-9_.-]*", n) for n in names)


def test_a_long_value_is_shortened_with_a_hash(small):
    [v] = graphspec.variants(small, grid={"nodes.fusion.freeze": [{"params": [f"layer_{i}.*" for i in range(30)]}]},
                             compile_check=False)
    assert re.fullmatch(r"small-fusion-freeze-params-layer_0\._layer_1\._layer_2-[0-9a-f]{7}", v.name)


# --- located errors ----------------------------------------------------------------------------------


GRID_FILE = """\
base: spec.yaml
grid:
  nodes.vison_tower.freeze: [false, true]
  nodes.fusion.widht: [64]
  train.optimizer.lr: [1.0e-3, -1]
"""


def test_unknown_grid_paths_are_located_in_the_grid_file_with_a_did_you_mean(write, spec_text, line_of):
    write(spec_text)
    write(GRID_FILE, "grid.yaml")
    with pytest.raises(SpecError) as info:
        graphspec.variants(load_grid("grid.yaml"))
    got = [(i.dotted, i.message, i.hint, str(i.loc)) for i in info.value.issues]
    assert got == [
        ("nodes.vison_tower", "unknown node 'vison_tower'", "did you mean 'vision_tower'?",
         f"grid.yaml:{line_of(GRID_FILE, 'vison_tower')}:3"),
        ("nodes.fusion.widht", "unknown field 'widht'", "did you mean 'width'?",
         f"grid.yaml:{line_of(GRID_FILE, 'widht')}:3"),
    ]
    assert info.value.format().endswith("2 errors: in the grid")


def test_a_bad_value_is_located_at_the_value_naming_every_variant_it_breaks(write, spec_text, line_of):
    write(spec_text)
    write(GRID_FILE.replace("vison", "vision").replace("widht", "width"), "grid.yaml")
    with pytest.raises(SpecError) as info:
        graphspec.variants(load_grid("grid.yaml"), compile_check=False)
    [issue] = info.value.issues
    assert issue.dotted == "train.optimizer.lr"
    assert issue.message == ("Input should be greater than 0 (got -1) (variants small-vision_tower-freeze-"
                             "false__fusion-width-64__optimizer-lr--1, small-vision_tower-freeze-true__fusion-width-64"
                             "__optimizer-lr--1)")
    line = line_of(GRID_FILE, "lr:")
    assert str(issue.loc) == f"grid.yaml:{line}:{GRID_FILE.splitlines()[line - 1].index('-1]') + 1}"  # the -1


def test_the_compile_check_reports_what_only_the_compiler_rejects(write, spec_text, line_of):
    write(spec_text)
    text = "base: spec.yaml\ngrid:\n  nodes.fusion.heads: [2, 3]\n  nodes.fusion.layers: [1, 2]\n"
    write(text, "grid.yaml")
    assert len(graphspec.variants(load_grid("grid.yaml"), compile_check=False)) == 4  # the schema cannot tell
    with pytest.raises(SpecError) as info:
        graphspec.variants(load_grid("grid.yaml"))
    [issue] = info.value.issues
    assert issue.dotted == "nodes.fusion.heads"
    assert issue.message == ("3 heads do not divide the width 32 (variants small-fusion-heads-3__fusion-layers-1, "
                             "small-fusion-heads-3__fusion-layers-2)")
    assert str(issue.loc) == f"grid.yaml:{line_of(text, 'heads')}:27"
    assert info.value.format().endswith("1 error: in the variants of spec.yaml")


@pytest.mark.parametrize("text, message, hint, where", [
    ("base: spec.yaml\ngrdi: {train.steps: [1]}\n", "unknown key 'grdi'", "did you mean 'grid'?", "grdi"),
    ("base: spec.yaml\ngrid: {train.steps: 3}\n", "'train.steps': a grid axis takes a non-empty list of values",
     "write `train.steps: [3]`", "grid"),
    ("base: spec.yaml\ngrid:\n  train.steps: [1, 2,\n    1]\n", "'train.steps': the value 1 is given twice",
     "remove one", "    1]"),
    ("base: nope.yaml\ngrid: {train.steps: [1]}\n", "base spec 'nope.yaml' not found",
     "give the base spec's path, relative to this file", "base"),
    ("base: spec.yaml\nvariants: [{train..steps: 1}]\n", "'train..steps' is not a dotted field path", "", "variants"),
    ("base: spec.yaml\n", "nothing to vary", "add `grid: {path: [v1, v2]}` or `variants: [{path: v}]`", None),
])
def test_grid_file_mistakes_are_located(write, spec_text, line_of, text, message, hint, where):
    write(spec_text)
    write(text, "grid.yaml")
    with pytest.raises(SpecError) as info:
        load_grid("grid.yaml")
    issue = info.value.issues[0]  # a misspelt `grid:` also leaves nothing to vary
    assert (issue.message, issue.hint) == (message, hint)
    assert str(issue.loc).startswith(f"grid.yaml:{line_of(text, where)}:" if where else "grid.yaml")


def test_a_grid_file_path_is_a_base_too_and_a_study_file_may_add_its_own_keys(write, spec_text):
    write(spec_text)
    text = "name: s1\nbase: spec.yaml\ngrid: {nodes.fusion.layers: [1, 2]}\nstages: {pretrain: {}}\n"
    write(text, "study.yaml")
    with pytest.raises(SpecError) as info:
        graphspec.variants("study.yaml")
    assert [(i.message, i.hint, str(i.loc)) for i in info.value.issues] == [
        ("unknown key 'name'", "expected one of: base, grid, variants", "study.yaml:1:1"),
        ("unknown key 'stages'", "expected one of: base, grid, variants", "study.yaml:4:1")]
    grid = load_grid("study.yaml", extra_keys=["name", "stages"])
    assert [v.name for v in graphspec.variants(grid, compile_check=False)] == ["small-fusion-layers-1",
                                                                                "small-fusion-layers-2"]


def test_paths_varied_twice_or_inside_each_other_are_errors(small):
    error = _raise(small, grid={"nodes.fusion": [{"kind": "co_attention"}]},
                   variants=[{"nodes.fusion.layers": 1}, {"train.steps": 3}])
    assert [(i.message, str(i.loc)) for i in error.issues] == [
        ("'nodes.fusion.layers' overlaps 'nodes.fusion', also varied", "variants[0] nodes.fusion.layers=1")]


def test_a_path_through_a_value_is_located_at_the_key(small):
    error = _raise(small, grid={"name.x": [1]}, compile_check=False)
    assert [(i.message, str(i.loc)) for i in error.issues] == [
        ("this path does not lead to a mapping in the spec (variant small-name-x-1)", "grid name.x")]


def test_a_new_entry_of_a_free_keyed_mapping_may_be_added_but_not_reached_through(small):
    [v] = graphspec.variants(small, grid={"train.lr_multipliers.pooled": [3]}, compile_check=False)
    assert v.spec.train.lr_multipliers == {"fusion": 5, "heads": 5, "pooled": 3}
    error = _raise(small, grid={"heads.itc.input": ["pooled"]})
    assert [(i.message, i.hint) for i in error.issues] == [("unknown head 'itc'", "did you mean 'itm'?")]


# --- the command -------------------------------------------------------------------------------------


def test_cli_writes_the_grid_and_prints_each_file_with_its_changes(write, spec_text, workdir, capsys):
    write(spec_text)
    write("base: ../spec.yaml\nvariants:\n  - {nodes.fusion.layers: 1}\n  - {nodes.fusion.freeze: {layers: '0:1'}}\n",
          "grids/g.yaml")
    argv = ["variants", "grids/g.yaml", "--grid", "train.optimizer.lr=1e-4,3e-4", "-o", "out"]
    assert main(argv + ["--no-compile-check"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == ("out/small-fusion-layers-1__optimizer-lr-0.0001.yaml: "
                      "nodes.fusion.layers=1, train.optimizer.lr=0.0001")
    assert out[2] == ("out/small-fusion-freeze-layers-0_1__optimizer-lr-0.0001.yaml: "
                      'nodes.fusion.freeze={"layers": "0:1"}, train.optimizer.lr=0.0001')
    assert out[-1].startswith("wrote 4 variants of spec.yaml (schema and spec rules only) in ")
    spec = graphspec.load("out/small-fusion-freeze-layers-0_1__optimizer-lr-0.0003.yaml")
    assert (spec.nodes["fusion"].freeze.layers, spec.train.optimizer.lr) == ("0:1", 3e-4)


def test_cli_grid_values_read_as_yaml_with_mappings_and_lists(write, spec_text, capsys):
    write(spec_text)
    argv = ["variants", "spec.yaml", "-o", "out", "--no-compile-check",
            "--grid", "nodes.vision_tower.freeze=false,{layers: '0:1', params: [a, b]}"]
    assert main(argv) == 0
    files = sorted(Path("out").iterdir())
    assert [f.name for f in files] == ["small-vision_tower-freeze-false.yaml",
                                       "small-vision_tower-freeze-layers-0_1_params-a_b.yaml"]
    assert graphspec.load(files[1]).nodes["vision_tower"].freeze.params == ["a", "b"]


@pytest.mark.parametrize("arg, message, hint, loc", [
    ("nodes.vison_tower.freeze=true,false", "unknown node 'vison_tower'", "did you mean 'vision_tower'?",
     "--grid nodes.vison_tower.freeze=true,false"),
    ("nodes.fusion.layers", "bad --grid 'nodes.fusion.layers': expected PATH=V1,V2,...",
     "write --grid path.to.field=v1,v2 (an empty text as '')", "--grid nodes.fusion.layers"),
    ("nodes.fusion.layers=1,,2", "bad --grid 'nodes.fusion.layers=1,,2': expected PATH=V1,V2,...",
     "write --grid path.to.field=v1,v2 (an empty text as '')", "--grid nodes.fusion.layers=1,,2"),
])
def test_cli_grid_mistakes_exit_2_naming_the_argument_and_write_nothing(write, spec_text, capsys, arg, message,
                                                                         hint, loc):
    write(spec_text)
    assert main(["variants", "spec.yaml", "--grid", arg, "-o", "out"]) == 2
    err = capsys.readouterr().err
    assert f"error: {loc}: " in err and message in err and f"  fix: {hint}" in err
    assert "Traceback" not in err and not Path("out").exists()


def test_cli_compile_check_is_the_default_and_nothing_is_written_on_failure(write, spec_text, capsys):
    write(spec_text)
    assert main(["variants", "spec.yaml", "--grid", "nodes.fusion.heads=2,3", "-o", "out"]) == 2
    err = capsys.readouterr().err
    assert ("error: --grid nodes.fusion.heads=2,3: nodes.fusion.heads: 3 heads do not divide the width 32 "
            "(variant small-fusion-heads-3)") in err
    assert err.rstrip().endswith("1 error: in the variants of spec.yaml") and not Path("out").exists()
    assert main(["variants", "spec.yaml", "--grid", "nodes.fusion.heads=1,2", "-o", "out"]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("wrote 2 variants of spec.yaml (every compile check)")


def test_cli_with_nothing_to_vary_exits_2(write, spec_text, capsys):
    write(spec_text)
    assert main(["variants", "spec.yaml", "-o", "out"]) == 2
    assert "error: nothing to vary" in capsys.readouterr().err


def test_graphspec_imports_the_variants_api_without_torch():
    code = "import sys, graphspec; graphspec.variants, graphspec.load_grid, graphspec.write_variants; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "False", result.stderr


@pytest.mark.parametrize("grid, message, loc", [
    ({"train.steps": []}, "'train.steps': a grid axis takes a non-empty list of values", "grid train.steps"),
    ({"train.steps": [1, 2, 1]}, "'train.steps': the value 1 is given twice", "grid train.steps=1"),
    ({}, "nothing to vary", "None"),
])
def test_api_grid_mistakes_are_located_at_the_argument(small, grid, message, loc):
    [issue] = _raise(small, grid=grid).issues
    assert (issue.message, str(issue.loc)) == (message, loc)


def test_an_issue_every_variant_has_is_reported_once_for_all(small):
    [issue] = _raise(small, grid={"train.steps": [0], "nodes.fusion.layers": [1, 2]}, compile_check=False).issues
    assert issue.message == ("Input should be greater than or equal to 1 (got 0) (all 2 variants: "
                             "small-train-steps-0__fusion-layers-1, small-train-steps-0__fusion-layers-2)")
    assert str(issue.loc) == "grid train.steps=0"
