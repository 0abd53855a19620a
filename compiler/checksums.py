"""Checksums of the folders graphspec writes and later reads (checkpoints): every file's size and sha256 in a
`checksums.json` written last, and a check that names the first file cut short, altered or missing."""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

from graphspec.language.errors import Issue, Loc

LIST = "checksums.json"


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(functools.partial(f.read, 1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def checksums(folder: Path) -> dict:
    """{file: {bytes, sha256}} of every file under `folder` but the list itself."""
    return {str(p.relative_to(folder)): {"bytes": p.stat().st_size, "sha256": file_sha256(p)}
            for p in sorted(Path(folder).rglob("*")) if p.is_file() and p.name != LIST}


def write_checksums(folder: Path) -> None:
    (Path(folder) / LIST).write_text(json.dumps(checksums(folder), indent=1) + "\n")


def damage(folder: Path, required: bool = True) -> Issue | None:
    """The first problem with a folder's files against its checksums.json, as a located issue, or None.

    Without a list (a folder written before lists existed), None unless `required`.
    """
    folder = Path(folder)
    path = folder / LIST
    if not path.is_file():
        return Issue((), "the checkpoint's file list (checksums.json) is missing", "resume from an earlier "
                     "checkpoint, or start anew", loc=Loc(str(folder))) if required else None
    try:
        recorded = json.loads(path.read_text())
        items = [(name, int(want["bytes"]), str(want["sha256"])) for name, want in recorded.items()]
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as e:
        return Issue((), f"the checkpoint's file list cannot be read ({e})", "use an earlier checkpoint, or "
                     "write this one again", loc=Loc(str(path)))
    for name, size, sha in items:
        file = folder / name
        if not file.is_file():
            return Issue((), "a file of this checkpoint is missing", "restore it, or use an earlier checkpoint",
                         loc=Loc(str(file)))
        have = file.stat().st_size
        if have != size or file_sha256(file) != sha:
            how = f"cut short ({have:,} of {size:,} bytes)" if have < size else "altered"
            return Issue((), f"this file was {how} after the checkpoint was written", "restore it, or use an "
                         "earlier checkpoint", loc=Loc(str(file)))
    return None
