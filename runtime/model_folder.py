"""An export folder or a hub repository is input we did not write: its manifest, its weights file and its
configs are checked before anything is allocated or any library reads them.

- the manifest (graphspec.json): JSON, an object, a format this graphspec reads, a spec that validates;
- the weights (model.safetensors): the header read by hand (its length checked against the file before it is
  read), every tensor's dtype, shape and byte range checked against the file, and against the names, shapes
  and dtypes the export recorded;
- the spec on the meta device (no memory) must hold exactly those tensors: a manifest whose spec asks for a
  model far larger than the weights it ships is refused before the model is built;
- no code: a config asking transformers to import code from the folder (`auto_map`) is refused by name
  (graphspec.compiler.backbones.refuse_remote_code), every transformers call passes trust_remote_code=False,
  nothing is unpickled, and the `.pt2` program is never loaded here.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from pydantic import ValidationError

from graphspec.compiler.backbones import refuse_remote_code
from graphspec.compiler.folders import EXPORT_FORMAT, EXPORT_MANIFEST, WEIGHTS
from graphspec.language.errors import GraphspecError, Issue, Loc
from graphspec.language.schema import Spec

READS = (1, EXPORT_FORMAT)  # export formats load_model reads: 1 differs only in the program's output names
MAX_MANIFEST = 64 * 2**20  # bytes: a manifest is a spec and some labels
MAX_HEADER = 100 * 2**20  # bytes: safetensors' own limit for a header
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
               "U16": 2, "U32": 4, "U64": 8, "F8_E4M3": 1, "F8_E5M2": 1}


class ModelFolderError(GraphspecError):
    """An export folder (or hub repository) that is damaged, or not one this graphspec reads."""

    exit_code = 2


def _fail(file: Path, message: str, hint: str = "export the model again, or download it again") -> ModelFolderError:
    return ModelFolderError([Issue((), message, hint, loc=Loc(str(file)))], title="cannot load this model")


def read_manifest(folder: Path) -> tuple[dict, Spec]:
    """The export's manifest and its spec, each checked."""
    file = folder / EXPORT_MANIFEST
    try:
        if file.stat().st_size > MAX_MANIFEST:
            raise _fail(file, f"{file.stat().st_size:,} bytes: not a manifest graphspec writes")
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise _fail(file, f"cannot read it: {str(e)[:200]}") from None
    if not isinstance(manifest, dict):
        raise _fail(file, "not a graphspec export manifest (a JSON object)")
    version = manifest.get("format_version")
    if version not in READS:
        raise _fail(file, f"export format {version!r}; this graphspec reads formats {READS[0]} to {READS[-1]}",
                    "load it with the graphspec that exported it")
    if not isinstance(manifest.get("spec"), dict):
        raise _fail(file, "holds no spec (`spec`, an object)")
    try:
        spec = Spec.model_validate(manifest["spec"])
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise _fail(file, f"its spec does not fit this graphspec: spec.{where}: {first['msg']}") from None
    for key in ("labels", "tensors"):
        if key in manifest and not isinstance(manifest[key], dict):
            raise _fail(file, f"`{key}` is not an object")
    return manifest, spec


def weights_header(file: Path) -> dict[str, dict]:
    """{name: {"dtype", "shape"}} of a safetensors file, every entry checked against the file's size before
    anything is allocated by a number read from it."""
    try:
        size = file.stat().st_size
        with open(file, "rb") as f:
            head = f.read(8)
            length = int.from_bytes(head, "little") if len(head) == 8 else -1
            if length < 2 or length > min(MAX_HEADER, size - 8):
                raise _fail(file, f"not a safetensors file (its header length {length:,} does not fit the file's "
                            f"{size:,} bytes)")
            header = json.loads(f.read(length).decode("utf-8"))
    except (OSError, ValueError) as e:
        raise _fail(file, f"cannot read its header: {str(e)[:200]}") from None
    if not isinstance(header, dict):
        raise _fail(file, "its header is not a JSON object")
    body = size - 8 - length
    out: dict[str, dict] = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        ok = isinstance(entry, dict) and entry.get("dtype") in DTYPE_BYTES and isinstance(entry.get("shape"), list) \
            and all(isinstance(d, int) and d >= 0 for d in entry["shape"]) \
            and isinstance(entry.get("data_offsets"), list) and len(entry["data_offsets"]) == 2 \
            and all(isinstance(o, int) for o in entry["data_offsets"])
        if not ok:
            raise _fail(file, f"tensor '{str(name)[:80]}': not a safetensors entry (dtype, shape, data_offsets)")
        start, end = entry["data_offsets"]
        need = math.prod(entry["shape"]) * DTYPE_BYTES[entry["dtype"]]
        if not 0 <= start <= end <= body or end - start != need:
            raise _fail(file, f"tensor '{name}' claims bytes {start:,} to {end:,} for {need:,} bytes of data, and "
                        f"the file holds {body:,} (cut short, or its header lies)")
        out[name] = {"dtype": entry["dtype"], "shape": entry["shape"]}
    return out


def check_weights(folder: Path, manifest: dict) -> dict[str, dict]:
    """The weights file's tensors, checked, and equal to those the export recorded (format 2 records them)."""
    file = folder / WEIGHTS
    found = weights_header(file)
    recorded = manifest.get("tensors")
    if recorded is not None and recorded != found:
        differ = sorted(set(recorded) ^ set(found)) or sorted(n for n in found if recorded[n] != found[n])
        raise _fail(file, f"holds other tensors than the export recorded in {EXPORT_MANIFEST} ({len(differ)} "
                    f"differ, e.g. '{differ[0]}')")
    return found


def check_model_fits(spec: Spec, tensors: dict[str, dict], folder: Path):
    """The spec's model on the meta device (no memory): every weight of the file is one of its tensors, of
    its shape, and the model holds no more than the file does; returns the meta model."""
    from graphspec.compiler import FreezePlan, build_weights

    meta = build_weights(spec, FreezePlan(frozenset(), (), (), ()), meta=True)
    tensors_of = meta.state_dict(keep_vars=True)
    state = {n: list(t.shape) for n, t in tensors_of.items()}
    wrong = [n for n, t in tensors.items() if state.get(n) != t["shape"]]
    held = sum(t.numel() for t in {id(t): t for t in tensors_of.values()}.values())  # a tied weight once
    shipped = sum(math.prod(t["shape"]) for t in tensors.values())
    if wrong or held > shipped:
        why = (f"'{wrong[0]}' is {tensors[wrong[0]]['shape']} in the weights file and "
               f"{state.get(wrong[0], 'absent')} in the spec's model" if wrong else
               f"the spec's model holds {held:,} numbers, the weights file {shipped:,}")
        raise _fail(folder / EXPORT_MANIFEST, f"its spec does not describe the weights it ships: {why}",
                    "export the model again (the manifest and the weights come from one export)")
    return meta


def check_folder(folder: Path) -> tuple[dict, Spec, dict[str, dict]]:
    """Everything checked before load_model builds a weight: (manifest, spec, the weights' tensors)."""
    for where in [folder, *sorted(p for p in (folder / "towers").glob("*") if p.is_dir())]:
        refuse_remote_code(where)
    manifest, spec = read_manifest(folder)
    return manifest, spec, check_weights(folder, manifest)
