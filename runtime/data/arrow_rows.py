"""Table rows -> records, one expander per table layout (see `graphspec.runtime.data.arrow` for the records).

`expand_row` checks a row's images and yields its records. Bad rows/entries
raise, or are counted and skipped.
"""

from __future__ import annotations

from typing import Callable, Iterator, Sequence

from graphspec.language.errors import SpecError

from .records import SKIP_HINT, BadData, ReadStats, open_image, short_repr


def _bad_row(where: str, column: str, what: str) -> BadData:
    return BadData("malformed entry", f"{where} column '{column}': {what}", SKIP_HINT)


def _list(row: dict, column: str, where: str) -> list:
    value = row[column]
    if not isinstance(value, list):
        raise _bad_row(where, column, f"expected a list, found {short_repr(value)}")
    return value


def captions_rows(row, ctx):
    caps = _list(row, "caption", ctx.where)
    region_cols = ("x", "y", "width", "height")
    regions = None
    if all(c in row for c in region_cols):
        lists = [row[c] for c in region_cols]
        if not all(isinstance(v, list) and len(v) == len(caps) for v in lists):
            raise _bad_row(ctx.where, "x", f"the region columns x/y/width/height do not have one entry per caption "
                                           f"({len(caps)} captions)")
        regions = list(zip(*lists))
    seen = set()
    for j, cap in enumerate(caps):
        if not isinstance(cap, str) or not cap.strip():
            yield _bad_row(ctx.where, "caption", f"caption {j} is {short_repr(cap)}, not a non-empty string")
            continue
        if ctx.dedupe:
            if cap in seen:
                continue  # ViLT reads list(set(captions)) from caption tables
            seen.add(cap)
        region = None
        if regions is not None:
            x, y, w, h = regions[j]
            if any(v is None for v in (x, y, w, h)):
                yield _bad_row(ctx.where, "x", f"region {j} of the caption has a missing coordinate")
                continue
            region = [x, y, x + w, y + h]
        yield ctx.record(j, text=cap, image=row["image"], id=row.get("image_id"), region=region)


def nlvr2_rows(row, ctx):
    questions, answers = _list(row, "questions", ctx.where), _list(row, "answers", ctx.where)
    if len(questions) != len(answers):
        raise _bad_row(ctx.where, "answers", f"{len(answers)} answers for {len(questions)} questions")
    for j, (q, a) in enumerate(zip(questions, answers)):
        if not isinstance(q, str) or not q.strip():
            yield _bad_row(ctx.where, "questions", f"question {j} is {short_repr(q)}, not a non-empty string")
            continue
        if isinstance(a, bool):
            label = a
        elif isinstance(a, str) and a.strip().lower() in ("true", "false"):
            label = a.strip().lower() == "true"
        else:
            yield _bad_row(ctx.where, "answers", f"answer {j} is {short_repr(a)}, expected \"True\" or \"False\"")
            continue
        yield ctx.record(j, text=q, images=(row["image_0"], row["image_1"]),
                         image_refs=("column 'image_0'", "column 'image_1'"),
                         label=label, id=row.get("identifier"))


def vqa_rows(row, ctx):
    questions = _list(row, "questions", ctx.where)
    cols = ("answers", "answer_labels", "answer_scores")
    lists = [_list(row, c, ctx.where) for c in cols]
    labeled = any(len(v) for v in lists)
    if labeled:
        for c, v in zip(cols, lists):
            if len(v) != len(questions):
                raise _bad_row(ctx.where, c, f"{len(v)} entries for {len(questions)} questions")
    qids = row.get("question_id")
    if qids is not None and (not isinstance(qids, list) or len(qids) != len(questions)):
        raise _bad_row(ctx.where, "question_id", f"expected one question id per question ({len(questions)})")
    for j, q in enumerate(questions):
        if not isinstance(q, str) or not q.strip():
            yield _bad_row(ctx.where, "questions", f"question {j} is {short_repr(q)}, not a non-empty string")
            continue
        answers, labels, scores = (v[j] for v in lists) if labeled else ([], [], [])
        if not (isinstance(answers, list) and isinstance(labels, list) and isinstance(scores, list)
                and len(answers) == len(labels) == len(scores)):
            yield _bad_row(ctx.where, "answer_scores", f"question {j}: answers {short_repr(answers)}, answer_labels "
                                                       f"{short_repr(labels)} and answer_scores {short_repr(scores)} "
                                                       f"are not lists of one length")
            continue
        if any(not isinstance(a, str) for a in answers) or any(
                isinstance(s, bool) or not isinstance(s, (int, float)) or not 0 <= s <= 1 for s in scores):
            yield _bad_row(ctx.where, "answer_scores", f"question {j}: answers must be strings and scores numbers "
                                                       f"in [0, 1] (got {short_repr(answers)}, {short_repr(scores)})")
            continue
        yield ctx.record(j, text=q, image=row["image"], answers=dict(zip(answers, (float(s) for s in scores))),
                         answer_labels=list(labels), answer_scores=[float(s) for s in scores],
                         id=qids[j] if qids is not None else None)


