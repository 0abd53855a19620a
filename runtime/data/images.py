"""Where an example's image is, without holding its pixels: a reference that a worker process reads, decodes
and hands to the tower's transform only when a batch needs it.

- `ArrowImage`: a cell of a memory-mapped Arrow table (file, record batch, row, column). Each process maps the
  file once and finds the cell from the column's offsets buffer (a pyarrow scalar would touch the cell); the
  bytes themselves are read from the file at that offset (`os.pread`), not through the map. Touched through
  the map they would stay mapped, and the kernel maps whole page-cache folios around every fault (measured
  here, ext4: about 1.4 MB of resident memory per 85 KB image), so resident memory would grow with the
  table. Read this way, a table costs address space, not resident memory.
- `FileImage`: an image file (a JSONL manifest's path).
- `BytesImage`: encoded bytes already in memory (records built by hand, tests).
- `SceneImage`: a built-in scene, rendered at the input size.

Every reference has `where` (file, row, column: for messages), `load(size)` -> (an RGB uint8 array (H, W, 3),
the image's own (width, height)) or BadData naming `where`, and `key()`: a stable name of its content (a hash of the encoded bytes, or the scene),
which the frozen-tower cache uses so that a hit needs no decoding.
"""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass, field

import numpy as np

from .records import SKIP_HINT, BadData

_MAPS: dict[tuple[int, str], object] = {}  # (pid, path) -> an open _Table, or None for a stream file
MAX_CELL = 256 * 2**20  # bytes: an encoded image cell larger than this is refused before it is read


@dataclass
class _Table:
    reader: object  # pyarrow's file reader over the map
    base: int  # the map's address: a buffer's offset in the file is its address minus this
    size: int
    fd: int  # the file, for pread
    columns: dict = field(default_factory=dict)  # (batch, column) -> _Column

    def cell(self, batch: int, column: str, row: int, where: str):
        """The encoded bytes of a cell, or None for a null; BadData naming `where` for a cell whose offsets do not
        fit its buffer and the file (they are data, not facts: checked before anything is read by them)."""
        import pyarrow as pa

        key = (batch, column)
        try:
            if key not in self.columns:
                self.columns[key] = _Column(self.reader.get_batch(batch).column(column), self.base, self.size)
            return self.columns[key].cell(row, self.fd)
        except (OSError, ValueError, IndexError, pa.ArrowException) as e:
            raise BadData("bad cell", f"{where}: the cell cannot be read: {str(e)[:200]}", SKIP_HINT) from None


class _Column:
    """A binary column of a record batch, read through its buffers (offsets and validity: small)."""

    def __init__(self, array, base: int, size: int):
        import pyarrow as pa

        validity, offsets, data = array.buffers()[:3]
        wide = pa.types.is_large_binary(array.type) or pa.types.is_large_string(array.type)
        self.array = array
        self.offsets = np.frombuffer(offsets, dtype=np.int64 if wide else np.int32)[array.offset:]
        self.valid = None if array.null_count == 0 else np.frombuffer(validity, dtype=np.uint8)
        self.start = data.address - base if data is not None else -1  # where the values start in the file
        self.values = data.size if data is not None else 0
        self.mapped = data is not None and 0 <= self.start and self.start + data.size <= size

    def cell(self, row: int, fd: int):
        if not 0 <= row < min(len(self.array), len(self.offsets) - 1):
            raise ValueError(f"row {row} is not in the column ({len(self.array)} rows)")
        if self.valid is not None:
            bit = self.array.offset + row
            if bit >> 3 >= len(self.valid):
                raise ValueError("the validity bitmap is shorter than the column")
            if not self.valid[bit >> 3] >> (bit & 7) & 1:
                return None
        first, last = int(self.offsets[row]), int(self.offsets[row + 1])
        if not 0 <= first <= last <= self.values or last - first > MAX_CELL:
            raise ValueError(f"its offsets say bytes {first:,} to {last:,} of a {self.values:,}-byte buffer"
                             + (f" (cells are read up to {MAX_CELL // 2**20} MiB)" if last - first > MAX_CELL else ""))
        if not self.mapped:  # a compressed table: its buffers are in memory, not in the map
            return self.array[row].as_buffer()
        return os.pread(fd, last - first, self.start + first)


def _table(path: str) -> _Table | None:
    """This process's map of an Arrow IPC file (a forked worker opens its own); None for a stream file."""
    key = (os.getpid(), path)
    if key not in _MAPS:
        import pyarrow as pa
        import pyarrow.ipc  # noqa: F401

        source = pa.memory_map(path, "r")
        try:
            reader = pa.ipc.open_file(source)
        except pa.ArrowInvalid:
            _MAPS[key] = None  # a stream file: no random access (indexed whole instead, see arrow.py)
            return None
        source.seek(0)
        base = source.read_buffer(1).address  # zero-copy: an address, nothing read
        _MAPS[key] = _Table(reader, base, source.size(), os.open(path, os.O_RDONLY))
    return _MAPS[key]


MAX_PIXELS = 64 * 2**20  # pixels (about 67 M, e.g. 8192 x 8192): a larger image is refused before it is decoded


