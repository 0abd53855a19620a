"""Studies: a grid of variants, each pretrained then fine-tuned, compared in a table and plots; a killed study
continues without redoing what finished."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from graphspec.cli import main
from graphspec.language.errors import SpecError
from graphspec.studies.plan import plan_study


@pytest.fixture
def study_file(tiny, tmp_path):
    """A tiny base spec, an SNLI-VE stage spec extending it, and a study over freezing the vision tower."""
    tiny["data"] = {"train": {"samples": 32}, "val": {"split": "val", "samples": 8}}
    tiny["nodes"]["text_tower"]["size"]["vocab_size"] = 128
    tiny["train"].update(steps=3, batch_size=4, schedule={"warmup": 0}, log_every=1)
    (tmp_path / "specs").mkdir()
    (tmp_path / "specs" / "base.yaml").write_text(yaml.safe_dump(tiny))
    (tmp_path / "specs" / "ve.yaml").write_text(yaml.safe_dump({
        "extends": "base.yaml", "name": "ve", "heads": {"itm": None, "mlm": None,
                                                        "ve": {"kind": "classify", "input": "pooled", "classes": 3}},
        "objectives": {"itm": None, "mlm": None, "ve": {"kind": "classify"}},
        "data": {"train": {"task": "snli_ve", "samples": 24}, "val": {"task": "snli_ve", "split": "val",
                                                                      "samples": 6}}}))
    text = """\
name: tiny-study
base: specs/base.yaml
grid:
  nodes.vision_tower.freeze: [false, true]
stages:
  pretrain: {}
  ve: {spec: specs/ve.yaml, from: pretrain, changes: false}
