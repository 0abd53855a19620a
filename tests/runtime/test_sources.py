"""Fine-tuning from files: an Arrow table in the original SNLI-VE layout and a JSONL NLVR2 manifest."""

from __future__ import annotations

import io
import json

import pytest
from PIL import Image

from runtime.run import run

pa = pytest.importorskip("pyarrow")


def png(color, size=(40, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def write_snli(path, rows):
    table = pa.Table.from_pylist([dict(zip(["image", "sentences", "labels"], r)) for r in rows])
    with pa.OSFile(str(path), "wb") as sink, pa.RecordBatchFileWriter(sink, table.schema) as writer:
        writer.write_table(table)


def _finetune(train_spec, source: dict, task: str, head: dict):
    train_spec.update(heads={task: head}, objectives={task: {"kind": head["kind"]}},
                      data={"train": {"task": task, **source}})
    train_spec["train"].update(steps=2, batch_size=4, schedule={"warmup": 0}, val_every=None)
    return train_spec


def test_snli_ve_from_an_arrow_table_with_a_bad_image_skipped(train_spec, compile_build, tmp_path):
    rows = [[png((255, 0, 0)), [["a premise", "the picture is red"], ["p", "the picture is blue"]], [2, 0]],
            [b"not an image", [["p", "anything"]], [1]],
            [png((0, 0, 255)), [["p", "the picture is blue"]], [2]]]
    write_snli(tmp_path / "snli_train.arrow", rows)
    spec = _finetune(train_spec, {"source": f"arrow:{tmp_path}", "skip_bad": True}, "snli_ve",
                     {"kind": "classify", "input": "pooled", "classes": 3})
    summary = run(compile_build(spec), tmp_path / "run", show_bar=False)
    assert summary["data"]["train"]["skipped"] == 1 and summary["steps"] == 2
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["data"]["train"]["skipped"] == 1


def test_a_bad_image_stops_the_run_without_skip_bad(train_spec, compile_build, tmp_path):
    from graphspec.errors import GraphspecError

    write_snli(tmp_path / "snli_train.arrow", [[b"not an image", [["p", "h"]], [1]]])
    spec = _finetune(train_spec, {"source": f"arrow:{tmp_path}"}, "snli_ve",
                     {"kind": "classify", "input": "pooled", "classes": 3})
    with pytest.raises(GraphspecError) as info:
        run(compile_build(spec), tmp_path / "run", show_bar=False)
    assert "snli_train.arrow" in info.value.format() and "row 0" in info.value.format()


def test_nlvr2_from_a_jsonl_manifest(train_spec, compile_build, tmp_path):
    for name, color in (("a.png", (255, 0, 0)), ("b.png", (0, 255, 0))):
        (tmp_path / name).write_bytes(png(color))
    lines = [{"images": ["a.png", "b.png"], "text": "the left image is red", "label": True},
             {"images": ["b.png", "a.png"], "text": "the left image is red", "label": False}]
    (tmp_path / "nlvr2.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    spec = _finetune(train_spec, {"source": f"jsonl:{tmp_path / 'nlvr2.jsonl'}"}, "nlvr2",
                     {"kind": "pair_classify", "input": "pooled"})
    summary = run(compile_build(spec), tmp_path / "run", show_bar=False)
    assert summary["steps"] == 2 and summary["data"]["train"]["read"] == 2


def test_captions_from_files_are_refused_clearly(train_spec, compile_build, tmp_path):
    from graphspec.errors import GraphspecError

    train_spec["data"]["train"] = {"source": f"arrow:{tmp_path}"}
    with pytest.raises(GraphspecError) as info:
        run(compile_build(train_spec), tmp_path / "run", show_bar=False)
    assert "data.train.source: captions pretraining reads builtin:shapes only so far" in info.value.format()
