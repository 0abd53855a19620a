"""User mistakes at run time end in a located message and an exit code, never a traceback."""

from __future__ import annotations

import json

import pytest

from graphspec.cli import main
from graphspec.language.errors import GraphspecError
from graphspec.compiler.folders import BuildError, read_build
from graphspec.runtime.train import run


def test_build_directory_from_another_version(train_spec, compile_build, capsys):
    build = compile_build(train_spec)
    manifest = build.dir / "manifest.json"
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "format_version": 999}))
    with pytest.raises(BuildError) as info:
        read_build(build.dir)
    assert "build format version 999 (written by graphspec 0.2.0); this graphspec (0.2.0) reads version 3" \
        in info.value.format()
    assert main(["run", str(build.dir)]) == 2
    err = capsys.readouterr().err
    assert "manifest.json: build format version 999" in err and "fix: recompile it: graphspec compile SPEC -o" in err
    assert "Traceback" not in err


def test_a_build_from_graphspec_0_1_is_refused_naming_its_version(train_spec, compile_build, capsys):
    """0.1's builds (top-level `compiler`/`runtime` packages, format 1) are recompiled, not guessed at."""
    build = compile_build(train_spec)
    manifest = build.dir / "manifest.json"
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "format_version": 1, "graphspec": "0.1.0"}))
    assert main(["run", str(build.dir)]) == 2
    err = capsys.readouterr().err
    assert "build format version 1 (written by graphspec 0.1.0); this graphspec (0.2.0) reads version 3" in err
    assert "fix: recompile it: graphspec compile SPEC -o" in err


def test_incomplete_build_directory(tmp_path, capsys):
    (tmp_path / "b").mkdir()
    assert main(["run", str(tmp_path / "b")]) == 2
    assert "not a complete build directory (missing manifest.json" in capsys.readouterr().err


def test_unwritable_run_directory(train_spec, compile_build, tmp_path):
    build = compile_build(train_spec)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(GraphspecError) as info:
        run(build, blocker / "run", show_bar=False)
    text = info.value.format()
    assert f"{blocker / 'run'}: cannot write the run directory" in text and "choose another with --run-dir" in text


def test_data_the_generator_cannot_make_is_located_in_the_spec(train_spec, write_spec, tmp_path, capsys,
                                                               monkeypatch, line_of):
    monkeypatch.chdir(tmp_path)
    train_spec["data"]["train"] = {"samples": 5000}
    path = write_spec(train_spec)
    line = line_of(path, "samples: 5000")
    assert main(["run", str(path), "--run-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert f"spec.yaml:{line}:" in err
    assert "data.train.samples: asked for 5000 train scenes, but these options give only 2183 distinct train scenes" in err
    assert "Traceback" not in err


def test_unknown_colour_is_reported_by_the_generator(train_spec, compile_build, tmp_path):
    train_spec["data"]["train"] = {"shapes": {"colors": ["red", "pink"]}}
    with pytest.raises(GraphspecError) as info:
        run(compile_build(train_spec), tmp_path / "run", show_bar=False)
    assert "data.train.shapes: colors: unknown colour 'pink'" in info.value.format()


def test_a_launcher_with_another_number_of_processes(train_spec, write_spec, tmp_path, capsys, monkeypatch):
    """A rank that someone else's launcher started 3 of, for a spec of 2."""
    monkeypatch.chdir(tmp_path)
    for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "3")):
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("GRAPHSPEC_SINGLE_PROCESS", raising=False)
    train_spec["distributed"] = {"world_size": 2}
    assert main(["run", str(write_spec(train_spec)), "--run-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "distributed.world_size: the spec asks for 2 processes, but this run has 3" in err
    assert "give `--nproc 3`" in err and "Traceback" not in err


def test_an_objective_the_task_does_not_train_is_refused_by_validate(train_spec, write_spec, tmp_path, capsys,
                                                                    monkeypatch, line_of):
    """`validate` refuses it, located, before any run: the task table's rule, not the runtime, finds it."""
    monkeypatch.chdir(tmp_path)
    train_spec["heads"]["ve"] = {"kind": "classify", "input": "pooled", "classes": 3}
    train_spec["objectives"]["ve"] = {"kind": "classify"}
    path = write_spec(train_spec)
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"spec.yaml:{line_of(path, 've:', 2)}:" in err
    assert "objectives.ve: the captions task trains mlm, itm and itc objectives, not 'classify'" in err


@pytest.mark.parametrize("file, content, expected", [
    ("ds_config.json", "[]", "ds_config.json: not a DeepSpeed config (a JSON object)"),
    ("manifest.json", b"\xff\xfe garbage", "manifest.json: cannot read it"),
    ("spec.resolved.json", '{"name": "tiny", "inp', "spec.resolved.json: cannot read it"),
    ("param_groups.json", '[{"name": "g", "lr_scale": 1, "weight_decay": 0, "params": ["fusion.nothing"]}]',
     "param_groups.json: names 1 parameters that are not trainable parameters of this model (e.g. fusion.nothing)"),
    ("freeze.json", '{"frozen": []}', "freeze.json: not a freeze plan this graphspec reads"),
])
def test_a_damaged_build_directory_names_the_file(file, content, expected, train_spec, compile_build, capsys):
    build = compile_build(train_spec)
    path = build.dir / file
    path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    assert main(["run", str(build.dir), "--run-dir", str(build.dir.parent / "run")]) == 2
    err = capsys.readouterr().err
    assert expected in err and "fix: recompile it" in err and "Traceback" not in err


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A short finished run, whose final checkpoint the damage tests copy."""
    from tests.conftest import finished_run

    return finished_run(tmp_path_factory.mktemp("finished"), "spec", samples=16, val_samples=4, steps=2,
                        batch_size=4, warmup=0)[1]


@pytest.mark.parametrize("damage", ["cut", "altered"])
def test_a_damaged_final_checkpoint_is_named_by_eval_and_init_from(damage, finished, tmp_path, capsys, train_spec,
                                                                   write_spec):
    import shutil

    ckpt = tmp_path / "checkpoint"
    shutil.copytree(finished, ckpt)
    weights = ckpt / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 3] if damage == "cut" else data[:-4] + b"\x00\x01\x02\x03")
    capsys.readouterr()
    assert main(["eval", str(ckpt)]) == 2
    err = capsys.readouterr().err
    how = "cut short (" if damage == "cut" else "altered after"
    assert f"{weights}: this file was {how}" in err and "after the checkpoint was written" in err
    assert "Traceback" not in err
    train_spec["init_from"] = str(ckpt)
    train_spec["train"].update(steps=1, val_every=None, schedule={"warmup": 0})
    code = main(["run", str(write_spec(train_spec)), "--run-dir", str(tmp_path / "r"), "--build-dir",
                 str(tmp_path / "b")])
    err = capsys.readouterr().err
    assert code == 2 and "init_from:" in err and "Traceback" not in err
    assert ("cannot read the checkpoint weights" if damage == "cut" else f"this file was {how}") in err
