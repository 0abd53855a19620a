"""Where an example's image is, without holding its pixels: a reference that a worker process reads, decodes
and hands to the tower's transform only when a batch needs it.

- `ArrowImage`: a cell of a memory-mapped Arrow table (file, record batch, row, column). Each process maps the
  file once and reads the cell's bytes from the map, so a table costs address space, not resident memory.
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

_MAPS: dict[tuple[int, str], object] = {}  # (pid, path) -> an open Arrow file reader over a memory map


def _reader(path: str):
    """This process's reader of an Arrow IPC file (a forked worker opens its own map)."""
    key = (os.getpid(), path)
    reader = _MAPS.get(key)
    if reader is None:
        import pyarrow as pa
        import pyarrow.ipc  # noqa: F401

        source = pa.memory_map(path, "r")
        try:
            reader = pa.ipc.open_file(source)
        except pa.ArrowInvalid:
            reader = None  # a stream file: no random access (indexed whole instead, see arrow.py)
        _MAPS[key] = reader
    return reader


def _decode(data, where: str, size: int | None = None) -> tuple[np.ndarray, tuple[int, int]]:
    """RGB (H, W, 3) uint8. With `size` (the square the transform squashes it to), a JPEG is decoded at the
    smallest power-of-two reduction still at least that large (libjpeg's DCT scaling, PIL's draft mode):
    640x480 for 224 decodes at 320x240, about 40% less work."""
    from PIL import Image

    if data is None or len(data) == 0:
        raise BadData("unreadable image", f"cannot read the image in {where}: it holds "
                      f"{'no image (null)' if data is None else '0 bytes'}", SKIP_HINT)
    try:
        image = Image.open(io.BytesIO(bytes(data)))
        full = image.size  # region boxes are in these pixels, whatever size the draft decodes at
        if size is not None:
            image.draft("RGB", (size, size))
        image.load()
        return np.asarray(image.convert("RGB")), full
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
        reader = _reader(self.path)
        if reader is None:
            raise BadData("unreadable image", f"{self.path} is an Arrow stream, not a file: its images cannot be "
                          "read by position", "rewrite it with pa.RecordBatchFileWriter")
        value = reader.get_batch(self.batch).column(self.column)[self.row]
        return None if not value.is_valid else value.as_buffer()

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
