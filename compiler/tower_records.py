"""Records of library towers built on the meta device, so checks need not import transformers or timm again.

Building a transformers or timm tower on the meta device is cheap; importing
the libraries to do it is not (about 3 s of `graphspec validate`'s 6-8 s on
this project's machine). What the compile-time checks read from a tower is
small: its tree of submodules with their parameters and buffers (names,
shapes, dtypes, ties), a few facts (widths, layer and embedding prefixes,
vocabulary, positions, patch size), the shapes of its outputs for the spec's
inputs, and the warnings its build gave. A record holds exactly that, and a
hit rebuilds a stand-in module from it on the meta device that answers every
check the way the tower did: freezing, tying, parameter counts, groups,
placement, widths and shapes.

The key is everything the tower's build reads: its kind; the node's fields
(its freeze annotation aside, which only the freeze rules read); the inputs
it reads; the ports the graph takes from it; the config file its `source`
points at (a local folder, a `package:` source or the Hugging Face cache), or
that there is none; the versions of torch, transformers and timm; the default
dtype; and a hash of the compiler's own code. Anything else changes the key,
so a record is never used for another tower. Only towers whose build and
shapes passed are recorded; errors are always found by building.

Records are JSON files under $GRAPHSPEC_TOWER_RECORDS (default
~/.cache/graphspec/tower-records; `off` turns them off), written whole (a
temporary file, then a rename). A file that does not read back, or holds
another key, is ignored and written again.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from importlib import metadata
from pathlib import Path

import torch
import torch.fx as fx
from torch import nn

from graphspec.language.errors import GraphspecError, Issue

from .kinds import KINDS
from .layers.adapter import Adapter

FORMAT = 1  # bump when the record's layout changes


def records_dir() -> Path | None:
    env = os.environ.get("GRAPHSPEC_TOWER_RECORDS")
    if env == "off":
        return None
    return Path(env) if env else Path.home() / ".cache" / "graphspec" / "tower-records"


@functools.cache
def _code_hash() -> str:
    """The compiler's own code: builders, adapters and layers decide what a tower looks like."""
    h = hashlib.sha256()
    root = Path(__file__).parent
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def library_version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "absent"


def _file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "absent"


def _config_fingerprint(node) -> str | None:
    """The transformers config a source names, as bytes on this machine (or 'absent'); None when unknowable."""
    from .backbones import local_source

    try:
        source = local_source(node.source, ())
    except GraphspecError:
        return None  # the build reports it
    path = Path(source)
    try:
        if path.is_dir():
            return _file_hash(path / "config.json")
        if path.exists():
            return _file_hash(path)
    except OSError:
        return None  # not a path this system can name, or unreadable: the build reports it
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(source, "config.json")
    except Exception:  # noqa: BLE001 - not a valid hub id: the build says so
        return None
    return _file_hash(Path(found)) if isinstance(found, str) else "absent"


