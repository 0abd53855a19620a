"""Reading spec files into plain data plus a map of where every value was written.

YAML is read with PyYAML's safe loader, node by node, so that each key keeps its
line and column; tags that would construct Python objects are errors, and so
are duplicate keys (PyYAML would silently keep the last one). JSON is checked
with the json module first (its messages are the clearest for JSON) and then
read the same way for positions.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path as FsPath
from typing import Any

import yaml

from .errors import Issue, Loc, Path

SAFE_TAGS = {
    "tag:yaml.org,2002:" + t
    for t in ("str", "int", "float", "bool", "null", "map", "seq", "timestamp", "binary")
}


@dataclass
class SourceMap:
    """Field path -> where it was written. Lookups fall back to the nearest parent."""

    locs: dict[Path, Loc] = field(default_factory=dict)
    default: Loc | None = None

    def locate(self, path: Path) -> Loc | None:
        path = tuple(path)
        for n in range(len(path), -1, -1):
            loc = self.locs.get(path[:n])
            if loc is not None:
                return loc
        return self.default

    def set(self, path: Path, loc: Loc) -> None:
        """Record `path`, forgetting what was recorded beneath it (it was replaced)."""
        path = tuple(path)
        for p in [p for p in self.locs if p[: len(path)] == path]:
            del self.locs[p]
        self.locs[path] = loc

    def merged_over(self, base: "SourceMap") -> "SourceMap":
        out = SourceMap(dict(base.locs), self.default or base.default)
        out.locs.update(self.locs)
        return out


class SpecLoader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2's plain scalars: `1e-4` is a number, `yes`/`no`/`on`/`off` are text.

    PyYAML follows YAML 1.1, where a float needs a dot, `no` means false and `2:4`
    is the base-60 integer 124; spec authors write `lr: 1e-4`, `country: no` and
    `layers: 2:4` and mean what YAML 1.2 (and JSON) mean.
    """


_YAML11 = ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:int", "tag:yaml.org,2002:float")
SpecLoader.yaml_implicit_resolvers = {
    ch: [(tag, rx) for tag, rx in rs if tag not in _YAML11] for ch, rs in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
SpecLoader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                 list("tTfF"))
# Integers before floats (the float pattern also matches `12`); decimal only: `012` is 12, not octal 10.
SpecLoader.add_implicit_resolver("tag:yaml.org,2002:int", re.compile(r"^[-+]?[0-9]+$"), list("-+0123456789"))
SpecLoader.add_constructor("tag:yaml.org,2002:int", lambda loader, node: int(loader.construct_scalar(node), 10))
SpecLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."),
)


def load_scalar(text: str):
    """A single value as a spec file would read it (for `--set path=value`)."""
    return yaml.load(text, Loader=SpecLoader)


def _loc(file: str, mark: yaml.Mark | None) -> Loc:
    if mark is None:
        return Loc(file)
    return Loc(file, mark.line + 1, mark.column + 1)


