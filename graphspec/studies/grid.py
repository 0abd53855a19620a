"""What a grid varies, read from a grid file, Python values or `--grid PATH=V1,V2` arguments, and checked
against the base spec: unknown paths (with a 'did you mean'), paths varied twice. Every setting keeps where it
was written, so a variant's problem is located at the grid."""

from __future__ import annotations

import itertools
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path as FsPath
from typing import Any, Iterable, Mapping, Sequence

from graphspec.language.errors import Issue, Loc, SpecError, suggest
from graphspec.language.navigate import model_at
from graphspec.language.parsing import load_scalar, parse_file

GRID_KEYS = ("base", "grid", "variants")
ENTRY_KIND = {("nodes",): "node", ("heads",): "head", ("objectives",): "objective", ("inputs",): "input"}
DOTTED = re.compile(r"[^.\s=]+(\.[^.\s=]+)*")


@dataclass(frozen=True)
class Setting:
    """One field change as written: its dotted path, its value, and where the key and the value were written."""

    dotted: str
    value: Any
    key_loc: Loc
    value_loc: Loc

    @property
    def path(self) -> tuple:
        return tuple(int(p) if p.isdigit() else p for p in self.dotted.split("."))  # as `--set` reads it


@dataclass
class Grid:
    """What to vary: `axes` (each the alternative settings of one path) and `entries` (each a set of settings)."""

    base: FsPath | None = None
    axes: list[list[Setting]] = field(default_factory=list)
    entries: list[list[Setting]] = field(default_factory=list)



def show(value: Any) -> str:
    return value if isinstance(value, str) and re.fullmatch(r"[\w./:+-]+", value) else json.dumps(value)



# --- reading grids (a file, Python values, `--grid` arguments) ---------------------------------------


def make_axis(key: Any, values: Any, key_loc: Loc, value_locs: Sequence[Loc], issues: list[Issue]) -> list[Setting]:
    """The settings of one grid axis, or [] with the problems reported."""
    if not isinstance(key, str) or not DOTTED.fullmatch(key):
        issues.append(Issue((), f"'{key}' is not a dotted field path", hint="write e.g. nodes.fusion.width",
                            loc=key_loc))
        return []
    if not isinstance(values, list) or not values:
        issues.append(Issue((), f"'{key}': a grid axis takes a non-empty list of values",
                            hint=f"write `{key}: [{show(values)}]`" if values not in ([], None) else "", loc=key_loc))
        return []
    seen: set[str] = set()
    for value, loc in zip(values, value_locs):
        typed = json.dumps(value, sort_keys=True)  # 1, 1.0 and true differ here, as they do in a spec
        if typed in seen:
            issues.append(Issue((), f"'{key}': the value {show(value)} is given twice", hint="remove one", loc=loc))
        seen.add(typed)
    return [Setting(key, v, key_loc, loc) for v, loc in zip(values, value_locs)]


def _entry(entry: Any, key_locs: Mapping[str, Loc], loc: Loc, issues: list[Issue]) -> list[Setting]:
    if not isinstance(entry, dict):
        issues.append(Issue((), "a listed variant is a mapping {path: value}", hint="write e.g. `- {a.b: 1}`", loc=loc))
        return []
    bad = [k for k in entry if not isinstance(k, str) or not DOTTED.fullmatch(k)]
    issues.extend(Issue((), f"'{k}' is not a dotted field path", loc=key_locs.get(k, loc)) for k in bad)
    return [Setting(k, v, key_locs.get(k, loc), key_locs.get(k, loc)) for k, v in entry.items() if k not in bad]


def grid_from(grid: Mapping | None = None, variants: Sequence[Mapping] | None = None) -> Grid:
    """A grid from Python values; problems are located at 'grid PATH=VALUE' or 'variants[i] PATH=VALUE'."""
    issues: list[Issue] = []
    axes = [make_axis(k, list(v) if isinstance(v, tuple) else v, Loc(f"grid {k}"),
                      [Loc(f"grid {k}={show(x)}") for x in v] if isinstance(v, (list, tuple)) else [], issues)
            for k, v in (grid or {}).items()]
    rows = [_entry(e, {k: Loc(f"variants[{i}] {k}={show(v)}") for k, v in e.items()} if isinstance(e, dict) else {},
                   Loc(f"variants[{i}]"), issues) for i, e in enumerate(variants or [])]
    if issues:
        raise SpecError(issues, "in the grid")
    return Grid(None, [a for a in axes if a], rows)


def is_grid_file(path: str | FsPath) -> bool:
    """Whether `path` holds a grid (base:, grid:, variants:) rather than a spec, which has none of these keys."""
    data, _, _ = parse_file(FsPath(path))
    return isinstance(data, dict) and any(k in data for k in GRID_KEYS)


