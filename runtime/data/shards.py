"""Streaming shards: `webdataset:PATTERN` captions in the layout img2dataset writes (`NNNNN.tar` holding
`KEY.jpg`/`KEY.png` with `KEY.txt` and/or `KEY.json`), read with the webdataset package's tar iterators.

A stream cannot be a function of the step the way a table can. Each rank reads its own shards (every
world-th shard of each epoch's order, shuffled by the seed and the epoch), in order; the rank's micro batch i
is its samples [i * size, (i + 1) * size), so a batch is the same for any number of workers (a worker reads
past the samples of the batches it does not make, without decoding them) and a run is deterministic for a
given number of ranks. The read position after every batch (epoch, shard, sample within it) goes into
checkpoints, and a resumed run opens that shard at that sample: it neither reads the shards before again
nor skips any. A sample without an image or a text, and a tar cut short, are counted with `skip_bad` (the
stream goes on with the next sample, or the next shard), else a located error naming the shard and member.
"""

from __future__ import annotations

import glob
import json
import random
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from graphspec.language.errors import Issue, SpecError

from .images import BytesImage
from .records import SKIP_HINT, BadData, ReadStats

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")


@dataclass(frozen=True)
class Position:
    """Where a rank's stream is: an epoch, a slot in that epoch's shard order, samples read from that shard."""

    epoch: int = 0
    slot: int = 0
    offset: int = 0

    def as_list(self) -> list[int]:
        return [self.epoch, self.slot, self.offset]


@dataclass
class Sample:
    image: BytesImage
    text: str
    key: str


def expand(pattern: str) -> list[str]:
    """The shard files of a pattern: brace expansion (`{00000..00099}.tar`) and globs, sorted."""
    from braceexpand import braceexpand

    files = []
    for part in braceexpand(pattern):
        files += sorted(glob.glob(part)) if any(c in part for c in "*?[") else [part]
    return sorted(dict.fromkeys(files))


MAX_MEMBER = 256 * 2**20  # bytes: a tar member larger than this is a bad sample, skipped over, never read


@dataclass(frozen=True)
class TooLarge:
    """A member whose header declares more than MAX_MEMBER bytes: it stands in for the data, unread."""

    size: int


def members(f) -> Iterator[dict]:
    """A tar stream's regular files as webdataset's grouping reads them ({fname, data}); a member over
    MAX_MEMBER is not read (its data is a TooLarge), so no length from the file is allocated unchecked."""
    with tarfile.open(fileobj=f, mode="r|*") as stream:
        for info in stream:
            if not info.isreg() or info.name.startswith("__") or "/__" in info.name:
                continue
            if info.size > MAX_MEMBER:
                yield {"fname": info.name, "data": TooLarge(info.size)}
                continue
            handle = stream.extractfile(info)
            yield {"fname": info.name, "data": handle.read() if handle is not None else b""}


def _sample(shard: str, raw: dict) -> Sample:
    key = raw.get("__key__", "?")
    large = [f"{k} ({v.size:,} bytes)" for k, v in raw.items() if isinstance(v, TooLarge)]
    if large:
        raise BadData("member too large", f"{shard}: sample '{key}' has a member over {MAX_MEMBER:,} bytes: "
                      f"{', '.join(large)} (not read)", SKIP_HINT)
    ext = next((e for e in IMAGE_EXTS if e in raw), None)
    if ext is None:
        raise BadData("missing member", f"{shard}: sample '{key}' has no image (.jpg, .png, ...); members: "
                      f"{', '.join(k for k in raw if not k.startswith('__')) or 'none'}", SKIP_HINT)
    text = None
    if "txt" in raw:
        text = raw["txt"].decode("utf-8", errors="replace").strip()
    elif "json" in raw:
        try:
            text = str(json.loads(raw["json"]).get("caption") or "").strip()
        except (ValueError, AttributeError):
            text = None
    if not text:
        raise BadData("missing member", f"{shard}: sample '{key}' has no caption (.txt, or .json with 'caption')",
                      SKIP_HINT)
    return Sample(BytesImage(raw[ext], f"{shard} member '{key}.{ext}'"), text, key)


def _cut_short(shard: str) -> str:
    """Why a tar file is cut short, or '': a whole tar ends with two zero blocks (tarfile itself reads a tar cut
    at a member boundary as a shorter whole one)."""
    size = Path(shard).stat().st_size
    if size % 512:
        return f"cut short ({size:,} bytes is not a whole number of 512-byte tar blocks)"
    with open(shard, "rb") as f:
        f.seek(max(0, size - 1024))
        if f.read(1024).strip(b"\0"):
            return "cut short (it does not end with the tar's end-of-archive blocks)"
    return ""