class _Reader:
    def __init__(self, file: str, text: str):
        self.file = file
        self.loader = SpecLoader(text)
        self.smap = SourceMap(default=Loc(file))
        self.issues: list[Issue] = []
        self.written: dict[int, set[int]] = {}

    def read(self) -> Any:
        try:
            node = self.loader.get_single_node()
        except yaml.MarkedYAMLError as e:
            mark = e.problem_mark or e.context_mark
            msg = " ".join(str(x) for x in (e.context, e.problem) if x)
            self.issues.append(Issue((), f"not valid YAML: {msg}", loc=_loc(self.file, mark)))
            return None
        finally:
            self.loader.dispose()
        if node is None:
            return None
        return self._value(node, ())

    def _value(self, node: yaml.Node, path: Path) -> Any:
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, path)
        if isinstance(node, yaml.SequenceNode):
            if node.tag not in SAFE_TAGS:
                self.issues.append(Issue(path, f"the tag '{node.tag}' is not allowed: a spec is data",
                                         hint="remove the tag", loc=_loc(self.file, node.start_mark)))
                return None
            out = []
            for i, item in enumerate(node.value):
                self.smap.locs[path + (i,)] = _loc(self.file, item.start_mark)
                out.append(self._value(item, path + (i,)))
            return out
        if node.tag not in SAFE_TAGS:
            self.issues.append(
                Issue(path, f"the tag '{node.tag}' is not allowed: a spec is data and never constructs objects",
                      hint="remove the tag and write the value as plain YAML", loc=_loc(self.file, node.start_mark))
            )
            return None
        try:
            return self.loader.construct_object(node)
        except (yaml.YAMLError, ValueError, KeyError, AttributeError) as e:  # e.g. `2020-13-45`, `!!int abc`
            kind = node.tag.rsplit(":", 1)[-1]
            self.issues.append(Issue(path, f"cannot read the value {node.value!r} as {kind}: {e}",
                                     hint="quote it to make it text", loc=_loc(self.file, node.start_mark)))
            return None

    def _mapping(self, node: yaml.MappingNode, path: Path) -> dict:
        if node.tag not in SAFE_TAGS:
            self.issues.append(Issue(path, f"the tag '{node.tag}' is not allowed: a spec is data",
                                     hint="remove the tag", loc=_loc(self.file, node.start_mark)))
            return {}
        # Keys written here, not brought in by `<<:`; remembered, as an alias visits the flattened node again.
        written = self.written.setdefault(id(node), {id(k) for k, _ in node.value})
        try:
            self.loader.flatten_mapping(node)  # resolves `<<: *anchor` merge keys (merged pairs come first)
        except yaml.MarkedYAMLError as e:
            self.issues.append(Issue(path, f"bad merge key: {e.problem}", hint="merge a mapping: `<<: *anchor`",
                                     loc=_loc(self.file, e.problem_mark)))
            return {}
        out: dict = {}
        first: dict[str, Loc] = {}
        for knode, vnode in node.value:
            key = self._value(knode, path)
            here = _loc(self.file, knode.start_mark)
            if not isinstance(key, str):
                self.issues.append(Issue(path, f"keys must be text, not {key!r}", hint=f'quote it: "{key}"', loc=here))
                continue
            if key in first and id(knode) in written:
                self.issues.append(Issue(path + (key,), f"duplicate key '{key}' (first at line {first[key].line})",
                                         hint="keep one of them", loc=here))
                continue
            if id(knode) in written:
                first[key] = here
            if key in out:
                self.smap.set(path + (key,), here)  # a later pair overrides a merged one, as in YAML
            else:
                self.smap.locs[path + (key,)] = here
            out[key] = self._value(vnode, path + (key,))
        return out


def _json_issue(file: str, text: str) -> Issue | None:
    try:
        json.loads(text)
    except json.JSONDecodeError as e:
        return Issue((), f"not valid JSON: {e.msg}", loc=Loc(file, e.lineno, e.colno))
    return None


def parse_text(text: str, file: str = "<spec>", fmt: str = "yaml") -> tuple[Any, SourceMap, list[Issue]]:
    """Parse spec text: (data, where each value was written, problems)."""
    if fmt == "json":
        bad = _json_issue(file, text)
        if bad is not None:
            return None, SourceMap(default=Loc(file)), [bad]
    reader = _Reader(file, text)
    data = reader.read()
    if fmt == "json" and reader.issues and data is None:
        # Valid JSON that PyYAML cannot read (rare: tabs as indentation); keep the data, lose the lines.
        return json.loads(text), SourceMap(default=Loc(file)), []
    return data, reader.smap, reader.issues


def parse_file(path: FsPath) -> tuple[Any, SourceMap, list[Issue]]:
    file = str(path)
    try:
        text = FsPath(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None, SourceMap(), [Issue((), "no such file", hint="check the path", loc=Loc(file))]
    except (OSError, UnicodeDecodeError) as e:
        return None, SourceMap(), [Issue((), f"cannot read the file: {e}", loc=Loc(file))]
    fmt = "json" if file.lower().endswith(".json") else "yaml"
    return parse_text(text, file, fmt)
