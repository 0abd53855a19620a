"""JSONL manifest + image folder: every task round-trips, and every mistake is named by file:line."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from graphspec.language.errors import SpecError
from graphspec.runtime.data.arrow import ReadStats, load_images
from graphspec.runtime.data.jsonl import check_jsonl, read_jsonl
from graphspec.runtime.tasks import jsonl_layout

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "imgs").mkdir()
    Image.new("RGB", (8, 6), RED).save(tmp_path / "imgs" / "red.png")
    Image.new("RGB", (12, 9), BLUE).save(tmp_path / "imgs" / "blue.jpg")
    Image.new("RGB", (5, 5), GREEN).save(tmp_path / "imgs" / "green.png")
    (tmp_path / "imgs" / "broken.jpg").write_bytes(b"\xff\xd8 this is no jpeg")
    return tmp_path


def manifest(folder, lines, name="data.jsonl"):
    path = folder / name
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def close(a, b, tol=8):
    return all(abs(x - y) <= tol for x, y in zip(a, b))


def message(info) -> str:
    return info.value.format()


# --------------------------------------------------------------------------- tasks round-trip


def test_captions(folder):
    path = manifest(folder, [{"image": "imgs/red.png", "text": "a red square", "id": "r1"},
                             "",  # blank lines are ignored
                             {"image": "imgs/blue.jpg", "text": ["blue one", "blue two"], "source": "mine"}])
    recs = list(read_jsonl(path, jsonl_layout("captions")))
    assert [r["text"] for r in recs] == ["a red square", "blue one", "blue two"]
    assert recs[0]["id"] == "r1" and recs[1]["id"] is None and recs[1]["extra"] == {"source": "mine"}
    assert (recs[2]["row"], recs[2]["entry"], recs[2]["where"]) == (3, 1, f"{path}:3")
    assert recs[0]["region"] is None and recs[0]["table"] == "data.jsonl"
    assert isinstance(recs[0]["image"], bytes)
    [img] = load_images(recs[1])
    assert img.size == (12, 9) and close(img.getpixel((0, 0)), BLUE)


def test_nlvr2_two_images(folder):
    path = manifest(folder, [{"images": ["imgs/red.png", "imgs/blue.jpg"], "text": "left is red", "label": True},
                             {"images": ["imgs/green.png", "imgs/green.png"], "text": "both red", "label": False}])
    recs = list(read_jsonl(path, jsonl_layout("nlvr2")))
    assert [(r["text"], r["label"]) for r in recs] == [("left is red", True), ("both red", False)]
    left, right = load_images(recs[0])
    assert close(left.getpixel((0, 0)), RED) and close(right.getpixel((0, 0)), BLUE)
    assert recs[0]["image_refs"] == ("image 'imgs/red.png'", "image 'imgs/blue.jpg'")


def test_snli_ve_labels_by_number_or_name(folder):
    path = manifest(folder, [{"image": "imgs/red.png", "text": "it is red", "label": 2, "premise": "a red tile"},
                             {"image": "imgs/red.png", "text": "it is blue", "label": "contradiction"}])
    recs = list(read_jsonl(path, jsonl_layout("snli_ve")))
    assert [(r["text"], r["label"], r["premise"]) for r in recs] == [("it is red", 2, "a red tile"),
                                                                     ("it is blue", 0, None)]


def test_vqa_answer_scores(folder):
    path = manifest(folder, [{"image": "imgs/red.png", "text": "what color?", "answers": {"red": 1.0, "orange": 0.3}},
                             {"image": "imgs/blue.jpg", "text": "unlabeled?", "answers": {}}])
    recs = list(read_jsonl(path, jsonl_layout("vqa")))
    assert recs[0]["answers"] == {"red": 1.0, "orange": 0.3} and recs[0]["answer_scores"] == [1.0, 0.3]
    assert recs[0]["answer_labels"] is None and recs[1]["answers"] == {}


def test_refexp_boxes_and_absolute_paths(folder):
    absolute = str(folder / "imgs" / "blue.jpg")
    path = manifest(folder, [{"image": absolute, "text": "the right box", "boxes": [[0, 0, 4, 4], [5, 1, 11, 8]],
                              "target": 1}])
    [rec] = read_jsonl(path, jsonl_layout("refexp"), decode_images=True)
    assert rec["boxes"] == [[0.0, 0.0, 4.0, 4.0], [5.0, 1.0, 11.0, 8.0]] and rec["target"] == 1
    assert isinstance(rec["image"], Image.Image) and rec["image"].mode == "RGB"


def test_image_root(folder):
    path = manifest(folder, [{"image": "red.png", "text": "x"}], name="sub.jsonl")
    assert len(list(read_jsonl(path, jsonl_layout("captions"), image_root=folder / "imgs"))) == 1


# --------------------------------------------------------------------------- clear errors


def test_bad_json_line_is_named(folder):
    path = manifest(folder, [{"image": "imgs/red.png", "text": "ok"}, '{"image": "imgs/red.png", "text": "x"',
                             {"image": "imgs/red.png", "text": "fine"}])
    recs = read_jsonl(path, jsonl_layout("captions"))
    assert next(recs)["text"] == "ok"
    with pytest.raises(SpecError) as info:
        next(recs)
    assert f"{path}:2: not valid JSON" in message(info)


def test_missing_image_is_named(folder):
    path = manifest(folder, [{"image": "imgs/nope.png", "text": "x"}])
    with pytest.raises(SpecError) as info:
        list(read_jsonl(path, jsonl_layout("captions")))
    text = message(info)
    assert f"{path}:1: image file 'imgs/nope.png' not found (looked for {folder / 'imgs' / 'nope.png'})" in text
    assert f"image paths are relative to {folder}" in text


def test_unreadable_image_is_named(folder):
    path = manifest(folder, [{"image": "imgs/broken.jpg", "text": "x"}])
    with pytest.raises(SpecError) as info:
        list(read_jsonl(path, jsonl_layout("captions")))
    assert f"cannot read the image in {path}:1 image 'imgs/broken.jpg'" in message(info)


def test_missing_and_mistyped_fields(folder):
    path = manifest(folder, [{"images": ["imgs/red.png", "imgs/red.png"], "text": "x", "lable": True}])
    with pytest.raises(SpecError) as info:
        list(read_jsonl(path, jsonl_layout("nlvr2")))
    text = message(info)
    assert f"{path}:1: missing field 'label' (true or false) for task nlvr2" in text
    assert "did you mean 'lable'?" in text
    path = manifest(folder, [{"images": ["imgs/red.png", "imgs/red.png"], "text": "x", "label": "yes"}])
    with pytest.raises(SpecError) as info:
        list(read_jsonl(path, jsonl_layout("nlvr2")))
    assert f"{path}:1: field 'label' must be true or false (got 'yes')" in message(info)
    path = manifest(folder, [{"image": "imgs/red.png", "text": "x", "boxes": [[0, 0, 4, 4]], "target": 1}])
    with pytest.raises(SpecError) as info:
        list(read_jsonl(path, jsonl_layout("refexp")))
    assert "field 'target' must be the index of one of the 1 boxes (got 1)" in message(info)
    path = manifest(folder, [{"image": "imgs/red.png", "text": "x", "boxes": [[4, 0, 0, 4]], "target": 0}])
    with pytest.raises(SpecError) as info:
        list(read_jsonl(path, jsonl_layout("refexp")))
    assert "box 0 is [4, 0, 0, 4], expected [x0, y0, x1, y1] with x1 >= x0" in message(info)


def test_missing_manifest_and_unknown_task(folder):
    with pytest.raises(SpecError) as info:
        read_jsonl(folder / "train.jsonl", jsonl_layout("captions"))
    assert f"no manifest file {folder / 'train.jsonl'}; files in {folder}: imgs" in message(info)
    with pytest.raises(SpecError) as info:
        jsonl_layout("caption")
    assert "unknown task 'caption'" in message(info) and "did you mean 'captions'?" in message(info)


def test_skip_bad_counts_reasons(folder):
    path = manifest(folder, [{"image": "imgs/red.png", "text": "good"},
                             "not json",
                             {"image": "imgs/missing.png", "text": "x"},
                             {"image": "imgs/broken.jpg", "text": "x"},
                             {"image": "imgs/red.png"},
                             [1, 2],
                             {"image": "imgs/blue.jpg", "text": ["also", "good"]}])
    with pytest.raises(TypeError):
        read_jsonl(path, jsonl_layout("captions"), skip_bad=True)
    stats = ReadStats()
    recs = list(read_jsonl(path, jsonl_layout("captions"), skip_bad=True, stats=stats))
    assert [r["text"] for r in recs] == ["good", "also", "good"]
    assert stats.as_dict() == {"read": 3, "rows": 7, "skipped": 5,
                               "reasons": {"bad JSON": 1, "missing image file": 1, "unreadable image": 1,
                                           "malformed entry": 2}}
    with pytest.raises(SpecError) as info:
        check_jsonl(path, jsonl_layout("captions"))  # every bad line at once
    text = message(info)
    assert "5 bad rows or entries" in text
    assert all(f"{path}:{n}" in text for n in (2, 3, 4, 5, 6))
    good = manifest(folder, [{"image": "imgs/red.png", "text": "fine"}], name="good.jsonl")
    assert check_jsonl(good, jsonl_layout("captions")).as_dict()["read"] == 1


def test_a_line_too_long_is_named_and_never_held_whole(folder, monkeypatch):
    """A line over MAX_LINE (16 MiB; 100 bytes here) is a bad line, read past in chunks; the lines after it
    read as usual; skip_bad counts it."""
    from graphspec.runtime.data import jsonl

    monkeypatch.setattr(jsonl, "MAX_LINE", 100)
    long = json.dumps({"image": "imgs/red.png", "text": "x" * 500})
    path = manifest(folder, [{"image": "imgs/red.png", "text": "ok"}, long, {"image": "imgs/blue.jpg", "text": "b"},
                             b"\xff\xfe not text".decode("latin-1"), {"image": "imgs/green.png", "text": 7}])
    with pytest.raises(SpecError) as info:
        list(read_jsonl(path, jsonl_layout("captions")))
    assert f"{path}:2: the line is longer than 100 bytes (not read)" in message(info)
    stats = ReadStats()
    recs = list(read_jsonl(path, jsonl_layout("captions"), skip_bad=True, stats=stats))
    assert [r["text"] for r in recs] == ["ok", "b"] and stats.skipped == 3, stats.messages
    assert any(f"{path}:5:" in m for m in stats.messages)  # a number where the text belongs