class ShardStream:
    """One rank's stream of captioned samples from tar shards."""

    def __init__(self, pattern: str, where: tuple, seed: int, rank: int, world: int, skip_bad: bool,
                 stats: ReadStats):
        self.shards = expand(pattern)
        missing = [s for s in self.shards if not Path(s).is_file()]
        if not self.shards or missing:
            raise SpecError([Issue(where + ("source",), f"no shard file {missing[0] if missing else pattern}",
                                   "give the shards as img2dataset writes them, e.g. "
                                   "webdataset:data/shards/{00000..00099}.tar or webdataset:data/shards/*.tar")],
                            title="the shards are missing")
        if len(self.shards) < world:
            raise SpecError([Issue(where + ("source",), f"{len(self.shards)} shard(s) for {world} ranks: every "
                                   "rank reads shards of its own", f"write at least {world} shards")],
                            title="too few shards")
        self.seed, self.rank, self.world, self.skip_bad, self.stats = seed, rank, world, skip_bad, stats
        self.cursor: tuple[int, Position, Iterator] | None = None  # (samples read, position, iterator)

    def order(self, epoch: int) -> list[str]:
        """This rank's shards in an epoch: the epoch's order (shuffled by seed and epoch), every world-th."""
        shards = list(self.shards)
        random.Random(f"shards:{self.seed}:{epoch}").shuffle(shards)
        return shards[self.rank::self.world]

    def _read(self, start: Position, once: bool = False) -> Iterator[tuple[Sample, Position, list]]:
        """Samples from `start` on, epoch after epoch (one epoch with `once`), each with the position after it
        and the bad samples or shards skipped since the one before ((reason, message) pairs): a worker counts
        them only for the samples it takes, so each is counted once whatever the number of workers."""
        from webdataset.tariterators import group_by_keys

        epoch, slot, offset = start.epoch, start.slot, start.offset
        skipped: list[tuple[str, str]] = []
        while True:
            shards = self.order(epoch)
            given = 0  # samples this epoch gave: an epoch that gives none would repeat for ever
            while slot < len(shards):
                shard, count = shards[slot], 0
                cut = _cut_short(shard)
                if cut and not self.skip_bad:
                    raise SpecError([BadData("truncated shard", f"{shard}: {cut}", SKIP_HINT).issue()],
                                    title="a shard cannot be read")
                try:
                    with open(shard, "rb") as f:
                        found = (dict(m, __url__=shard) for m in members(f))
                        for raw in group_by_keys(found):
                            count += 1
                            if count <= offset:
                                continue  # read before the position this stream resumes from
                            try:
                                sample = _sample(shard, raw)
                            except BadData as bad:
                                if not self.skip_bad:
                                    raise SpecError([bad.issue()], title="a shard sample cannot be read") from None
                                skipped.append((bad.reason, bad.message))
                                continue
                            given += 1
                            yield sample, Position(epoch, slot, count), skipped
                            skipped = []
                except (tarfile.TarError, EOFError, OSError, ValueError) as e:
                    cut = f"cannot read past its {count}th sample ({type(e).__name__}: {e})"
                if cut:  # the samples before the cut were read; the shard is counted once
                    bad = BadData("truncated shard", f"{shard}: {cut}", SKIP_HINT)
                    if not self.skip_bad:
                        raise SpecError([bad.issue()], title="a shard cannot be read") from None
                    skipped.append((bad.reason, bad.message))
                slot, offset = slot + 1, 0
            if once:
                return
            if not given and start.slot == 0 and start.offset == 0 or not given and epoch > start.epoch:
                raise SpecError([Issue((), f"no readable sample in this rank's shards ({', '.join(shards[:3])}"
                                        f"{', ...' if len(shards) > 3 else ''}): every one was bad or cut short",
                                        "check them with graphspec check-data")], title="the shards hold no sample")
            epoch, slot = epoch + 1, 0

    def start(self, number: int, position: Position) -> None:
        """Sample `number` of this rank's stream is at `position` (the start, or a checkpoint's)."""
        self.cursor = (number, position, self._read(position))

    def take(self, first: int, size: int) -> tuple[list[Sample], Position]:
        """Samples [first, first + size) of the stream, and the position after them; the cursor only moves
        forward (a worker reads past the batches other workers make, without decoding them)."""
        if self.cursor is None:
            self.start(0, Position())
        number, position, iterator = self.cursor
        if first < number:
            raise RuntimeError(f"the stream is at sample {number}, past {first}")
        while number < first:
            _, position, _ = next(iterator)
            number += 1
        taken = []
        for _ in range(size):
            sample, position, skipped = next(iterator)
            for reason, message in skipped:
                self.stats.skip(reason, message)
            self.stats.read += 1
            taken.append(sample)
        self.cursor = (number + size, position, iterator)
        return taken, position

    def records(self) -> list[dict]:
        """Every sample of the shards (all ranks' shards: a validation split), as caption records."""
        out = []
        saved, self.rank, self.world = (self.rank, self.world), 0, 1
        try:
            for sample, position, _ in self._read(Position(), once=True):
                shard = self.order(0)[position.slot]
                out.append({"table": shard, "row": sample.key, "image": sample.image, "text": sample.text,
                            "where": shard, "image_refs": (f"member '{sample.key}'",)})
        finally:
            self.rank, self.world = saved
        return out

    def texts(self, limit: int = 20_000) -> list[str]:
        """Captions of the first samples of the rank's first epoch, to train a vocabulary on."""
        out = []
        for sample, _, _ in self._read(Position(), once=True):
            out.append(sample.text)
            if len(out) >= limit:
                break
        return out
