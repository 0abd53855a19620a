"""Readers for the Arrow tables that ViLT, METER and Renaissance users already prepared.

The tables are Arrow IPC *files* (``pa.RecordBatchFileWriter``) made from a pandas
DataFrame, one row per image, by the scripts named below (layouts read from those
sources; the Arrow types are those pandas' inference gives). Files are
``<data_dir>/<name>.arrow``:

coco_caption_karpathy  (ViLT vilt/utils/write_coco_karpathy.py)
    coco_caption_karpathy_{train,restval,val,test}
    image binary, caption list<string>, image_id string (file name), split string
f30k_caption_karpathy  (ViLT vilt/utils/write_f30k_karpathy.py)
    f30k_caption_karpathy_{train,val,test}; columns as coco
conceptual_caption, alias gcc  (ViLT vilt/utils/write_conceptual_caption.py)
    conceptual_caption_{train,val}_<N> (shards of 100k rows); columns as coco, one caption a row
sbu  (ViLT vilt/utils/write_sbu.py)
    sbu_<N> (shards); columns as coco, one caption a row
vg  (ViLT vilt/utils/write_vg.py)
    vg; image binary, caption list<string>, width/height/x/y list<int64> (the region
    of each caption), image_id string
nlvr2  (ViLT vilt/utils/write_nlvr2.py)
    nlvr2_{train,dev,test1,balanced_dev,balanced_test1,unbalanced_dev,unbalanced_test1}
    image_0 binary, image_1 binary, questions list<string>, answers list<string>
    ("True"/"False"), identifier string
vqav2  (ViLT vilt/utils/write_vqa.py)
    vqav2_{train,val,trainable_val,rest_val,test,test-dev}
    image binary, questions list<string>, answers list<list<string>>, answer_labels
    list<list<int64>>, answer_scores list<list<double>> (those three are empty lists,
    typed list<null>, on test splits), image_id int64, question_id list<int64>, split string
snli  (METER meter/utils/write_snli.py)
    snli_{train,dev,test}
    image binary, sentences list<list<string>> ([premise, hypothesis] pairs),
    labels list<int64> (0 contradiction, 1 neutral, 2 entailment)
refcoco  (Renaissance renaissance/utils/write_refcoco.py)
    refcoco_<splitBy>_{train,val,test} (splitBy unc by default), one row per referred object
    image binary, sentences list<string> (its expressions), bboxes list<list<double>>
    (every COCO box of the image, [x, y, w, h]), labels int64 (the index of the
    referred box in bboxes)

A split name maps to the tables ViLT's dataset classes read for it (METER's for
snli, Renaissance's for refcoco), e.g. coco ``train`` = ``coco_caption_karpathy_train``
+ ``coco_caption_karpathy_restval`` and vqav2 ``train`` = ``vqav2_train`` +
``vqav2_trainable_val``; see FAMILIES. METER instead trains on coco train + val and
vqav2 train + val: pass ``tables=[...]`` to read any other set of files.

VQA ``answer_labels`` are ids in the answer vocabulary write_vqa.py built (answers
seen >= 9 times in train + val); the vocabulary is not stored in the tables, the
answer strings are: build a vocabulary from ``answers`` rather than trusting the ids
across differently prepared directories.

Readers yield one plain dict per training example, as ViLT indexes them: a
caption row with 5 captions gives 5 examples, an NLVR2/VQA/SNLI row one per
question/sentence, a RefCOCO row one per expression. The reader knows no task:
each family's layout has its row expander (`arrow_rows`), and the records of the
families a task reads have the keys that task's JSONL manifests give too (see
`graphspec.runtime.data.jsonl`):

- every record: ``family``, ``text``, ``id`` (the table's own id, or None),
  ``table`` (the file's name without .arrow), ``row``, ``entry`` (index in the row),
  ``where`` (``"<file> row <n>"``) and ``image_refs`` (``"column 'image'"`` per image), for messages
- caption families: ``image``, ``region`` ([x0, y0, x1, y1] of the described region; VG only, else None)
- nlvr2: ``images`` (two images), ``label`` (bool)
- snli: ``image``, ``premise``, ``label`` (0 contradiction, 1 neutral, 2 entailment)
- vqav2: ``image``, ``answers`` ({answer: score}), ``answer_labels``, ``answer_scores``
  (ViLT's label ids and soft scores; all empty on test splits)
- refcoco: ``image``, ``boxes`` ([[x0, y0, x1, y1], ...] in pixels), ``target`` (index into boxes)

Images stay encoded (bytes) unless ``decode_images=True``; `decode_image` turns
them into RGB PIL images and names the row when it cannot. Every problem raises a
`SpecError` that names the file; with ``skip_bad=True`` bad rows/entries are
skipped instead and counted in a `ReadStats`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from graphspec.language.errors import Issue, SpecError, suggest

from .arrow_layouts import FAMILIES, KIND_TEXT, Column, TableSpec, arrow_kind, import_pyarrow, family_spec
from .arrow_rows import RowContext, expand_row
from .images import ArrowImage
from .records import (MAX_MESSAGES, SKIP_HINT, BadData, ReadStats, need_stats, check_image, decode_image,
                      load_images, raise_if_skipped)

SLICE_ROWS = 256  # rows converted to Python at a time: images are copied out of the memory map only this many at once


# --------------------------------------------------------------------------- finding and opening files


def _listing(directory: Path, limit: int = 20) -> str:
    names = sorted(p.name for p in directory.iterdir())
    if not names:
        return "none (the directory is empty)"
    names.sort(key=lambda n: (not n.endswith(".arrow"), n))
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def table_files(directory, family: str, split: str = "train", tables: Sequence[str] | None = None) -> list[Path]:
    """The .arrow files a split reads, in order; a SpecError naming what is missing and what is there."""
    spec = family_spec(family)
    directory = Path(directory)
    if not directory.is_dir():
        what = "is a file, not a directory" if directory.exists() else "does not exist"
        raise SpecError([Issue((), f"the Arrow data directory {directory} {what}",
                               f"point it at the folder {spec.writer} wrote its .arrow files to")],
                        title="the data directory is missing")
    asked = "named in tables" if tables is not None else f"split '{split}'"
    if tables is None:
        if split not in spec.splits:
            raise SpecError([Issue((), f"the {spec.family} tables have no '{split}' split "
                                       f"(ViLT/METER/Renaissance read {', '.join(spec.splits)} from them)",
                                   "use one of: " + ", ".join(spec.splits) + ", or name the tables (tables: [...])")],
                            title="the data block asks for a split the tables do not have")
        tables = spec.splits[split]
    files, issues = [], []
    for name in tables:
        name = name[:-6] if name.endswith(".arrow") else name
        if "{N}" in name:
            pattern = re.compile("^" + re.escape(name).replace(re.escape("{N}"), r"(\d+)") + r"\.arrow$")
            shards = sorted(((int(m.group(1)), p) for p in directory.iterdir() if (m := pattern.match(p.name))),
                            key=lambda x: x[0])
            if not shards:
                issues.append(Issue((), f"no table files '{name.replace('{N}', '<N>')}.arrow' (numbered shards) in "
                                        f"{directory} (family {spec.family}, {asked}); files there: "
                                        f"{_listing(directory)}",
                                    f"write them with {spec.writer}, or point the data directory at them"))
            files += [p for _, p in shards]
        else:
            path = directory / f"{name}.arrow"
            if path.is_file():
                files.append(path)
            else:
                issues.append(Issue((), f"no table file '{name}.arrow' in {directory} (family {spec.family}, "
                                        f"{asked}); files there: {_listing(directory)}",
                                    f"write it with {spec.writer}, or point the data directory at it"))
    if issues:
        raise SpecError(issues, title="Arrow table files are missing")
    return files


def _open(path: Path):
    """(schema, iterator of record batches) of an Arrow IPC file (or stream)."""
    pa = import_pyarrow()

    try:
        source = pa.memory_map(str(path), "r")
    except (OSError, pa.ArrowException) as exc:
        raise SpecError([Issue((), f"cannot open the table file {path}: {exc}")], title="a table file cannot be read")
    try:
        reader = pa.ipc.open_file(source)
        return reader.schema, _batches(path, ((i, reader.get_batch(i)) for i in range(reader.num_record_batches)))
    except (pa.ArrowException, OSError, ValueError):
        pass  # not a file (or its footer is damaged): perhaps a stream
    try:
        source.seek(0)
        reader = pa.ipc.open_stream(source)
        return reader.schema, _batches(path, ((None, batch) for batch in reader))  # a stream: no batch by position
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise SpecError([Issue((), f"{path} is not an Arrow IPC table file ({exc})",
                               "the tables are written by pa.RecordBatchFileWriter in ViLT's write_*.py scripts")],
                        title="a table file cannot be read") from None


def _batches(path: Path, batches: Iterator) -> Iterator:
    """The record batches of a file; one that cannot be read (its metadata or buffers damaged) ends the file with
    a SpecError naming it and the batch."""
    pa = import_pyarrow()
    n = 0
    while True:
        try:
            item = next(batches)
        except StopIteration:
            return
        except (pa.ArrowException, OSError, ValueError) as exc:
            raise SpecError([Issue((), f"{path}: record batch {n} cannot be read ({str(exc)[:200]})",
                                   "write the table again")], title="a table file cannot be read") from None
        n += 1
        yield item


def _columns_text(schema) -> str:
    return ", ".join(f"{f.name} ({f.type})" for f in schema) or "none"


def check_schema(schema, spec: TableSpec, path: Path) -> list[str]:
    """The columns to read (required + optional ones present); a SpecError for missing or mistyped columns."""
    names = schema.names
    issues, use = [], []
    for col in spec.columns:
        if col.name not in names:
            if col.required:
                issues.append(Issue((), f"{path}: no column '{col.name}' (the {spec.family} layout needs it: "
                                        f"{KIND_TEXT[col.kind]}); columns present: {_columns_text(schema)}",
                                    suggest(col.name, names) or f"the layout is the one {spec.writer} writes"))
            continue
        actual = schema.field(col.name).type
        if not arrow_kind(col.kind)(actual):
            issues.append(Issue((), f"{path}: column '{col.name}' has type {actual}, expected {KIND_TEXT[col.kind]}; "
                                    f"columns present: {_columns_text(schema)}",
                                f"the {spec.family} layout is the one {spec.writer} writes"))
            continue
        use.append(col.name)
    if issues:
        raise SpecError(issues, title=f"a table does not have the {spec.family} layout")
    return use


# --------------------------------------------------------------------------- readers


def read_table(path, family: str, *, skip_bad: bool = False, stats: ReadStats | None = None,
               decode_images: bool = False, dedupe_captions: bool = True) -> Iterator[dict]:
    """The examples of one .arrow file of `family`, in row order (see the module docstring for the records).

    The file and its columns are checked at once (a SpecError names the file); rows are read lazily.
    """
    spec = family_spec(family)
    stats = need_stats(skip_bad, stats)
    path = Path(path)
    if not path.is_file():
        parent = path.parent
        listing = _listing(parent) if parent.is_dir() else f"none ({parent} does not exist)"
        raise SpecError([Issue((), f"no table file {path}; files in {parent}: {listing}")],
                        title="Arrow table files are missing")
    return _read_all(_prepare([path], spec), spec, skip_bad, stats, decode_images, dedupe_captions)


def _prepare(files: Sequence[Path], spec: TableSpec) -> list:
    """Open every file and check its columns, reporting the problems of all files at once."""
    opened, issues = [], []
    for path in files:
        try:
            schema, batches = _open(path)
            opened.append((path, batches, check_schema(schema, spec, path)))
        except SpecError as err:
            issues += err.issues
    if issues:
        raise SpecError(issues, title=f"tables do not have the {spec.family} layout")
    return opened


def _read_all(opened, spec: TableSpec, skip_bad, stats, decode_images, dedupe, refs: bool = False) -> Iterator[dict]:
    for path, batches, use in opened:
        name = path.name[:-6] if path.name.endswith(".arrow") else path.name
        ctx = RowContext(spec.family, name, dedupe)
        row_index = 0
        for batch_id, batch in batches:
            lazy = refs and batch_id is not None  # images stay in the mapped file, read when a batch needs them
            read = [n for n in use if not (lazy and n in spec.image_columns)]
            batch = batch.select(read)
            for start in range(0, batch.num_rows, SLICE_ROWS):
                part = batch.slice(start, SLICE_ROWS)
                broken = _broken_rows(part, read)  # offsets, lengths and validity are data: checked first
                cols = {n: part.column(i).to_pylist() for i, n in enumerate(read)} if not broken else {}
                for k in range(part.num_rows):
                    ctx.row, ctx.where = row_index, f"{path} row {row_index}"
                    if broken:
                        problem = broken.get(k)
                        if problem is not None:
                            row_index += 1
                            stats.rows += 1
                            bad = BadData("bad row", f"{ctx.where} (record batch {batch_id}): {problem}", SKIP_HINT)
                            if not skip_bad:
                                raise SpecError([bad.issue()], title="a data row cannot be read")
                            stats.skip(bad.reason, bad.message)
                            continue
                        one = part.slice(k, 1)
                        cols = {n: one.column(i).to_pylist() for i, n in enumerate(read)}
                    row = {n: v[0 if broken else k] for n, v in cols.items()}
                    if lazy:
                        row.update({c: ArrowImage(str(path), batch_id, start + k, c, f"{ctx.where} column '{c}'")
                                    for c in spec.image_columns if c in use})
                    yield from expand_row(spec.expand, row, ctx, spec.image_columns, decode_images=decode_images,
                                          skip_bad=skip_bad, stats=stats, check_images=not lazy)
                    row_index += 1


def _broken_rows(part, columns: Sequence[str]) -> dict[int, str]:
    """{row: what is wrong} for the rows of a slice whose buffers do not hold together (offsets that run
    backwards or past their buffer, lengths past the file, a short validity bitmap): pyarrow's full validation,
    on the slice, then row by row where the slice fails. {} for a sound slice (the usual case: one check)."""
    pa = import_pyarrow()

    try:
        part.validate(full=True)
        return {}
    except (pa.ArrowException, ValueError):
        pass
    out = {}
    for k in range(part.num_rows):
        try:
            part.slice(k, 1).validate(full=True)
        except (pa.ArrowException, ValueError) as e:
            column = next((c for c in columns if _fails(part.column(c).slice(k, 1))), None)
            out[k] = (f"column '{column}': " if column else "") + f"its buffers do not hold together ({str(e)[:160]})"
    return out or {k: "its buffers do not hold together" for k in range(part.num_rows)}


def _fails(array) -> bool:
    pa = import_pyarrow()

    try:
        array.validate(full=True)
        return False
    except (pa.ArrowException, ValueError):
        return True


def read_arrow(directory, family: str, split: str = "train", *, tables: Sequence[str] | None = None,
               skip_bad: bool = False, stats: ReadStats | None = None, decode_images: bool = False,
               dedupe_captions: bool = True, refs: bool = False) -> Iterator[dict]:
    """The examples of a split (or of the named `tables`) of a ViLT/METER/Renaissance Arrow directory.

    Missing files raise at once (naming the expected files and listing the directory);
    columns are checked as each file is opened. ``skip_bad`` skips (and counts in
    ``stats``, which it then requires) rows whose image does not read and malformed
    entries. ``decode_images`` yields RGB PIL images instead of bytes (and so also
    catches images whose header is fine but whose data is not). ``dedupe_captions``
    drops repeated captions of an image, as ViLT's caption datasets do. ``refs`` (what
    training reads) leaves the image columns in the memory-mapped file: each record's
    image is an `ArrowImage` reference, read and checked when it is decoded, so
    indexing a table reads only its metadata columns and resident memory does not
    grow with the table (Arrow streams, which cannot be read by position, keep bytes).
    """
    spec = family_spec(family)
    stats = need_stats(skip_bad, stats)
    files = table_files(directory, spec.family, split, tables)
    return _read_all(_prepare(files, spec), spec, skip_bad, stats, decode_images, dedupe_captions, refs)


@dataclass(frozen=True)
class TableInfo:
    path: Path
    rows: int
    columns: dict  # name -> Arrow type (str)


def describe(directory, family: str, split: str = "train", tables: Sequence[str] | None = None) -> list[TableInfo]:
    """Check a split's files and columns without reading rows: one TableInfo per file (rows from the metadata)."""
    spec = family_spec(family)
    out = []
    for path, batches, _ in _prepare(table_files(directory, spec.family, split, tables), spec):
        schema, _ = _open(path)
        out.append(TableInfo(path, sum(b.num_rows for _, b in batches), {f.name: str(f.type) for f in schema}))
    return out


def check_arrow(directory, family: str, split: str = "train", *, tables: Sequence[str] | None = None,
                decode_images: bool = False, max_issues: int = MAX_MESSAGES) -> ReadStats:
    """Read a whole split and report *every* bad row at once (a SpecError listing them), else the stats."""
    stats = ReadStats()
    for _ in read_arrow(directory, family, split, tables=tables, skip_bad=True, stats=stats,
                        decode_images=decode_images):
        pass
    return raise_if_skipped(stats, max_issues)


__all__ = [
    "ReadStats", "BadData", "Column", "TableSpec", "TableInfo", "FAMILIES", "family_spec", "table_files",
    "check_schema", "read_table", "read_arrow", "describe", "check_arrow", "decode_image", "check_image",
    "load_images", "expand_row", "raise_if_skipped", "MAX_MESSAGES", "SKIP_HINT", "KIND_TEXT", "SLICE_ROWS",
]
