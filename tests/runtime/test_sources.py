"""Training from files: Arrow tables in the original layouts (SNLI-VE, COCO/VG captions) and JSONL manifests."""

from __future__ import annotations

import io
import json

import pytest
from PIL import Image

from graphspec.runtime.train import run

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


def test_snli_ve_from_an_arrow_table_with_a_bad_image_replaced(train_spec, compile_build, tmp_path, capsys):
    """The bad image is found when a batch decodes it (indexing reads no image), replaced by the next sample of
    its batch and counted; check-data finds it up front, naming file, row and column."""
    from graphspec.cli import main

    rows = [[png((255, 0, 0)), [["a premise", "the picture is red"], ["p", "the picture is blue"]], [2, 0]],
            [b"not an image", [["p", "anything"]], [1]],
            [png((0, 0, 255)), [["p", "the picture is blue"]], [2]]]
    write_snli(tmp_path / "snli_train.arrow", rows)
    spec = _finetune(train_spec, {"source": f"arrow:{tmp_path}", "skip_bad": True}, "snli_ve",
                     {"kind": "classify", "input": "pooled", "classes": 3})
    summary = run(compile_build(spec), tmp_path / "run", show_bar=False)
    assert summary["data"]["train"]["read"] == 4 and summary["data"]["train"]["skipped"] == 0  # indexed whole
    reads = summary["data"]["train_reads"]
    assert reads["bad_images_replaced"] >= 1 and reads["images_decoded"] == 2 * 4 + reads["bad_images_replaced"]
    (tmp_path / "spec.yaml").write_text(json.dumps(spec))
    capsys.readouterr()
    assert main(["check-data", str(tmp_path / "spec.yaml"), "--workers", "2"]) == 2
    out, err = capsys.readouterr()
    assert "train (arrow:" in out and "3 images decoded" in out and "1 bad (unreadable image: 1)" in out
    assert f"{tmp_path / 'snli_train.arrow'} row 1 column 'image'" in err and "Traceback" not in err
    rows[1][0] = png((0, 255, 0))
    write_snli(tmp_path / "snli_train.arrow", rows)
    assert main(["check-data", str(tmp_path / "spec.yaml")]) == 0
    assert "3 images decoded" in capsys.readouterr().out


def test_a_bad_image_stops_the_run_without_skip_bad(train_spec, compile_build, tmp_path):
    from graphspec.language.errors import GraphspecError

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


def write_captions(path, rows):
    """A caption table in write_coco_karpathy.py's layout: image, caption (list), image_id, split."""
    table = pa.Table.from_pylist([dict(zip(["image", "caption", "image_id", "split"], r)) for r in rows])
    with pa.OSFile(str(path), "wb") as sink, pa.RecordBatchFileWriter(sink, table.schema) as writer:
        writer.write_table(table)


COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "white": (255, 255, 255)}


def test_captions_pretraining_from_coco_and_vg_arrow_tables(train_spec, compile_build, tmp_path):
    rows = [[png(rgb), [f"a {name} picture", f"all {name}"], i, "train"] for i, (name, rgb) in
            enumerate(COLOURS.items())]
    write_captions(tmp_path / "coco_caption_karpathy_train.arrow", rows[:2])
    write_captions(tmp_path / "coco_caption_karpathy_restval.arrow", rows[2:])
    write_captions(tmp_path / "coco_caption_karpathy_val.arrow", rows[:2])
    vg = pa.Table.from_pylist([{"image": png((9, 9, 9)), "caption": ["a dark picture"], "x": [0], "y": [0],
                                "width": [4], "height": [4], "image_id": 7}])
    with pa.OSFile(str(tmp_path / "vg.arrow"), "wb") as sink, pa.RecordBatchFileWriter(sink, vg.schema) as writer:
        writer.write_table(vg)
    train_spec["data"] = {"train": {"source": f"arrow:{tmp_path}", "family": ["coco", "vg"]},
                          "val": {"source": f"arrow:{tmp_path}", "split": "val"}}
    train_spec["train"].update(steps=2, batch_size=4, schedule={"warmup": 0}, val_every=None)
    summary = run(compile_build(train_spec), tmp_path / "run", show_bar=False)
    assert summary["data"]["train"]["read"] == 9 and summary["data"]["val"]["read"] == 4
    assert "itm_acc" in summary["val"]


