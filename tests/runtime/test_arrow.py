"""ViLT / METER / Renaissance Arrow tables: every family read back from tables in the writers' own layout.

The tables are built here with the column names, column order and Arrow types that
the original write_*.py scripts produce (a pandas DataFrame -> pa.Table.from_pandas ->
pa.RecordBatchFileWriter; pandas infers the same types as pa.Table.from_pylist).
"""

from __future__ import annotations

import io

import pytest

pa = pytest.importorskip("pyarrow")

from PIL import Image  # noqa: E402

from graphspec.language.errors import SpecError  # noqa: E402
from graphspec.runtime.data.arrow import (ReadStats, check_arrow, decode_image, describe, load_images, read_arrow,  # noqa: E402
                                read_table, table_files)


def png(color, size=(8, 6)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def jpeg(color, size=(10, 7)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="JPEG")
    return buf.getvalue()


def write(path, columns, rows):
    """Write rows (lists, in `columns` order) the way ViLT's write_*.py do."""
    table = pa.Table.from_pylist([dict(zip(columns, r)) for r in rows])
    assert table.column_names == list(columns)
    with pa.OSFile(str(path), "wb") as sink:
        with pa.RecordBatchFileWriter(sink, table.schema) as writer:
            writer.write_table(table)
    return table.schema


CAPTION_COLUMNS = ["image", "caption", "image_id", "split"]  # write_coco_karpathy / f30k / sbu / conceptual_caption
RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def rgb(image):
    return image.getpixel((0, 0))


def close(a, b, tol=8):
    return all(abs(x - y) <= tol for x, y in zip(a, b))


# --------------------------------------------------------------------------- every family round-trips


def test_coco_karpathy_captions(tmp_path):
    caps = ["a red square.", "a red block", "red!", "a red block", "something red"]  # one repeated caption
    schema = write(tmp_path / "coco_caption_karpathy_train.arrow", CAPTION_COLUMNS,
                   [[jpeg(RED), caps, "COCO_train2014_000000000009.jpg", "train"],
                    [png(GREEN), ["a green thing"], "COCO_train2014_000000000025.jpg", "train"]])
    assert str(schema.field("image").type) == "binary" and str(schema.field("caption").type) == "list<item: string>"
    write(tmp_path / "coco_caption_karpathy_restval.arrow", CAPTION_COLUMNS,
          [[png(BLUE), ["blue one", "blue two"], "COCO_val2014_000000000042.jpg", "restval"]])
    write(tmp_path / "coco_caption_karpathy_val.arrow", CAPTION_COLUMNS, [[png(BLUE), ["v"], "x.jpg", "val"]])

    recs = list(read_arrow(tmp_path, "coco_caption_karpathy", "train"))
    # ViLT's train split = train + restval; repeated captions read once (list(set(...)))
    assert [r["text"] for r in recs] == ["a red square.", "a red block", "red!", "something red",
                                        "a green thing", "blue one", "blue two"]
    assert [r["table"] for r in recs] == ["coco_caption_karpathy_train"] * 5 + ["coco_caption_karpathy_restval"] * 2
    assert recs[0]["id"] == "COCO_train2014_000000000009.jpg" and recs[0]["family"] == "coco_caption_karpathy"
    assert recs[0]["region"] is None and (recs[1]["row"], recs[1]["entry"]) == (0, 1)
    assert isinstance(recs[0]["image"], bytes)
    img = decode_image(recs[0]["image"], recs[0]["where"])
    assert img.mode == "RGB" and img.size == (10, 7) and close(rgb(img), RED)
    assert close(rgb(load_images(recs[-1])[0]), BLUE)
    assert len(list(read_arrow(tmp_path, "coco", "train", dedupe_captions=False))) == 8
    assert [r["text"] for r in read_arrow(tmp_path, "coco_caption_karpathy", "val")] == ["v"]


def test_f30k_sharded_gcc_sbu_and_vg(tmp_path):
    write(tmp_path / "f30k_caption_karpathy_test.arrow", CAPTION_COLUMNS,
          [[jpeg(RED), ["a", "b", "c", "d", "e"], "1000092795.jpg", "test"]])
    assert len(list(read_arrow(tmp_path, "f30k_caption_karpathy", "test"))) == 5
    for i in (0, 1, 10):  # numbered shards, read in numeric order
        write(tmp_path / f"conceptual_caption_train_{i}.arrow", CAPTION_COLUMNS,
              [[png(GREEN), [f"gcc {i}"], f"{i}.jpg", "train"]])
    assert [r["text"] for r in read_arrow(tmp_path, "gcc", "train")] == ["gcc 0", "gcc 1", "gcc 10"]
    write(tmp_path / "sbu_0.arrow", CAPTION_COLUMNS, [[png(BLUE), ["sbu caption"], "s.jpg", "train"]])
    assert [r["text"] for r in read_arrow(tmp_path, "sbu", "train")] == ["sbu caption"]
    # write_vg.py: one region (x, y, width, height) per caption
    schema = write(tmp_path / "vg.arrow", ["image", "caption", "width", "height", "x", "y", "image_id"],
                   [[jpeg(RED), ["left dog", "right cat"], [4, 3], [2, 5], [0, 6], [1, 2], "1"]])
    assert str(schema.field("width").type) == "list<item: int64>"
    recs = list(read_arrow(tmp_path, "vg", "train"))
    assert [(r["text"], r["region"]) for r in recs] == [("left dog", [0, 1, 4, 3]), ("right cat", [6, 2, 9, 7])]


def test_nlvr2_two_images_per_row(tmp_path):
    write(tmp_path / "nlvr2_train.arrow", ["image_0", "image_1", "questions", "answers", "identifier"],
          [[png(RED), jpeg(BLUE), ["the left image is red", "both are blue"], ["True", "False"], "train-10171-0-0"]])
    recs = list(read_arrow(tmp_path, "nlvr2", "train"))
    assert [(r["text"], r["label"]) for r in recs] == [("the left image is red", True), ("both are blue", False)]
    assert recs[0]["id"] == "train-10171-0-0" and recs[1]["entry"] == 1
    left, right = load_images(recs[1])
    assert close(rgb(left), RED) and close(rgb(right), BLUE) and right.size == (10, 7)
    decoded = list(read_arrow(tmp_path, "nlvr2", "train", decode_images=True))
    assert all(isinstance(i, Image.Image) for i in decoded[0]["images"])


def test_nlvr2_val_reads_dev_and_test1(tmp_path):
    row = [png(RED), png(GREEN), ["q"], ["True"], "dev-1-0-0"]
    for name in ("nlvr2_dev", "nlvr2_test1"):
        write(tmp_path / f"{name}.arrow", ["image_0", "image_1", "questions", "answers", "identifier"], [row])
    assert [r["table"] for r in read_arrow(tmp_path, "nlvr2", "val")] == ["nlvr2_dev", "nlvr2_test1"]
    assert [r["table"] for r in read_arrow(tmp_path, "nlvr2", tables=["nlvr2_test1"])] == ["nlvr2_test1"]


VQA_COLUMNS = ["image", "questions", "answers", "answer_labels", "answer_scores", "image_id", "question_id", "split"]


def test_vqav2_answers_and_scores(tmp_path):
    schema = write(tmp_path / "vqav2_train.arrow", VQA_COLUMNS,
                   [[jpeg(RED), ["what color?", "how many?"], [["red", "orange"], ["1"]], [[3, 17], [0]],
                     [[1.0, 0.3], [0.9]], 9, [9001, 9002], "train"]])
    assert str(schema.field("answer_scores").type) == "list<item: list<item: double>>"
    write(tmp_path / "vqav2_trainable_val.arrow", VQA_COLUMNS,
          [[png(GREEN), ["is it green?"], [["yes"]], [[5]], [[1.0]], 42, [42000], "val"]])
    recs = list(read_arrow(tmp_path, "vqav2", "train"))
    assert [r["text"] for r in recs] == ["what color?", "how many?", "is it green?"]
    assert recs[0]["answers"] == {"red": 1.0, "orange": 0.3}
    assert recs[0]["answer_labels"] == [3, 17] and recs[0]["answer_scores"] == [1.0, 0.3]
    assert recs[1]["id"] == 9002 and recs[1]["answers"] == {"1": 0.9} and recs[2]["table"] == "vqav2_trainable_val"


def test_vqav2_test_split_has_no_answers(tmp_path):
    # write_vqa.py stores list(list()) for the answers of test splits: empty lists, typed list<null>
    schema = write(tmp_path / "vqav2_test.arrow", VQA_COLUMNS,
                   [[png(BLUE), ["what is it?"], [], [], [], 1, [1000], "test"]])
    assert str(schema.field("answers").type) == "list<item: null>"
    [rec] = read_arrow(tmp_path, "vqa", "test")
    assert rec["text"] == "what is it?" and rec["answers"] == {} and rec["answer_labels"] == [] and rec["id"] == 1000


def test_snli_ve_hypothesis_and_labels(tmp_path):
    schema = write(tmp_path / "snli_train.arrow", ["image", "sentences", "labels"],
                   [[jpeg(GREEN), [["Two dogs run.", "Animals move. "], ["Two dogs run.", "Cats sleep."],
                                   ["Two dogs run.", "The dogs are old."]], [2, 0, 1]]])
    assert str(schema.field("sentences").type) == "list<item: list<item: string>>"
    recs = list(read_arrow(tmp_path, "snli_ve", "train"))
    assert [(r["text"], r["label"]) for r in recs] == [("Animals move.", 2), ("Cats sleep.", 0),
                                                       ("The dogs are old.", 1)]
    assert recs[0]["premise"] == "Two dogs run." and recs[0]["family"] == "snli"


def test_refcoco_boxes_and_target(tmp_path):
    # Renaissance write_refcoco.py: every COCO box of the image ([x, y, w, h]) and the index of the referred one
    schema = write(tmp_path / "refcoco_unc_train.arrow", ["image", "sentences", "bboxes", "labels"],
                   [[jpeg(RED, (40, 30)), ["man on left", "guy left"], [[1.5, 2.0, 10.0, 20.0], [20, 5, 8, 8]], 0],
                    [png(BLUE), ["right one"], [[0, 0, 3, 3], [4.0, 1.0, 2.0, 2.0]], 1]])
    assert str(schema.field("labels").type) == "int64"
    assert str(schema.field("bboxes").type) == "list<item: list<item: double>>"
    recs = list(read_arrow(tmp_path, "refcoco", "train"))
    assert [(r["text"], r["target"]) for r in recs] == [("man on left", 0), ("guy left", 0), ("right one", 1)]
    assert recs[0]["boxes"] == [[1.5, 2.0, 11.5, 22.0], [20.0, 5.0, 28.0, 13.0]]
    assert recs[2]["boxes"][recs[2]["target"]] == [4.0, 1.0, 6.0, 3.0]
    assert describe(tmp_path, "refcoco", "train")[0].rows == 2


def test_read_table_of_a_single_file(tmp_path):
    write(tmp_path / "my_captions.arrow", CAPTION_COLUMNS, [[png(RED), ["x"], "1", "train"]])
    assert [r["text"] for r in read_table(tmp_path / "my_captions.arrow", "coco")] == ["x"]


# --------------------------------------------------------------------------- clear errors


def message(info) -> str:
    return info.value.format()


def test_missing_table_file_names_expected_and_present(tmp_path):
    write(tmp_path / "coco_caption_karpathy_train.arrow", CAPTION_COLUMNS, [[png(RED), ["x"], "1", "train"]])
    (tmp_path / "notes.txt").write_text("")
    with pytest.raises(SpecError) as info:
        read_arrow(tmp_path, "coco_caption_karpathy", "train")  # restval is missing: raised before any row
    text = message(info)
    assert "no table file 'coco_caption_karpathy_restval.arrow' in " + str(tmp_path) in text
    assert "files there: coco_caption_karpathy_train.arrow, notes.txt" in text
    assert "write_coco_karpathy.py" in text
    with pytest.raises(SpecError) as info:
        table_files(tmp_path, "sbu", "train")
    assert "no table files 'sbu_<N>.arrow' (numbered shards)" in message(info)
    with pytest.raises(SpecError) as info:
        read_arrow(tmp_path / "nowhere", "nlvr2")
    assert f"the Arrow data directory {tmp_path / 'nowhere'} does not exist" in message(info)


def test_unknown_family_and_split(tmp_path):
    with pytest.raises(SpecError) as info:
        read_arrow(tmp_path, "nlrv2")
    assert "unknown Arrow table family 'nlrv2'" in message(info) and "did you mean 'nlvr2'?" in message(info)
    with pytest.raises(SpecError) as info:
        read_arrow(tmp_path, "sbu", "val")
    assert "the sbu tables have no 'val' split" in message(info)


def test_wrong_column_type_names_column_file_and_columns(tmp_path):
    path = tmp_path / "coco_caption_karpathy_test.arrow"
    write(path, CAPTION_COLUMNS, [[png(RED), "a caption, not a list", "1", "test"]])
    with pytest.raises(SpecError) as info:
        read_arrow(tmp_path, "coco", "test")
    text = message(info)
    assert f"{path}: column 'caption' has type string, expected list<string>" in text
    assert "columns present: image (binary), caption (string), image_id (string), split (string)" in text


def test_missing_column_suggests_the_near_name(tmp_path):
    path = tmp_path / "nlvr2_train.arrow"
    write(path, ["image_0", "image1", "questions", "answers", "identifier"],
          [[png(RED), png(BLUE), ["q"], ["True"], "x"]])
    with pytest.raises(SpecError) as info:
        read_arrow(tmp_path, "nlvr2", "train")
    text = message(info)
    assert f"{path}: no column 'image_1'" in text and "columns present: image_0 (binary), image1 (binary)" in text
    assert "did you mean 'image1'?" in text


def test_bad_image_names_file_row_and_column(tmp_path):
    path = tmp_path / "nlvr2_train.arrow"
    write(path, ["image_0", "image_1", "questions", "answers", "identifier"],
          [[png(RED), png(BLUE), ["ok"], ["True"], "a"],
           [png(RED), b"not an image at all", ["broken"], ["False"], "b"]])
    recs = read_arrow(tmp_path, "nlvr2", "train")
    assert next(recs)["text"] == "ok"
    with pytest.raises(SpecError) as info:
        next(recs)
    text = message(info)
    assert f"cannot read the image in {path} row 1 column 'image_1'" in text
    assert "skip_bad=True" in text
    with pytest.raises(SpecError) as info:
        decode_image(png(RED)[:30], "somewhere.arrow row 7 column 'image'")
    assert "cannot read the image in somewhere.arrow row 7 column 'image'" in message(info)


def test_skip_bad_counts_what_it_skips(tmp_path):
    write(tmp_path / "nlvr2_train.arrow", ["image_0", "image_1", "questions", "answers", "identifier"],
          [[png(RED), png(BLUE), ["a", "b"], ["True", "maybe"], "1"],  # one malformed answer: that entry only
           [b"", png(BLUE), ["c"], ["True"], "2"],  # empty image: the whole row
           [png(RED), png(BLUE), ["d", "e"], ["False"], "3"],  # 2 questions, 1 answer: the whole row
           [png(GREEN), png(GREEN), ["f"], ["False"], "4"]])
    with pytest.raises(SpecError) as info:
        list(read_arrow(tmp_path, "nlvr2", "train"))
    assert "row 0 column 'answers': answer 1 is 'maybe', expected \"True\" or \"False\"" in message(info)
    with pytest.raises(TypeError, match="skip_bad=True needs stats"):
        read_arrow(tmp_path, "nlvr2", "train", skip_bad=True)
    stats = ReadStats()
    recs = list(read_arrow(tmp_path, "nlvr2", "train", skip_bad=True, stats=stats))
    assert [r["text"] for r in recs] == ["a", "f"]
    assert stats.as_dict() == {"read": 2, "rows": 4, "skipped": 3,
                               "reasons": {"malformed entry": 2, "unreadable image": 1}}
    assert any("row 1 column 'image_0': it holds 0 bytes" in m for m in stats.messages)
    with pytest.raises(SpecError) as info:
        check_arrow(tmp_path, "nlvr2", "train")  # every problem at once
    text = message(info)
    assert "3 bad rows or entries" in text and "row 0" in text and "row 1" in text and "row 2" in text


def test_malformed_rows_of_other_families(tmp_path):
    write(tmp_path / "refcoco_unc_val.arrow", ["image", "sentences", "bboxes", "labels"],
          [[png(RED), ["x"], [[0, 0, 1, 1]], 3]])
    with pytest.raises(SpecError) as info:
        list(read_arrow(tmp_path, "refcoco", "val"))
    assert "row 0 column 'labels': label 3 is not the index of one of the 1 boxes" in message(info)
    write(tmp_path / "snli_dev.arrow", ["image", "sentences", "labels"], [[png(RED), [["p", "h"]], [7]]])
    write(tmp_path / "snli_test.arrow", ["image", "sentences", "labels"], [[png(RED), [["p", "h"]], [1]]])
    stats = ReadStats()
    assert [r["table"] for r in read_arrow(tmp_path, "snli", "val", skip_bad=True, stats=stats)] == ["snli_test"]
    assert stats.reasons == {"malformed entry": 1} and "snli_dev.arrow row 0 column 'labels'" in stats.messages[0]


@pytest.mark.parametrize("wide", [False, True])
@pytest.mark.parametrize("compression", [None, "lz4"])
def test_image_cells_read_from_the_file_as_pyarrow_reads_them(tmp_path, wide, compression):
    """A lazy image reference reads its cell from the file at the offset the column's buffers give (no scalar,
    no page of the map touched): the same bytes as pyarrow's, for nulls, empty cells, several record batches,
    64-bit offsets and compressed tables (whose buffers are in memory, not in the map)."""
    import pyarrow as pa

    from graphspec.runtime.data.images import ArrowImage

    values = [b"first", None, b"", b"\x00\xff" * 50, b"last"] * 3
    table = pa.table({"image": pa.array(values, pa.large_binary() if wide else pa.binary())})
    path = tmp_path / "cells.arrow"
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(
            sink, table.schema, options=pa.ipc.IpcWriteOptions(compression=compression)) as writer:
        writer.write_table(table, max_chunksize=4)
    reader = pa.ipc.open_file(pa.memory_map(str(path)))
    assert reader.num_record_batches == 4
    for b in range(reader.num_record_batches):
        column = reader.get_batch(b).column("image")
        for row in range(len(column)):
            got = ArrowImage(str(path), b, row, "image").encoded()
            assert (None if got is None else bytes(got)) == column[row].as_py(), (b, row)
