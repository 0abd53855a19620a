"""Compile once: run, eval and export read what compile wrote (checks passed, the parameter list, placement,
the summary) and never run a rule again; a run of a spec file runs each rule once."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any, Iterator

import pytest

import graphspec
from graphspec.cli import main
from graphspec.compiler import rules
from graphspec.compiler.folders import read_build
from graphspec.language import checks


@pytest.fixture
def counted() -> Iterator[Counter]:
    """Every graph rule and spec rule, counted each time it runs (the tables as they were afterwards)."""
    calls: Counter = Counter()

    def wrap(rule) -> Any:
        def counting(*args):
            calls[rule.__name__] += 1
            return rule(*args)
        counting.__name__ = rule.__name__
        return counting

    tables = (rules.STRUCTURE_RULES, rules.WIDTH_RULES, checks.SPEC_RULES)
    saved = [list(table) for table in tables]
    for table in tables:
        table[:] = [wrap(rule) for rule in table]
    yield calls
    for table, before in zip(tables, saved):
        table[:] = before


@pytest.mark.integration
def test_run_eval_and_export_run_no_rule(counted, train_spec, write_spec, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    train_spec["train"].update(steps=2, val_every=2, schedule={"warmup": 1})
    spec_file = write_spec(train_spec)
    assert main(["compile", str(spec_file), "-o", "build"]) == 0
    every = {r.__name__ for r in (*rules.STRUCTURE_RULES, *rules.WIDTH_RULES, *checks.SPEC_RULES)}
    assert set(counted) == every and set(counted.values()) == {1}  # loading and compiling: each rule once
    for command in (["run", "build", "--run-dir", "run"], ["eval", "run"],
                    ["export", "run", "-o", "exported", "--no-program"]):
        counted.clear()
        assert main(command) == 0
        assert not counted, f"graphspec {command[0]} ran {sorted(counted)}"
    graphspec.load_model("exported")
    assert not counted
    card = (tmp_path / "exported" / "README.md").read_text()
    assert (tmp_path / "build" / "summary.txt").read_text().strip() in card  # the build's report, not a recompile


def test_a_build_whose_model_differs_from_the_compiled_one_is_refused(train_spec, compile_build, tmp_path):
    """The parameter list compile wrote is checked against the model the runtime builds."""
    from graphspec.compiler import build_weights
    from graphspec.compiler.folders import BuildError, check_parameters

    build = compile_build(train_spec)
    model = build_weights(build.spec, build.plan)
    check_parameters(build, model)
    path = build.dir / "parameters.json"
    params = json.loads(path.read_text())
    name = sorted(params)[-1]
    params[name]["shape"] = [1, 1]
    path.write_text(json.dumps(params))
    with pytest.raises(BuildError, match=rf"differs from the one compiled in 1 parameters \(e.g. {name}: compiled"):
        check_parameters(read_build(build.dir), model)


def test_an_older_build_is_refused_naming_its_version(train_spec, compile_build):
    build = compile_build(train_spec)
    manifest = json.loads((build.dir / "manifest.json").read_text())
    (build.dir / "manifest.json").write_text(json.dumps({**manifest, "format_version": 2, "graphspec": "0.2.0"}))
    (build.dir / "parameters.json").unlink()  # a version 2 build has none
    from graphspec.compiler.folders import BuildError

    with pytest.raises(BuildError, match="build format version 2 \\(written by graphspec 0.2.0\\); this graphspec"):
        read_build(build.dir)