def test_caption_pairs_from_a_jsonl_manifest(tmp_path):
    import graphspec
    from graphspec.runtime.tasks.captions import pair_source
    from graphspec.language.schema import DataSource
    from tests.conftest import TINY

    for name, rgb in COLOURS.items():
        (tmp_path / f"{name}.png").write_bytes(png(rgb, (8, 8)))
    lines = [{"image": f"{name}.png", "text": [f"a {name} square", f"{name} everywhere"]} for name in COLOURS]
    (tmp_path / "captions.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    source = DataSource(source=f"jsonl:{tmp_path / 'captions.jsonl'}")
    spec = graphspec.Spec.model_validate({**TINY, "data": {"train": source.model_dump()}})
    stats = {}
    pairs = pair_source(spec, spec.roles(), source, "train", stats)
    assert stats == {"train": {"read": 8, "rows": 4, "skipped": 0, "reasons": {}}}
    assert len(pairs) == 4 and len(pairs.texts()) == 8
    plan = pairs.plan(64, 0.5, seed=0, index=3)
    assert plan == pairs.plan(64, 0.5, seed=0, index=3)  # a function of (seed, index)
    for i, text, match in zip(plan.images, plan.texts, plan.match):
        pixels, _ = pairs.image(i).load()
        colour = next(n for n, rgb in COLOURS.items() if tuple(int(v) for v in pixels[0, 0]) == rgb)
        assert (colour in text) == bool(match), (text, colour, match)  # negatives come from other images
    assert 0 < sum(plan.match) < 64
    evals = pairs.eval_plans(2)
    assert [p.match for p in evals] == [[1, 0]] * 4


def test_several_families_are_for_captions_only(train_spec, compile_build, tmp_path):
    from graphspec.language.errors import GraphspecError

    spec = _finetune(train_spec, {"source": f"arrow:{tmp_path}", "family": ["snli", "nlvr2"]}, "snli_ve",
                     {"kind": "classify", "input": "pooled", "classes": 3})
    with pytest.raises(GraphspecError) as info:
        run(compile_build(spec), tmp_path / "run", show_bar=False)
    assert "data.train.family: the snli_ve task reads one table family, not 2" in info.value.format()


def test_a_missing_caption_table_names_the_files(train_spec, compile_build, tmp_path):
    from graphspec.language.errors import GraphspecError

    train_spec["data"]["train"] = {"source": f"arrow:{tmp_path}"}
    with pytest.raises(GraphspecError) as info:
        run(compile_build(train_spec), tmp_path / "run", show_bar=False)
    assert "coco_caption_karpathy_train.arrow" in info.value.format()


def test_vqa_from_a_manifest_evaluates_with_the_vocabulary_it_trained_with(train_spec, compile_build, tmp_path,
                                                                          capsys):
    from graphspec.cli import main

    for name, rgb in COLOURS.items():
        (tmp_path / f"{name}.png").write_bytes(png(rgb))
    lines = [{"image": f"{name}.png", "text": "what colour is it?", "answers": {name: 1.0}} for name in COLOURS]
    (tmp_path / "vqa.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    (tmp_path / "val.jsonl").write_text(json.dumps(lines[0]) + "\n")
    spec = _finetune(train_spec, {"source": f"jsonl:{tmp_path / 'vqa.jsonl'}"}, "vqa",
                     {"kind": "vqa", "input": "pooled", "answers": len(COLOURS)})
    spec["data"]["val"] = {"source": f"jsonl:{tmp_path / 'val.jsonl'}", "task": "vqa"}
    summary = run(compile_build(spec), tmp_path / "run", show_bar=False)
    state = json.loads((tmp_path / "run" / "checkpoint" / "state.json").read_text())
    assert state["answers"] == sorted(COLOURS)
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "run")]) == 0  # the val manifest alone names one answer of the four
    assert json.loads(capsys.readouterr().out)["vqa_score"] == summary["val"]["vqa_score"]


def test_a_wide_image_is_squashed_not_cropped_so_region_boxes_stay_right(tiny):
    """RefCOCO boxes are fractions of the whole image: a centre crop of a wide image would cut its sides off."""
    import numpy as np

    from graphspec.compiler import build_model
    from graphspec.language.schema import Spec
    from graphspec.compiler.preprocess import image_transform

    spec = Spec.model_validate(tiny)
    model, _ = build_model(spec)
    wide = np.zeros((20, 80, 3), dtype=np.uint8)
    wide[:, :8] = (255, 0, 0)  # a red strip at the far left, a tenth of the width
    pixels = image_transform(spec, "image", model)(wide)  # (3, S, S)
    size = pixels.shape[-1]
    assert pixels[0, size // 2, 0] > pixels[0, size // 2, size // 2] + 1.0  # the strip survived, on the left
