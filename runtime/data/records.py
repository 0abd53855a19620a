"""Pieces shared by the Arrow and JSONL readers: read stats, bad-data errors, image checks.

`graphspec.runtime.data.arrow` and `.jsonl` both yield plain dicts per example
(see `graphspec.runtime.data.arrow` for the records); the helpers here count what a read
skipped (`ReadStats`), carry a bad row/entry (`BadData`) and open, check or
decode encoded images, naming the file, row and column when they cannot.
"""

from __future__ import annotations

import io
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Mapping

from graphspec.language.errors import Issue, SpecError

MAX_MESSAGES = 50  # detailed messages kept in ReadStats


# --------------------------------------------------------------------------- stats, images


@dataclass
class ReadStats:
    """What a read yielded and what it skipped (only with skip_bad=True), for a run summary.

    ``read``: examples yielded. ``rows``: table rows / manifest lines looked at.
    ``skipped``: bad units skipped (a whole row when its image or row-level data is
    bad, one entry when only that question/sentence is), by ``reasons``.
    ``messages``: the first MAX_MESSAGES full messages (file, row, column).
    """

    read: int = 0
    rows: int = 0
    skipped: int = 0
    reasons: Counter = field(default_factory=Counter)
    messages: list = field(default_factory=list)

    def skip(self, reason: str, message: str) -> None:
        self.skipped += 1
        self.reasons[reason] += 1
        if len(self.messages) < MAX_MESSAGES:
            self.messages.append(message)

    def as_dict(self) -> dict:
        return {"read": self.read, "rows": self.rows, "skipped": self.skipped, "reasons": dict(self.reasons)}


class BadData(Exception):
    """A bad row or entry: reason (short, for counting) and a message naming file/row/column."""

    def __init__(self, reason: str, message: str, hint: str = ""):
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.hint = hint

    def issue(self) -> Issue:
        return Issue((), self.message, self.hint)


SKIP_HINT = "fix or drop it, or read with skip_bad=True to skip such rows (they are counted in the run summary)"


def open_image(data: Any, where: str, *, full: bool):
    from PIL import Image

    if not isinstance(data, (bytes, bytearray, memoryview)):
        kind = "no image (null)" if data is None else f"a {type(data).__name__}, not image bytes"
        raise BadData("unreadable image", f"cannot read the image in {where}: it holds {kind}", SKIP_HINT)
    if len(data) == 0:
        raise BadData("unreadable image", f"cannot read the image in {where}: it holds 0 bytes", SKIP_HINT)
    try:
        image = Image.open(io.BytesIO(bytes(data)))
        if not full:
            image.verify()  # header + (for PNG) chunk checksums, without decoding pixels
            return None
        image.load()
        return image.convert("RGB")
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError, ...
        raise BadData("unreadable image", f"cannot read the image in {where}: {type(exc).__name__}: {exc}",
                      SKIP_HINT) from None


def decode_image(data: bytes, where: str):
    """Encoded image bytes -> an RGB ``PIL.Image.Image``; a SpecError naming `where` when they do not decode."""
    try:
        return open_image(data, where, full=True)
    except BadData as bad:
        raise SpecError([bad.issue()], title="an image could not be read") from None


def check_image(data: bytes, where: str) -> None:
    """A cheap check that `data` is an image (header; PNG checksums) without decoding it."""
    try:
        open_image(data, where, full=False)
    except BadData as bad:
        raise SpecError([bad.issue()], title="an image could not be read") from None


def load_images(record: Mapping) -> list:
    """The record's image(s) as RGB PIL images (one, or two for NLVR2); errors name the file, row and column."""
    images = list(record["images"]) if "images" in record else [record["image"]]
    refs = list(record.get("image_refs") or [f"image {i}" for i in range(len(images))])
    return [decode_image(img, f"{record['where']} {ref}") if isinstance(img, (bytes, bytearray, memoryview))
            else img for img, ref in zip(images, refs)]


def short_repr(value: Any, n: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= n else text[: n - 3] + "..."


def need_stats(skip_bad: bool, stats: ReadStats | None) -> ReadStats:
    if skip_bad and stats is None:
        raise TypeError("skip_bad=True needs stats=ReadStats(), so that the skipped rows can be reported")
    return stats if stats is not None else ReadStats()


def raise_if_skipped(stats: ReadStats, max_issues: int = MAX_MESSAGES) -> ReadStats:
    if stats.skipped:
        issues = [Issue((), m) for m in stats.messages[:max_issues]]
        more = stats.skipped - len(issues)
        title = f"{stats.skipped} bad rows or entries ({', '.join(f'{k}: {v}' for k, v in stats.reasons.items())})"
        if more > 0:
            title += f"; {more} more not shown"
        raise SpecError(issues, title=title)
    return stats


__all__ = [
    "MAX_MESSAGES", "SKIP_HINT", "ReadStats", "BadData", "decode_image", "check_image",
    "load_images", "raise_if_skipped",
]