def record_key(spec, g, name: str) -> str | None:
    """The key of node `name`'s record, or None when its tower is not recorded."""
    attrs = g.nodes[name]
    node = attrs["spec"]
    library = KINDS[attrs["kind"]].library(node)  # a kind built with transformers or timm is recorded
    if library is None:
        return None
    config = None
    if node.source and library == "transformers":  # a config read from its source: part of the key
        config = _config_fingerprint(node)
        if config is None:
            return None
    feeds = sorted({src for src, _ in g.in_edges(name)})
    parts = {
        "format": FORMAT, "kind": attrs["kind"], "node": node.model_dump(mode="json", exclude={"freeze"}),
        "inputs": {s: spec.inputs[s].model_dump(mode="json") for s in feeds if s in spec.inputs},
        "ports": sorted(attrs["out"]), "config": config, "dtype": str(torch.get_default_dtype()),
        "versions": [torch.__version__, library_version("transformers"), library_version("timm")], "code": _code_hash(),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


# ---- a module as a record, and back -----------------------------------------------------------------------------


def _simple(value) -> bool:
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    return isinstance(value, (tuple, list)) and len(value) <= 64 and all(_simple(v) for v in value)


def _tuples(value):
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def _tree(module: nn.Module, seen: dict[int, str], prefix: str = "") -> dict:
    params = []
    for pname, p in module._parameters.items():
        if p is None:
            continue
        if id(p) in seen:
            params.append([pname, {"alias": seen[id(p)]}])
            continue
        seen[id(p)] = prefix + pname
        params.append([pname, {"shape": list(p.shape), "dtype": str(p.dtype).removeprefix("torch."),
                               "grad": p.requires_grad}])
    buffers = [[bname, {"shape": list(b.shape), "dtype": str(b.dtype).removeprefix("torch."),
                        "persistent": bname not in module._non_persistent_buffers_set}]
               for bname, b in module._buffers.items() if b is not None]
    return {
        "class": type(module).__name__,
        "list": isinstance(module, (nn.ModuleList, nn.Sequential)),
        "attrs": {k: v for k, v in vars(module).items() if not k.startswith("_") and k != "training" and _simple(v)},
        "params": params, "buffers": buffers,
        "children": [[cname, _tree(child, seen, f"{prefix}{cname}.")]
                     for cname, child in module._modules.items() if child is not None],
    }


def _describe(value):
    """An output as JSON: tensors by shape and dtype, containers kept."""
    if isinstance(value, torch.Tensor):
        return {"tensor": list(value.shape), "dtype": str(value.dtype).removeprefix("torch.")}
    if isinstance(value, dict):
        return {"dict": [[k, _describe(v)] for k, v in value.items()]}
    if isinstance(value, (tuple, list)):
        return {"tuple": [_describe(v) for v in value]}
    if _simple(value):
        return {"value": value}
    raise TypeError(f"cannot record a {type(value).__name__}")


def _rebuild(desc):
    if "tensor" in desc:
        return torch.empty(desc["tensor"], dtype=getattr(torch, desc["dtype"]), device="meta")
    if "dict" in desc:
        return {k: _rebuild(v) for k, v in desc["dict"]}
    if "tuple" in desc:
        return tuple(_rebuild(v) for v in desc["tuple"])
    return _tuples(desc["value"])


def _facts(module: nn.Module) -> dict:
    adapter = module if isinstance(module, Adapter) else None
    embeddings = adapter.input_embeddings() if adapter is not None else None
    where = next((n for n, m in module.named_modules(remove_duplicate=False) if m is embeddings), None)
    return {
        "layer_prefixes": adapter.layer_prefixes() if adapter is not None else None,
        "embedding_prefixes": adapter.embedding_prefixes() if adapter is not None else None,
        "port_widths": adapter.port_widths() if adapter is not None else {},
        "num_layers": adapter.num_layers if adapter is not None else None,
        "input_embeddings": where,
        "parts": module.parts() if callable(getattr(module, "parts", None)) else None,
    }


class _Part(nn.Module):
    """A recorded submodule: its parameters, buffers and plain attributes on the meta device; it never runs."""

    def __init__(self, tree: dict, params: dict[str, nn.Parameter], prefix: str = ""):
        super().__init__()
        _fill(self, tree, params, prefix)


class _PartList(nn.ModuleList):
    def __init__(self, tree: dict, params: dict[str, nn.Parameter], prefix: str = ""):
        super().__init__()
        _fill(self, tree, params, prefix)


def _fill(module: nn.Module, tree: dict, params: dict[str, nn.Parameter], prefix: str) -> None:
    module.recorded_class = tree["class"]
    for key, value in tree["attrs"].items():
        try:
            setattr(module, key, _tuples(value))
        except AttributeError:  # a read-only property of the stand-in's class (num_layers): answered by it
            pass
    for pname, p in tree["params"]:
        if "alias" in p:
            module.register_parameter(pname, params[p["alias"]])
            continue
        param = nn.Parameter(torch.empty(p["shape"], dtype=getattr(torch, p["dtype"]), device="meta"),
                             requires_grad=p["grad"])
        params[prefix + pname] = param
        module.register_parameter(pname, param)
    for bname, b in tree["buffers"]:
        module.register_buffer(bname, torch.empty(b["shape"], dtype=getattr(torch, b["dtype"]), device="meta"),
                               persistent=b["persistent"])
    for cname, child in tree["children"]:
        kind = _PartList if child["list"] else _Part
        module.add_module(cname, kind(child, params, f"{prefix}{cname}."))


class RecordedTower(_Part, Adapter):
    """A library tower rebuilt from its record: what the checks read, and its outputs' shapes for the spec's inputs."""

    def __init__(self, record: dict):
        super().__init__(record["tree"], {})
        self._facts = record["facts"]
        self._output = record["output"]

    def layer_prefixes(self) -> list[str]:
        return list(self._facts["layer_prefixes"] or [])

    def embedding_prefixes(self) -> list[str]:
        return list(self._facts["embedding_prefixes"] or [])

    def port_widths(self) -> dict[str, int]:
        return dict(self._facts["port_widths"])

    @property
    def num_layers(self) -> int:
        return self._facts["num_layers"] or 0

    def input_embeddings(self) -> nn.Module | None:
        where = self._facts["input_embeddings"]
        return None if where is None else self.get_submodule(where)

    def parts(self) -> dict[str, int] | None:
        return self._facts.get("parts")

    def forward(self, *args, **kwargs):
        return _rebuild(self._output)


# ---- the store -------------------------------------------------------------------------------------------------


class TowerRecords:
    """Lookups during one compile; `save` writes the towers built anew once their shapes are known."""

    def __init__(self):
        self.root = records_dir()
        self.built: dict[str, tuple[str, nn.Module, list[Issue]]] = {}  # node -> (key, module, its warnings)
        self.hits: list[str] = []

    def key(self, spec, g, name: str) -> str | None:
        return None if self.root is None else record_key(spec, g, name)

    def lookup(self, key: str) -> tuple[nn.Module, list[Issue]] | None:
        try:
            record = json.loads((self.root / f"{key}.json").read_text())
            if record.get("key") != key or record.get("format") != FORMAT:
                return None
            module = RecordedTower(record)
            warnings = [Issue(_tuples(w["path"]), w["message"], w["hint"], w["severity"]) for w in record["warnings"]]
        except (OSError, ValueError, KeyError, TypeError, AttributeError, RuntimeError):
            return None  # absent or not a record this graphspec wrote: build the tower
        return module, warnings

    def remember(self, name: str, key: str, module: nn.Module, warnings: list[Issue]) -> None:
        self.built[name] = (key, module, warnings)

    def save(self, gm: fx.GraphModule) -> None:
        """Write a record for each tower built in this compile (call after shapes were propagated)."""
        if self.root is None or not self.built:
            return
        outputs = {n.name: n.meta.get("value") for n in gm.graph.nodes if n.op == "call_module"}
        for name, (key, module, warnings) in self.built.items():
            if outputs.get(name) is None:
                continue
            record = {"format": FORMAT, "key": key, "tree": _tree(module, {}), "facts": _facts(module),
                      "output": outputs[name],
                      "warnings": [{"path": list(w.path), "message": w.message, "hint": w.hint,
                                    "severity": w.severity} for w in warnings]}
            try:
                self.root.mkdir(parents=True, exist_ok=True)
                tmp = self.root / f".{key}.{os.getpid()}.tmp"
                tmp.write_text(json.dumps(record))
                os.replace(tmp, self.root / f"{key}.json")
            except OSError:
                return  # a cache that cannot be written only costs time


def describe_output(value):
    """What `save` records of a node's output (the shape recorder stores it on the node)."""
    try:
        return _describe(value)
    except TypeError:
        return None
