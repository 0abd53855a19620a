"""Reading spec files into plain data plus a map of where every value was written.

YAML is read with PyYAML's safe loader, node by node, so that each key keeps its
line and column; tags that would construct Python objects are errors, and so
are duplicate keys (PyYAML would silently keep the last one). JSON is checked
with the json module first (its messages are the clearest for JSON) and then
read the same way for positions.

Hostile or broken input ends in a located issue, fast and in bounded memory,
never in a traceback: a file is read only when it is a regular file of at most
MAX_BYTES; its bytes must be UTF-8 text without control characters (a UTF-16
file or a NUL byte is named with its line and column); nesting deeper than
MAX_DEPTH stops the composer; aliases are counted before anything expands them,
so an alias bomb (anchors of lists of aliases of anchors) is refused without
being built; a value longer than MAX_SCALAR characters, or an integer beyond
64 bits, is refused where it is written. The same reader reads `--set` and
`--grid` values, grid files and study files.
"""

from __future__ import annotations

import json
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path as FsPath
from typing import Any

import yaml

from .errors import Issue, Loc, Path

MAX_BYTES = 1 << 20  # a spec is a page or two; a megabyte is not a spec
MAX_DEPTH = 64  # the deepest real spec nests about 6 levels
MAX_VALUES = 20_000  # values after aliases are expanded (the largest shipped spec holds about 300)
MAX_SCALAR = 10_000  # characters in one value
INT_LIMIT = 2**63 - 1
NON_PRINTABLE = yaml.reader.Reader.NON_PRINTABLE  # what YAML forbids in a document
BOMS = ((b"\xff\xfe\x00\x00", "UTF-32"), (b"\x00\x00\xfe\xff", "UTF-32"), (b"\xff\xfe", "UTF-16"),
        (b"\xfe\xff", "UTF-16"))

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

    The composer stops at MAX_DEPTH levels of nesting (PyYAML's is recursive, so a
    few thousand `[` would exhaust Python's stack) and remembers where each alias
    was used, for the alias budget.
    """

    def __init__(self, stream):
        super().__init__(stream)
        self.depth = 0
        self.alias_marks: list[yaml.Mark] = []

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            self.alias_marks.append(self.peek_event().start_mark)
            return super().compose_node(parent, index)
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                raise yaml.composer.ComposerError(None, None, f"nesting deeper than {MAX_DEPTH} levels",
                                                  self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


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


def load_scalar(text: str, where: str = "--set"):
    """A single value as a spec file would read it (for `--set path=value` and `--grid`), with every check of
    the spec reader; a ValueError names what is wrong with it."""
    bad = text_problem(text)
    if bad:
        raise ValueError(bad)
    reader = _Reader(where, text)
    value = reader.read()
    if reader.issues:
        raise ValueError("; ".join(i.message for i in reader.issues))
    return value


def text_problem(text: str) -> str:
    """What keeps `text` from being read as a spec (a control character, its place, a long text), or ''."""
    if len(text) > MAX_BYTES:
        return f"{len(text):,} characters; a spec is at most {MAX_BYTES:,}"
    found = NON_PRINTABLE.search(text)
    if found is None:
        return ""
    line = text.count("\n", 0, found.start()) + 1
    col = found.start() - (text.rfind("\n", 0, found.start()) + 1) + 1
    char = found.group()
    name = {"\x00": "NUL", "\x1b": "ESC", "\x7f": "DEL"}.get(char, "a control character")
    return f"line {line}, column {col} holds U+{ord(char):04X} ({name}), which text never holds"


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
            self.issues.append(Issue((), f"not valid YAML: {msg}", hint=_hint(msg), loc=_loc(self.file, mark)))
            return None
        except yaml.YAMLError as e:  # ReaderError and the like: text_problem catches them first
            self.issues.append(Issue((), f"not valid YAML: {e}", loc=Loc(self.file)))
            return None
        finally:
            self.loader.dispose()
        if node is None:
            return None
        if _expanded_size(node, MAX_VALUES) > MAX_VALUES:
            mark = self.loader.alias_marks[0] if self.loader.alias_marks else node.start_mark
            self.issues.append(Issue((), f"the document expands to more than {MAX_VALUES:,} values (aliases "
                                     "`*name` repeat what an anchor `&name` holds, and these repeat each other)",
                                     hint="write the values out, or use fewer aliases", loc=_loc(self.file, mark)))
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
        if node.tag == "tag:yaml.org,2002:int" and len(node.value.lstrip("+-")) > 19:
            self.issues.append(Issue(path, f"the number {_short(node.value)} is too large (at most 2^63 - 1)",
                                     hint="use a smaller number", loc=_loc(self.file, node.start_mark)))
            return None
        if len(node.value) > MAX_SCALAR:
            self.issues.append(Issue(path, f"a value of {len(node.value):,} characters; a spec value is at most "
                                     f"{MAX_SCALAR:,}", hint="shorten it", loc=_loc(self.file, node.start_mark)))
            return None
        try:
            value = self.loader.construct_object(node)
        except (yaml.YAMLError, ValueError, KeyError, AttributeError) as e:  # e.g. `2020-13-45`, `!!int abc`
            kind = node.tag.rsplit(":", 1)[-1]
            self.issues.append(Issue(path, f"cannot read the value {_short(node.value)} as {kind}: {_short(str(e))}",
                                     hint="quote it to make it text", loc=_loc(self.file, node.start_mark)))
            return None
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > INT_LIMIT:
            self.issues.append(Issue(path, f"the number {_short(node.value)} is too large (at most 2^63 - 1)",
                                     hint="use a smaller number", loc=_loc(self.file, node.start_mark)))
            return None
        return value

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


def _short(text: str, n: int = 60) -> str:
    text = repr(text) if not text.isdigit() else text
    return text if len(text) <= n else f"{text[:n - 20]}...{text[-12:]} ({len(text):,} characters)"


def _hint(message: str) -> str:
    if "nesting deeper" in message:
        return "a spec nests a few levels; flatten this value"
    return ""


def _expanded_size(root: yaml.Node, limit: int) -> int:
    """How many values the document holds once every alias is expanded, counted without expanding (each node
    once, memoised); stops early past `limit`."""
    memo: dict[int, int] = {}
    order, stack = [], [root]
    while stack:  # children before parents, without recursion
        node = stack.pop()
        if id(node) in memo:
            continue
        memo[id(node)] = -1
        order.append(node)
        stack.extend(_children(node))
    for node in reversed(order):
        memo[id(node)] = min(limit + 1, 1 + sum(memo[id(c)] for c in _children(node)))
    return memo[id(root)]


def _children(node: yaml.Node) -> list:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def _json_issue(file: str, text: str) -> Issue | None:
    try:
        json.loads(text)
    except json.JSONDecodeError as e:
        return Issue((), f"not valid JSON: {e.msg}", loc=Loc(file, e.lineno, e.colno))
    except RecursionError:
        return Issue((), f"not valid JSON: nesting deeper than {MAX_DEPTH} levels", loc=Loc(file))
    return None


def parse_text(text: str, file: str = "<spec>", fmt: str = "yaml") -> tuple[Any, SourceMap, list[Issue]]:
    """Parse spec text: (data, where each value was written, problems)."""
    bad = text_problem(text)
    if bad:
        return None, SourceMap(default=Loc(file)), [Issue((), f"not a spec: {bad}", "save it as plain UTF-8 text",
                                                          loc=Loc(file))]
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


def read_spec_text(path: FsPath) -> tuple[str | None, list[Issue]]:
    """A spec file's text, or the located reason it is not one (missing, a directory, unreadable, too large,
    not UTF-8 text)."""
    file = str(path)

    def fail(message: str, hint: str = "") -> tuple[None, list[Issue]]:
        return None, [Issue((), message, hint, loc=Loc(file))]

    try:
        info = FsPath(path).stat()
        if stat.S_ISDIR(info.st_mode):
            return fail("this is a directory, not a spec file", "give the path of a .yaml or .json file")
        if not stat.S_ISREG(info.st_mode):
            return fail("not a regular file", "give the path of a .yaml or .json file")
        if info.st_size > MAX_BYTES:
            return fail(f"{info.st_size:,} bytes; a spec file is at most {MAX_BYTES:,}", "is this the spec file?")
        with open(path, "rb") as f:
            raw = f.read(MAX_BYTES + 1)
    except FileNotFoundError:
        return fail("no such file", "check the path")
    except PermissionError:
        return fail("cannot read the file: permission denied", "make it readable (chmod u+r)")
    except OSError as e:
        return fail(f"cannot read the file: {e.strerror or e}")
    if len(raw) > MAX_BYTES:
        return fail(f"more than {MAX_BYTES:,} bytes; a spec file is at most that", "is this the spec file?")
    return decode_spec(raw, file)


def decode_spec(raw: bytes, file: str) -> tuple[str | None, list[Issue]]:
    """UTF-8 text (a UTF-8 byte-order mark is dropped), or the located reason it is not."""
    for bom, name in BOMS:
        if raw.startswith(bom):
            return None, [Issue((), f"the file is {name} text", "save it as UTF-8", loc=Loc(file))]
    raw = raw.removeprefix(b"\xef\xbb\xbf")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        col = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
        return None, [Issue((), f"not UTF-8 text: byte 0x{raw[e.start]:02x} at line {line}, column {col} "
                            f"({e.reason})", "save the file as UTF-8", loc=Loc(file, line, col))]
    bad = text_problem(text)
    if bad:
        utf16 = text.count("\x00") * 4 >= len(text)  # every other byte NUL: UTF-16 without a byte-order mark
        hint = "save it as UTF-8 (this looks like UTF-16)" if utf16 else "remove it: a spec is plain text"
        match = NON_PRINTABLE.search(text)
        line = text.count("\n", 0, match.start()) + 1
        col = match.start() - (text.rfind("\n", 0, match.start()) + 1) + 1
        return None, [Issue((), f"not a spec: {bad}", hint, loc=Loc(file, line, col))]
    return text, []


def parse_file(path: FsPath) -> tuple[Any, SourceMap, list[Issue]]:
    file = str(path)
    text, issues = read_spec_text(path)
    if text is None:
        return None, SourceMap(), issues
    fmt = "json" if file.lower().endswith(".json") else "yaml"
    return parse_text(text, file, fmt)
