"""A frozen tower's outputs on disk, computed once per sample and reused by later epochs and later runs.

The key has two parts. The folder: the tower's name, a hash of its frozen
weights, its precision, the versions of the libraries that compute it, and how
its input is made from a sample (for an image tower: the decoding and the
transform, with its size, mean, std, interpolation and resize mode). The file:
the sample's own key. An image tower's is the encoded image (a hash of its bytes,
or a built-in scene's name), so a worker finds a hit before decoding anything and
a hit costs a file read, no decode and no transform; other towers' is a hash of
their inputs as they receive them (token ids and mask). Whatever changes an
output changes its key (other weights, another transform or image size, other
text), so a stale entry is never read; it only takes space, which the run reports.
Entries are written whole (a temporary file, then a rename), so ranks and runs
can share one cache. An entry that does not read back (cut short, altered, not
the structure the tower gives) is counted as corrupt, removed and computed
again, never used.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from . import devices

FORMAT = 3  # bump when the layout or the key changes (3: image towers keyed by the encoded sample)


def default_root() -> Path:
    env = os.environ.get("GRAPHSPEC_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "graphspec" / "frozen-outputs"


def _versions() -> str:
    import timm
    import transformers

    return f"torch {torch.__version__}, timm {timm.__version__}, transformers {transformers.__version__}"


class TowerCache:
    """Outputs of one tower: `outputs(tower, args)` computes only the rows it has not stored before."""

    def __init__(self, root: Path, tower: str, weights_sha256: str, dtype: str, inputs: str = ""):
        ident = f"format {FORMAT}; weights {weights_sha256}; {dtype}; {_versions()}; inputs {inputs or 'as given'}"
        self.dir = Path(root) / f"{tower}-{hashlib.sha256(ident.encode()).hexdigest()[:16]}"
        self.dir.mkdir(parents=True, exist_ok=True)
        about = self.dir / "about.json"
        if not about.is_file():
            _write_whole(about, json.dumps({"tower": tower, "key": ident}, indent=2).encode())
        self.hits = self.misses = self.corrupt = 0
        self.structure = self._read_structure()

    @staticmethod
    def key(args: list[torch.Tensor], row: int) -> str:
        """A row's key from the tower's inputs as it receives them; `args` on the host."""
        h = hashlib.blake2b(digest_size=20)
        for a in args:
            t = a[row].contiguous()
            h.update(f"{t.dtype} {tuple(t.shape)};".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        return h.hexdigest()

    def _path(self, key: str) -> Path:
        return self.dir / key[:2] / f"{key}.safetensors"

    def _read_structure(self):
        path = self.dir / "structure.json"
        try:
            return json.loads(path.read_text()) if path.is_file() else None
        except (OSError, ValueError):  # damaged: written again from the next computed output
            path.unlink(missing_ok=True)
            return None

    def read(self, key: str) -> tuple[dict | None, dict]:
        """(a stored row, its metadata), or (None, {}) when there is none or it is damaged (then it is removed,
        to be computed again). Safe in worker processes: entries are written whole, by the training process."""
        path = self._path(key)
        if self.structure is None:
            self.structure = self._read_structure()
        if not path.is_file() or self.structure is None:
            return None, {}
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                row = {k: f.get_tensor(k) for k in f.keys()}
            _unflatten(self.structure, row)  # the row holds every tensor the structure names
            if meta.get("sha256") != _row_digest(row):
                raise ValueError("altered")
            return row, meta
        except (OSError, SafetensorError, KeyError, ValueError, TypeError):
            self.corrupt += 1
            path.unlink(missing_ok=True)
            return None, {}

    def outputs(self, tower, args: list[torch.Tensor], keys: list[str] | None = None,
                found: dict[int, dict] | None = None, meta: dict[int, dict] | None = None):
        """The tower's outputs for a batch: stored rows read, the others computed and stored.

        `keys`: the samples' own keys (an image tower's encoded images), with the rows a worker already read
        (`found`; the args hold placeholders there) and what to record with the rows it did not (`meta`:
        the image's size); without them, rows are keyed by a hash of the args.
        """
        n = args[0].shape[0]
        rows: list[dict | None] = [None] * n
        if keys is None:
            host_args = devices.to_host(args)  # one move for the whole batch, not one per row
            keys = [self.key(host_args, r) for r in range(n)]
            for r, k in enumerate(keys):
                rows[r] = self.read(k)[0]
        else:
            for r, row in (found or {}).items():
                rows[r] = row
        missing = [r for r in range(n) if rows[r] is None]
        if missing:
            pick = torch.tensor(missing, device=args[0].device)
            out = tower(*[a.index_select(0, pick) for a in args])
            structure, flat = _flatten(out)
            if self.structure is None:
                self.structure = structure
                _write_whole(self.dir / "structure.json", json.dumps(structure).encode())
            flat = devices.to_host(flat)  # the computed rows leave the device once, to be stored
            for j, r in enumerate(missing):
                rows[r] = {p: t[j].contiguous().clone() for p, t in flat.items()}
                path = self._path(keys[r])
                path.parent.mkdir(exist_ok=True)
                tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
                extra = {k: str(v) for k, v in (meta or {}).get(r, {}).items()}
                save_file(rows[r], str(tmp), metadata={**extra, "sha256": _row_digest(rows[r])})
                os.replace(tmp, path)
        self.hits += n - len(missing)
        self.misses += len(missing)
        # stored and computed rows meet on the host, and the batch goes to the tower's device in one move
        stacked = {p: torch.stack([row[p] for row in rows]) for p in rows[0]}
        return _unflatten(self.structure, devices.to_device(stacked, args[0].device))

    def size(self) -> tuple[int, int]:
        """(entries, bytes) stored for this tower."""
        entries = total = 0
        for sub in os.scandir(self.dir):
            if sub.is_dir():
                for f in os.scandir(sub.path):
                    if f.name.endswith(".safetensors"):
                        entries += 1
                        total += f.stat().st_size
        return entries, total

    def report(self) -> dict:
        entries, total = self.size()
        return {"dir": str(self.dir), "hits": self.hits, "misses": self.misses, "corrupt": self.corrupt,
                "entries": entries, "size_mb": round(total / 2**20, 1)}


def _row_digest(row: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(row):
        t = row[name].contiguous()
        h.update(f"{name} {t.dtype} {tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _flatten(out, prefix: str = ""):
    """(structure, {path: batch-first tensor}) of a tower's output: tensors in dicts and tuples."""
    if isinstance(out, torch.Tensor):
        return "tensor", {prefix or "out": out}
    if isinstance(out, dict):
        parts = {k: _flatten(v, f"{prefix}{k}/") for k, v in out.items()}
        return {"dict": {k: s for k, (s, _) in parts.items()}}, {p: t for _, f in parts.values() for p, t in f.items()}
    if isinstance(out, (tuple, list)):
        parts = [_flatten(v, f"{prefix}{i}/") for i, v in enumerate(out)]
        return {"tuple": [s for s, _ in parts]}, {p: t for _, f in parts for p, t in f.items()}
    raise TypeError(f"a cached tower returned {type(out).__name__}, not tensors in dicts and tuples")


def _unflatten(structure, flat: dict, prefix: str = ""):
    if structure == "tensor":
        return flat[prefix or "out"]
    if "dict" in structure:
        return {k: _unflatten(s, flat, f"{prefix}{k}/") for k, s in structure["dict"].items()}
    return tuple(_unflatten(s, flat, f"{prefix}{i}/") for i, s in enumerate(structure["tuple"]))


def _write_whole(path: Path, data: bytes) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