def snli_rows(row, ctx):
    sentences, labels = _list(row, "sentences", ctx.where), _list(row, "labels", ctx.where)
    if len(sentences) != len(labels):
        raise _bad_row(ctx.where, "labels", f"{len(labels)} labels for {len(sentences)} sentence pairs")
    for j, (pair, label) in enumerate(zip(sentences, labels)):
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(s, str) for s in pair)
                and pair[1].strip()):
            yield _bad_row(ctx.where, "sentences", f"entry {j} is {short_repr(pair)}, expected [premise, hypothesis]")
            continue
        if isinstance(label, bool) or label not in (0, 1, 2):
            yield _bad_row(ctx.where, "labels", f"label {j} is {short_repr(label)}, expected 0 (contradiction), "
                                                f"1 (neutral) or 2 (entailment)")
            continue
        # METER and Renaissance feed the hypothesis (t[1].strip()) as the text
        yield ctx.record(j, text=pair[1].strip(), premise=pair[0], image=row["image"], label=label, id=None)


def refcoco_rows(row, ctx):
    sentences, bboxes = _list(row, "sentences", ctx.where), _list(row, "bboxes", ctx.where)
    boxes = []
    for k, b in enumerate(bboxes):
        if not (isinstance(b, list) and len(b) == 4 and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                             for v in b) and b[2] >= 0 and b[3] >= 0):
            raise _bad_row(ctx.where, "bboxes", f"box {k} is {short_repr(b)}, expected [x, y, w, h] with w, h >= 0")
        x, y, w, h = (float(v) for v in b)
        boxes.append([x, y, x + w, y + h])
    if not boxes:
        raise _bad_row(ctx.where, "bboxes", "the image has no candidate boxes")
    label = row["labels"]
    targets = label if isinstance(label, list) else [label] * len(sentences)
    if len(targets) != len(sentences):
        raise _bad_row(ctx.where, "labels", f"{len(targets)} labels for {len(sentences)} sentences")
    for j, (s, t) in enumerate(zip(sentences, targets)):
        if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < len(boxes):
            yield _bad_row(ctx.where, "labels", f"label {short_repr(t)} is not the index of one of the "
                                                f"{len(boxes)} boxes")
            continue
        if not isinstance(s, str) or not s.strip():
            yield _bad_row(ctx.where, "sentences", f"sentence {j} is {short_repr(s)}, not a non-empty string")
            continue
        yield ctx.record(j, text=s, image=row["image"], boxes=[list(b) for b in boxes], target=t, id=None)


class RowContext:
    def __init__(self, family: str, table: str, dedupe: bool):
        self.family, self.table, self.dedupe = family, table, dedupe
        self.row, self.where = 0, ""

    def record(self, entry: int, **fields) -> dict:
        rec = {"family": self.family, "table": self.table, "row": self.row, "entry": entry, "where": self.where,
               "image_refs": ("column 'image'",)}
        rec.update(fields)
        return rec


def expand_row(expand: Callable, row: dict, ctx: RowContext, images: Sequence[str], *, decode_images: bool,
               skip_bad: bool, stats: ReadStats, check_images: bool = True) -> Iterator[dict]:
    """Check a row's images (unless they are references, checked when decoded), then yield its records
    (`expand(row, ctx)`, the layout's expander); bad rows/entries raise, or are counted and skipped. `images`
    are the columns that hold images."""
    stats.rows += 1
    try:
        decoded = {}
        for col in images if check_images else ():
            img = open_image(row[col], f"{ctx.where} column '{col}'", full=decode_images)
            if decode_images:
                decoded[col] = img
        if decoded:
            row = {**row, **decoded}
        for item in expand(row, ctx):
            if isinstance(item, BadData):
                if not skip_bad:
                    raise item
                stats.skip(item.reason, item.message)
                continue
            stats.read += 1
            yield item
    except BadData as bad:
        if not skip_bad:
            raise SpecError([bad.issue()], title="a data row cannot be read") from None
        stats.skip(bad.reason, bad.message)


__all__ = ["captions_rows", "nlvr2_rows", "vqa_rows", "snli_rows", "refcoco_rows", "expand_row"]
