"""Arrow tables whose offsets lie: a cell that claims about 2 GB, one that ends before it starts, a negative
offset. Each is a bad row named by file, row and column, before anything is read or allocated by it; with
skip_bad the run trains on and counts it."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

pa = pytest.importorskip("pyarrow")

from graphspec.cli import main  # noqa: E402
from graphspec.language.errors import SpecError  # noqa: E402
from graphspec.runtime.data.arrow import ReadStats, read_arrow  # noqa: E402
from graphspec.runtime.data.images import ArrowImage  # noqa: E402
from graphspec.runtime.data.records import BadData  # noqa: E402


def png(color, size=(40, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def write_snli(path, rows: int = 4) -> None:
    colors = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]
    table = pa.Table.from_pylist([{"image": png(colors[i % 4]), "sentences": [["a premise", "the picture"]],
                                   "labels": [i % 3]} for i in range(rows)])
    with pa.OSFile(str(path), "wb") as sink, pa.RecordBatchFileWriter(sink, table.schema) as writer:
        writer.write_table(table)


def lie(path, how: str, row: int = 1) -> None:
    """Rewrite the image column's offsets of `row` in the file itself."""
    source = pa.memory_map(str(path), "r")
    reader = pa.ipc.open_file(source)
    column = reader.get_batch(0).column("image")
    source.seek(0)
    base = source.read_buffer(1).address
    at = column.buffers()[1].address - base  # the offsets buffer's place in the file
    offsets = np.frombuffer(column.buffers()[1], dtype=np.int32).copy()
    first, last = offsets[row], offsets[row + 1]
    if how == "huge":
        offsets[row + 1] = 2**31 - 1
    elif how == "backwards":
        offsets[row + 1] = first - 10
    else:
        offsets[row] = -5
    del column, reader, source
    with open(path, "r+b") as f:
        f.seek(at)
        f.write(offsets.tobytes())
    assert last > first


@pytest.mark.parametrize("how", ["huge", "backwards", "negative"])
def test_a_lying_offset_is_a_bad_cell_named_by_row_and_column(tmp_path, how):
    path = tmp_path / "snli_train.arrow"
    write_snli(path)
    lie(path, how)
    where = f"{path} row 1 column 'image'"
    with pytest.raises(BadData, match="the cell cannot be read: its offsets say bytes") as info:
        ArrowImage(str(path), 0, 1, "image", where).encoded()
    assert info.value.message.startswith(where)
    if how != "negative":  # row 1's first offset is row 0's last: a negative one breaks both
        assert ArrowImage(str(path), 0, 0, "image", "row 0").encoded() is not None  # the row before is fine
    stats = ReadStats()
    rows = list(read_arrow(tmp_path, "snli", "train", skip_bad=True, stats=stats))  # every column read, checked
    assert stats.skipped >= 1 and any(f"{path} row 1" in m for m in stats.messages), stats.messages
    assert len(rows) < 4 * 1
    with pytest.raises(SpecError, match=r"row [01] \(record batch 0\): column 'image': its buffers do not hold"):
        list(read_arrow(tmp_path, "snli", "train"))


@pytest.mark.integration
def test_a_run_names_the_row_or_skips_it_and_check_data_reports_it(train_spec, tmp_path, capsys):
    write_snli(tmp_path / "snli_train.arrow", rows=6)
    lie(tmp_path / "snli_train.arrow", "huge", row=2)
    train_spec.update(heads={"snli_ve": {"kind": "classify", "input": "pooled", "classes": 3}},
                      objectives={"snli_ve": {"kind": "classify"}},
                      data={"train": {"task": "snli_ve", "source": f"arrow:{tmp_path}"}})
    train_spec["train"].update(steps=3, batch_size=6, schedule={"warmup": 0}, val_every=None)
    (tmp_path / "spec.yaml").write_text(json.dumps(train_spec))
    assert main(["run", str(tmp_path / "spec.yaml"), "--run-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'snli_train.arrow'} row 2 column 'image'" in err and "Traceback" not in err, err
    assert main(["check-data", str(tmp_path / "spec.yaml"), "--workers", "2"]) == 2
    out, err = capsys.readouterr()
    assert "row 2 column 'image'" in err and "bad cell" in out and "Traceback" not in err, (out, err)
    assert main(["run", str(tmp_path / "spec.yaml"), "--set", "data.train.skip_bad=true",
                 "--run-dir", str(tmp_path / "skipping")]) == 0
    summary = json.loads((tmp_path / "skipping" / "summary.json").read_text())
    assert summary["data"]["train_reads"]["bad_images_replaced"] >= 1