compare: [pretrain.itm_acc, ve.snli_ve_acc]
"""
    (tmp_path / "study.yaml").write_text(text)
    return tmp_path / "study.yaml"


def test_plan_derives_every_stage_of_every_variant(study_file):
    study = plan_study(study_file, compile_check=False)
    assert [v.name for v in study.variants] == ["tiny-vision_tower-freeze-false", "tiny-vision_tower-freeze-true"]
    assert [(r.variant[-5:], r.stage, r.after) for r in study.runs] == [
        ("false", "pretrain", None), ("false", "ve", "pretrain"), ("-true", "pretrain", None), ("-true", "ve", "pretrain")]
    frozen_pretrain, frozen_ve = study.runs[2].spec, study.runs[3].spec
    assert frozen_pretrain.nodes["vision_tower"].freeze and not frozen_ve.nodes["vision_tower"].freeze  # changes: false
    assert frozen_ve.name == "tiny-vision_tower-freeze-true.ve" and "ve" in frozen_ve.heads


def test_a_stage_from_a_later_stage_and_an_unknown_metric_are_located(study_file):
    text = study_file.read_text().replace("from: pretrain", "from: pretrian").replace("ve.snli_ve_acc", "fine.acc")
    study_file.write_text(text)
    with pytest.raises(SpecError) as info:
        plan_study(study_file, compile_check=False)
    message = info.value.format()
    assert "study.yaml:7:" in message and "stages.ve.from: stage 've' starts from 'pretrian', which is not an " \
        "earlier stage" in message and "did you mean 'pretrain'?" in message
    assert "study.yaml:8:" in message and "compare.1: 'fine.acc' is not STAGE.METRIC of a stage" in message


def test_a_stage_spec_the_compiler_rejects_names_the_variant_and_stage(study_file):
    ve = yaml.safe_load((study_file.parent / "specs" / "ve.yaml").read_text())
    ve["nodes"] = {"fusion": {"heads": 3}}  # 3 heads do not divide the width 32
    (study_file.parent / "specs" / "ve.yaml").write_text(yaml.safe_dump(ve))
    with pytest.raises(SpecError) as info:
        plan_study(study_file)
    assert "tiny-vision_tower-freeze-false, stage ve:" in info.value.format()
    assert "3 heads do not divide the width 32" in info.value.format()


def _wait_for(path, process, seconds=240):
    deadline = time.monotonic() + seconds
    while not path.is_file():
        assert process.poll() is None, "the study ended before the file appeared"
        assert time.monotonic() < deadline, f"{path} did not appear in {seconds} s"
        time.sleep(0.2)


def test_a_killed_study_continues_without_redoing_finished_stages(study_file, tmp_path, capsys):
    out = tmp_path / "out"
    first = out / "runs" / "tiny-vision_tower-freeze-false" / "pretrain" / "run" / "summary.json"
    process = subprocess.Popen([sys.executable, "-m", "graphspec.cli", "study", str(study_file), "-o", str(out)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        _wait_for(first, process)
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # the study and the stage it is running
        process.wait()
    done_at = first.stat().st_mtime_ns
    assert main(["study", str(study_file), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "tiny-vision_tower-freeze-false / pretrain: [1/4] complete, skipped" in printed
    assert printed.count("s after the stage's start") == 3  # the three stages this run ran (forked, see below)
    assert first.stat().st_mtime_ns == done_at
    with (out / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["variant"] for r in rows] == ["tiny-vision_tower-freeze-false", "tiny-vision_tower-freeze-true"]
    for r in rows:  # the table holds each stage's own summary, variant by variant
        ve = json.loads((out / "runs" / r["variant"] / "ve" / "run" / "summary.json").read_text())
        pretrain = json.loads((out / "runs" / r["variant"] / "pretrain" / "run" / "summary.json").read_text())
        assert float(r["ve.snli_ve_acc"]) == ve["val"]["snli_ve_acc"]
        assert float(r["pretrain step s"]) == pretrain["step_time_s"] > 0
        # a stage's start counts from its process's start too (DeepSpeed's start included)
        assert ve["process_first_step_s"] > ve["first_step_s"] > 0
        assert ve["first_step_at"] > pretrain["first_step_at"]
    assert int(rows[1]["frozen"]) > int(rows[0]["frozen"]) == 0
    assert "| tiny-vision_tower-freeze-true |" in (out / "results.md").read_text()
    for name in ("metrics_vs_compute.png", "learning_curves.png"):
        assert (out / "plots" / name).read_bytes()[:4] == b"\x89PNG"
    assert (out / "variants" / "tiny-vision_tower-freeze-true.yaml").is_file()


def test_an_unknown_study_key_is_located_with_a_hint(study_file):
    study_file.write_text(study_file.read_text().replace("from: pretrain", "form: pretrain"))
    with pytest.raises(SpecError) as info:
        plan_study(study_file, compile_check=False)
    assert "study.yaml:7:" in info.value.format() and "stages.ve.form: Extra inputs are not permitted" in \
        info.value.format() and "did you mean 'from'?" in info.value.format()


def test_a_missing_stage_spec_is_reported_once_at_its_field(study_file):
    study_file.write_text(study_file.read_text().replace("specs/ve.yaml", "specs/vee.yaml"))
    with pytest.raises(SpecError) as info:
        plan_study(study_file, compile_check=False)
    message = info.value.format()
    assert "study.yaml:7:" in message and "stages.ve.spec: no spec file 'specs/vee.yaml' beside the study" in message
    assert message.count("vee.yaml'") == 1 and "tiny-vision_tower" not in message


def test_plots_of_a_metric_no_variant_has(study_file, tmp_path):
    """A stage without validation (a metric missing for every variant, or for all but one) still plots."""
    from graphspec.studies.compare import _plots

    study = plan_study(study_file, compile_check=False)
    names = [v.name for v in study.variants]
    for first_has in (None, 0.5):
        table = [{"variant": n, "total h": 0.001, "pretrain.itm_acc": None, "ve.snli_ve_acc": None}
                 for n in names]
        table[1]["ve.snli_ve_acc"] = first_has
        written = _plots(study, tmp_path, table)
        assert [p.name for p in written] == ["metrics_vs_compute.png", "learning_curves.png"]
        assert written[0].read_bytes()[:4] == b"\x89PNG"


def test_a_stage_process_writes_its_log_and_returns_the_commands_exit_code(tiny, write_spec, tmp_path):
    from graphspec.studies.stages import run_stage

    log = tmp_path / "log.txt"
    assert run_stage(["validate", str(write_spec(tiny))], str(log), dict(os.environ)) == (0, False)
    tiny["nodes"]["fusion"]["inputs"]["image"] = "nowhere"
    assert run_stage(["validate", str(write_spec(tiny, "bad.yaml"))], str(log), dict(os.environ)) == (2, False)
    text = log.read_text()
    assert "bad.yaml" in text and "nowhere" in text and "Traceback" not in text