def load_grid(path: str | FsPath, extra_keys: Iterable[str] = ()) -> Grid:
    """Read a grid file, every key located; raise every problem at once.

    `extra_keys` are keys the caller reads itself (a study file's `name`, `stages`, ...); any other is an error.
    """
    data, smap, issues = parse_file(FsPath(path))
    if not isinstance(data, dict):
        issues = issues or [Issue((), "a grid file is a mapping: base:, grid: and/or variants:", loc=Loc(str(path)))]
        raise SpecError(issues, f"in {path}")
    known = (*GRID_KEYS, *extra_keys)
    issues += [Issue((k,), f"unknown key '{k}'", suggest(k, known), loc=smap.locate((k,)))
               for k in data if k not in known]
    base = data.get("base")
    if not isinstance(base, str) or not (FsPath(path).parent / base).is_file():
        issues.append(Issue(("base",), "missing 'base'" if base is None else f"base spec '{base}' not found",
                            hint="give the base spec's path, relative to this file", loc=smap.locate(("base",))))
    grid, entries = data.get("grid") or {}, data.get("variants") or []
    for key, ok, what in (("grid", isinstance(grid, dict), "a mapping {path: [values]}"),
                          ("variants", isinstance(entries, list), "a list of mappings {path: value}")):
        if not ok:
            issues.append(Issue((key,), f"'{key}' takes {what}", loc=smap.locate((key,))))
    grid, entries = grid if isinstance(grid, dict) else {}, entries if isinstance(entries, list) else []
    axes = [make_axis(k, v, smap.locate(("grid", k)), [smap.locate(("grid", k, i)) for i in range(len(v))]
                  if isinstance(v, list) else [], issues) for k, v in grid.items()]
    rows = [_entry(e, {k: smap.locate(("variants", i, k)) for k in e} if isinstance(e, dict) else {},
                   smap.locate(("variants", i)), issues) for i, e in enumerate(entries)]
    if not grid and not entries:
        issues.append(Issue((), "nothing to vary", hint="add `grid: {path: [v1, v2]}` or `variants: [{path: v}]`",
                            loc=Loc(str(path))))
    if issues:
        raise SpecError(issues, f"in {path}")
    return Grid(FsPath(os.path.normpath(FsPath(path).parent / base)), [a for a in axes if a], rows)


# --- checking paths against the base -----------------------------------------------------------------


def _path_issue(s: Setting, data: dict) -> Issue | None:
    """An unknown node or field on the way to `s.path`, with a 'did you mean'; None when the path can be set."""
    cur: Any = data
    for n, part in enumerate(s.path):
        if isinstance(cur, list) or (cur is not None and not isinstance(cur, dict)):
            return None  # through a list or a value: `_set_path` checks it
        cur = cur or {}  # an unset section (`size: null`): its fields are still known
        if part in cur:
            cur = cur[part]
            continue
        model = model_at(s.path[:n], data)
        if model is not None:
            if part in model.model_fields:
                return None  # a field the base leaves unset
            return Issue(s.path[: n + 1], f"unknown field '{part}'", suggest(part, model.model_fields), loc=s.key_loc)
        if n == len(s.path) - 1:
            return None  # a new entry of a free-keyed mapping (a head, an lr multiplier)
        kind = ENTRY_KIND.get(s.path[:n], "entry")
        return Issue(s.path[: n + 1], f"unknown {kind} '{part}'", suggest(part, cur), loc=s.key_loc)
    return None


def static_issues(grid: Grid, data: dict) -> list[Issue]:
    """Unknown paths, and paths varied twice (or one inside another) in one variant: each reported once."""
    found = (_path_issue(s, data) for s in itertools.chain(*grid.axes, *grid.entries))
    out = dict.fromkeys(issue for issue in found if issue is not None)  # a dict: each once, in order
    axis_keys = [a[0] for a in grid.axes]
    for entry in grid.entries or [[]]:
        keys = axis_keys + entry
        for i, a in enumerate(keys):
            for b in keys[i + 1:]:
                if b.path[: len(a.path)] == a.path or a.path[: len(b.path)] == b.path:
                    out[Issue(b.path, f"'{b.dotted}' overlaps '{a.dotted}', also varied",
                              hint="vary each field in one place", loc=b.key_loc)] = None
    return list(out)



def split_values(text: str) -> list[str]:
    """'a,{b: 1, c: 2},[3, 4]' -> ['a', '{b: 1, c: 2}', '[3, 4]']: commas in brackets or quotes stay."""
    parts, depth, quote, start = [], 0, "", 0
    for i, ch in enumerate(text):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "[{" or ch in "]}":
            depth += 1 if ch in "[{" else -1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    return parts + [text[start:]]


def grid_arg(text: str, issues: list[Issue]) -> list:
    """`--grid PATH=V1,V2`: the values read as `--set` reads one (YAML 1.2), located at the argument."""
    loc = Loc(f"--grid {text}")
    key, sep, raw = text.partition("=")
    pieces = split_values(raw)
    if not sep or not key.strip() or any(not p.strip() for p in pieces):
        issues.append(Issue((), f"bad --grid '{text}': expected PATH=V1,V2,...",
                            hint="write --grid path.to.field=v1,v2 (an empty text as '')", loc=loc))
        return []
    try:
        values = [load_scalar(p, f"--grid {key.strip()}") for p in pieces]
    except ValueError as e:
        issues.append(Issue((), f"bad --grid '{text}': {e}", hint="quote text values", loc=loc))
        return []
    return make_axis(key.strip(), values, loc, [loc] * len(values), issues)