def to_rgb(image) -> np.ndarray:
    """A PIL image as people see it, RGB (H, W, 3) uint8: its EXIF orientation applied, 16-bit values scaled
    (not clipped) to 8, palette, CMYK, grey and alpha images converted (alpha dropped); an animated image's
    first frame (the one PIL opens at)."""
    from PIL import ImageOps

    image = ImageOps.exif_transpose(image) or image
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):  # 16-bit grey (PNG, TIFF): 0..65535
        values = np.asarray(image, dtype=np.float64)
        grey = np.clip(np.round(values / 257.0), 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if image.mode == "F":  # 32-bit float grey: taken as 0..1 when it fits, else scaled by its range
        values = np.asarray(image, dtype=np.float64)
        top = 1.0 if values.max(initial=0.0) <= 1.0 else values.max()
        grey = np.clip(np.round(values / top * 255), 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    return np.asarray(image.convert("RGB"))


def _decode(data, where: str, size: int | None = None) -> tuple[np.ndarray, tuple[int, int]]:
    """RGB (H, W, 3) uint8 (`to_rgb`). With `size` (the square the transform squashes it to), a JPEG is decoded
    at the smallest power-of-two reduction still at least that large (libjpeg's DCT scaling, PIL's draft mode):
    640x480 for 224 decodes at 320x240, about 40% less work. An image over MAX_PIXELS is refused from its
    header, before any pixel is decoded."""
    from PIL import Image

    if data is None or len(data) == 0:
        raise BadData("unreadable image", f"cannot read the image in {where}: it holds "
                      f"{'no image (null)' if data is None else '0 bytes'}", SKIP_HINT)
    try:
        image = Image.open(io.BytesIO(bytes(data)))
        width, height = image.size
        if width * height > MAX_PIXELS or not width or not height:
            raise BadData("unreadable image", f"cannot read the image in {where}: it declares {width} x {height} "
                          f"pixels ({'none' if not width * height else f'over the limit of {MAX_PIXELS:,}'})",
                          SKIP_HINT)
        if size is not None:
            image.draft("RGB", (size, size))
        image.load()
        turned = image.getexif().get(0x0112, 1) in (5, 6, 7, 8)  # EXIF orientations that swap the axes
        return to_rgb(image), (height, width) if turned else (width, height)  # its size as people see it
    except BadData:
        raise
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError, ...
        raise BadData("unreadable image", f"cannot read the image in {where}: {type(exc).__name__}: {exc}",
                      SKIP_HINT) from None


def _bytes_key(data) -> str:
    return hashlib.blake2b(bytes(data), digest_size=20).hexdigest()


@dataclass(frozen=True)
class ArrowImage:
    path: str
    batch: int
    row: int
    column: str
    where: str = field(default="", compare=False)

    def encoded(self):
        table = _table(self.path)
        if table is None:
            raise BadData("unreadable image", f"{self.path} is an Arrow stream, not a file: its images cannot be "
                          "read by position", "rewrite it with pa.RecordBatchFileWriter")
        return table.cell(self.batch, self.column, self.row, self.where or f"{self.path} row {self.row}")

    def load(self, size: int | None = None) -> tuple[np.ndarray, tuple[int, int]]:
        return _decode(self.encoded(), self.where, size)

    def key(self) -> str:
        data = self.encoded()
        return _bytes_key(data) if data is not None else f"null:{self.where}"


@dataclass(frozen=True)
class FileImage:
    path: str
    where: str = field(default="", compare=False)

    def encoded(self) -> bytes:
        try:
            with open(self.path, "rb") as f:
                return f.read()
        except OSError as e:
            raise BadData("missing image file", f"{self.where}: cannot read the image file {self.path}: "
                          f"{e.strerror or e}", SKIP_HINT) from None

    def load(self, size: int | None = None) -> tuple[np.ndarray, tuple[int, int]]:
        return _decode(self.encoded(), self.where, size)

    def key(self) -> str:
        return _bytes_key(self.encoded())


@dataclass(frozen=True)
class BytesImage:
    data: bytes = field(repr=False)
    where: str = field(default="", compare=False)

    def load(self, size: int | None = None) -> tuple[np.ndarray, tuple[int, int]]:
        return _decode(self.data, self.where, size)

    def key(self) -> str:
        return _bytes_key(self.data)


@dataclass(frozen=True)
class SceneImage:
    scene: object  # runtime.data.scenes.Scene
    where: str = field(default="", compare=False)

    def load(self, size: int | None = None) -> tuple[np.ndarray, tuple[int, int]]:
        from .scenes import render

        pixels = render(self.scene)
        return pixels, (pixels.shape[1], pixels.shape[0])

    def key(self) -> str:
        return f"scene:{self.scene.key()}:{self.scene.image_size}"


def image_ref(value, where: str):
    """A record's image value as a reference: references pass, bytes are wrapped."""
    if isinstance(value, (ArrowImage, FileImage, BytesImage, SceneImage)):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)) or value is None:
        return BytesImage(bytes(value) if value is not None else b"", where)
    raise TypeError(f"not an image reference: {type(value).__name__}")
