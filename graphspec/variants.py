"""Variants: specs derived from a base spec by a grid or a list of field changes.

A grid `{path: [values]}` gives the cartesian product of its values; a list gives
variants one by one; given both, every listed variant is combined with every grid
point. A change sets a dotted path as `--set` does (a mapping value replaces the
field whole). Each variant is named after what changed, validated (schema, spec
rules and, by default, every compile check) and written as a spec file that
`extends:` the base and holds only the changes.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path as FsPath
from typing import Any, Iterable, Mapping, Sequence

import yaml

from .errors import EnvironmentProblem, GraphspecError, Issue, Loc, SpecError, suggest
from .loader import _merge, _read_with_extends, _set_path, load, null_deletes, source_map, validate_data
from .schema import Spec
from .schema_nav import model_at
from .source import SourceMap, SpecLoader, parse_file

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


@dataclass(frozen=True)
class Variant:
    """A derived spec: its name, its changes (dotted path -> value, in order) and the validated spec."""

    name: str
    changes: dict[str, Any]
    spec: Spec
    base: FsPath | None = None  # the base spec file, when the variants came from one
    warnings: tuple[Issue, ...] = ()

    def describe(self) -> str:
        return ", ".join(f"{k}={_show(v)}" for k, v in self.changes.items()) or "(the base spec)"


def _show(value: Any) -> str:
    return value if isinstance(value, str) and re.fullmatch(r"[\w./:+-]+", value) else json.dumps(value)


# --- reading grids (a file, Python values; `--grid` is read in cli.py) ------------------------------


def make_axis(key: Any, values: Any, key_loc: Loc, value_locs: Sequence[Loc], issues: list[Issue]) -> list[Setting]:
    """The settings of one grid axis, or [] with the problems reported."""
    if not isinstance(key, str) or not DOTTED.fullmatch(key):
        issues.append(Issue((), f"'{key}' is not a dotted field path", hint="write e.g. nodes.fusion.width",
                            loc=key_loc))
        return []
    if not isinstance(values, list) or not values:
        issues.append(Issue((), f"'{key}': a grid axis takes a non-empty list of values",
                            hint=f"write `{key}: [{_show(values)}]`" if values not in ([], None) else "", loc=key_loc))
        return []
    seen: set[str] = set()
    for value, loc in zip(values, value_locs):
        typed = json.dumps(value, sort_keys=True)  # 1, 1.0 and true differ here, as they do in a spec
        if typed in seen:
            issues.append(Issue((), f"'{key}': the value {_show(value)} is given twice", hint="remove one", loc=loc))
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
                      [Loc(f"grid {k}={_show(x)}") for x in v] if isinstance(v, (list, tuple)) else [], issues)
            for k, v in (grid or {}).items()]
    rows = [_entry(e, {k: Loc(f"variants[{i}] {k}={_show(v)}") for k, v in e.items()} if isinstance(e, dict) else {},
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


def _static_issues(grid: Grid, data: dict) -> list[Issue]:
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


# --- names -------------------------------------------------------------------------------------------


def _token(value: Any, limit: int = 40) -> str:
    """A value as a short, lowercase, filesystem-safe name part."""
    if isinstance(value, dict):
        text = "_".join(f"{k}-{_token(v, limit)}" for k, v in value.items())
    elif isinstance(value, list):
        text = "_".join(_token(v, limit) for v in value)
    else:
        text = json.dumps(value) if value is None or isinstance(value, bool) else str(value)
    text = re.sub(r"[^a-z0-9_.-]+", "_", text.lower()).strip("_") or "empty"
    if len(text) > limit:
        text = text[: limit - 8] + "-" + hashlib.sha1(text.encode()).hexdigest()[:7]
    return text


def _labels(paths: list[str]) -> dict[str, str]:
    """Each path's shortest tail (two components at least) that no other varied path ends with."""
    split = {p: p.lower().split(".") for p in paths}
    out = {}
    for p, parts in split.items():
        n = min(2, len(parts))
        while n < len(parts) and any(q != p and other[-n:] == parts[-n:] for q, other in split.items()):
            n += 1
        out[p] = _token("-".join(parts[-n:]))
    return out


def _named(entry: list[Setting]) -> list[Setting]:
    """A listed variant that names itself (`name: random`) is known by that name, not by its changes."""
    own = [s for s in entry if s.dotted == "name"]
    return own or entry


def _names(base_name: str, pairs: list[tuple[list[Setting], list[Setting]]]) -> list[str]:
    """Deterministic, unique names: base-label-value__label-value; a clash gets -2, -3, ... in order."""
    combos = [_named(e) + c for e, c in pairs]
    labels = _labels(list(dict.fromkeys(s.dotted for c in combos for s in c)))
    names: list[str] = []
    taken: set[str] = set()
    for combo in combos:
        parts = [_token(s.value) if s.dotted == "name" else f"{labels[s.dotted]}-{_token(s.value)}" for s in combo]
        name = f"{base_name}-" + ("__".join(parts) or "base")
        if len(name) > 150:  # file names stop at 255 bytes
            name = name[:140] + "-" + hashlib.sha1(name.encode()).hexdigest()[:8]
        unique, n = name, 1
        while unique.lower() in taken:  # lowercase: case-insensitive file systems
            n += 1
            unique = f"{name}-{n}"
        taken.add(unique.lower())
        names.append(unique)
    return names


# --- building and validating -------------------------------------------------------------------------


def _build(base: Spec, name: str, combo: list[Setting]) -> tuple[Spec | None, list[Issue]]:
    """The base with `combo` applied as `--set` would, validated; issues located at the grid."""
    data = base.model_dump(mode="json", exclude={"extends"})
    smap = copy.deepcopy(source_map(base))
    issues: list[Issue] = []
    for s in combo:
        try:
            _set_path(data, s.path, copy.deepcopy(s.value))
        except KeyError:
            issues.append(Issue(s.path, "this path does not lead to a mapping in the spec",
                                hint="check the dotted path", loc=s.key_loc))
            continue
        for n in range(1, len(s.path)):  # sections the change created are its own
            smap.locs.setdefault(s.path[:n], s.key_loc)
        smap.set(s.path, s.value_loc)
    data["name"] = name
    try:
        return validate_data(data, smap, issues), []
    except SpecError as e:
        return None, e.issues


def _compile_issues(spec: Spec) -> tuple[list[Issue], list[Issue], bool]:
    """(errors, warnings, whether the errors are the machine's) from every compile check."""
    from graphspec.compiler import compile_spec  # imports torch: only here

    try:
        return [], list(compile_spec(spec).warnings), False
    except GraphspecError as e:
        smap = source_map(spec)
        return [i.located(smap.locate(i.path)) for i in e.issues], [], isinstance(e, EnvironmentProblem)


def _tagged(found: list[tuple[str, list[Issue]]]) -> list[Issue]:
    """Each distinct issue once, naming the variants it was found in."""
    groups: dict[Issue, list[str]] = {}
    for name, issues in found:
        for issue in issues:
            groups.setdefault(issue, []).append(name)
    out = []
    for issue, names in groups.items():
        which = "variant" if len(names) == 1 else f"all {len(names)} variants:" if len(names) == len(found) else "variants"
        shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
        out.append(replace(issue, message=f"{issue.message} ({which} {shown})"))
    return out


def _resolve_base(base: Spec | str | FsPath | Grid, grid: Any, variants: Any) -> tuple[Spec, Grid]:
    extra = grid_from(grid, variants)
    if isinstance(base, (str, FsPath)) and is_grid_file(base):
        base = load_grid(base)
    g = base if isinstance(base, Grid) else Grid(FsPath(base) if isinstance(base, (str, FsPath)) else None)
    g = Grid(g.base, g.axes + extra.axes, g.entries + extra.entries)
    if isinstance(base, Spec):
        return base, g
    return load(g.base), g


def variants(base: Spec | str | FsPath | Grid, grid: Mapping | None = None,
             variants: Sequence[Mapping] | None = None, compile_check: bool = True) -> list[Variant]:
    """Every variant of `base` (a Spec, a spec file, a grid file or a Grid from `load_grid`), validated.

    `grid` is {dotted.path: [values]} (their product), `variants` a list of {dotted.path: value}; both
    add to a Grid's own; each listed variant is combined with every grid point. With `compile_check`
    every variant also passes every compile check (imports torch). All problems raise at once.
    """
    spec, g = _resolve_base(base, grid, variants)
    if not g.axes and not g.entries:
        raise SpecError([Issue((), "nothing to vary", hint="give a grid {path: [v1, v2]} or variants [{path: v}]")])
    issues = _static_issues(g, spec.model_dump(mode="json"))
    if issues:
        raise SpecError(issues, "in the grid")
    pairs = [(list(e), list(c)) for e in (g.entries or [[]]) for c in itertools.product(*g.axes)]
    combos = [e + c for e, c in pairs]
    found, out, spec_fault = [], [], False
    for name, combo in zip(_names(spec.name, pairs), combos):
        built, problems = _build(spec, name, combo)
        warnings, machine = [], False
        if built is not None and compile_check:
            problems, warnings, machine = _compile_issues(built)
        spec_fault |= bool(problems) and not machine
        found.append((name, problems))
        if built is not None:
            changes = {s.dotted: s.value for s in combo if s.dotted != "name"}  # the name is the variant's own
            out.append(Variant(name, changes, built, g.base, tuple(warnings)))
    errors = _tagged(found)
    if any(i.severity == "error" for i in errors):  # the spec's faults first (exit 2), else the machine's (3)
        raise (SpecError if spec_fault else EnvironmentProblem)(errors, f"in the variants of {g.base or spec.name}")
    return out


# --- writing -----------------------------------------------------------------------------------------


class _Dumper(yaml.SafeDumper):
    """Quotes exactly the text that the spec reader (YAML 1.2) would read as something else: '1e-4', 'true'."""


_Dumper.yaml_implicit_resolvers = SpecLoader.yaml_implicit_resolvers


def _get(data: Any, path: tuple) -> Any:
    for part in path:
        ok = isinstance(data, dict) or (isinstance(data, list) and isinstance(part, int) and part < len(data))
        data = (data.get(part) if isinstance(data, dict) else data[part]) if ok else None
    return data


def _replacing(value: Any, old: Any, path: tuple, raw: dict, resolved: dict) -> Any:
    """`value` written so that `extends:` merging it over `old` gives `value` itself, as `--set` would."""
    if not (isinstance(value, dict) and isinstance(old, dict)):
        return copy.deepcopy(value)
    out = {k: _replacing(v, old.get(k), path + (k,), raw, resolved) for k, v in value.items()}
    for k in old:
        if k not in value:  # null removes it so its default returns; where null is a value, the default itself
            out[k] = None if null_deletes(path + (k,), raw) else _get(resolved, path + (k,))
    return out


def file_changes(variant: Variant, raw: dict) -> dict:
    """The variant's changes as nested mappings, for a file that extends a base whose data is `raw`."""
    resolved = variant.spec.model_dump(mode="json")
    out: dict = {}
    for dotted, value in variant.changes.items():
        path = Setting(dotted, value, Loc(""), Loc("")).path
        ints = [n for n, p in enumerate(path) if isinstance(p, int)]
        if ints:  # a list merges whole: write the list as the variant has it
            path, value = path[: ints[0]], _get(resolved, path[: ints[0]])
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = _replacing(value, _get(raw, path), path, raw, resolved)
    return out


def _raw_base(path: FsPath) -> dict:
    """The base file's data as `extends:` reads it (its own bases merged in)."""
    issues: list[Issue] = []
    data, _ = _read_with_extends(path.resolve(), (path.resolve(),), issues)
    if any(i.severity == "error" for i in issues):
        raise SpecError(issues, f"in {path}")
    return data


def _loads_the_same(variant: Variant, raw: dict, changes: dict) -> bool:
    """Whether the file would load to exactly the variant's spec (merged as `load` merges `extends:`)."""
    try:
        loaded = validate_data(_merge(_merge({}, raw), {"name": variant.name, **changes}), SourceMap())
    except SpecError:
        return False
    return loaded.model_dump() == variant.spec.model_dump()


def write_variants(variants: Sequence[Variant], out_dir: str | FsPath,
                   base_path: str | FsPath | None = None) -> list[FsPath]:
    """Write OUT_DIR/NAME.yaml per variant: `extends:` the base (a relative path), `name:`, the changes.

    `base_path` defaults to the file each variant came from. Every file is checked to load as its
    variant's spec before any file is written.
    """
    out_dir, issues, files, raws = FsPath(out_dir), [], [], {}
    for v in variants:
        base = FsPath(base_path) if base_path is not None else v.base
        if base is None:
            raise SpecError([Issue((), f"variant {v.name}: no base spec file to extend", hint="pass base_path")])
        if base not in raws:
            raws[base] = _raw_base(base)
        changes = file_changes(v, raws[base])
        if not _loads_the_same(v, raws[base], changes):
            issues.append(Issue((), f"variant {v.name}: a file extending {base} would not load as this variant",
                                hint="give the base_path of the spec the variants were made from"))
        extends = FsPath(os.path.relpath(base.resolve(), out_dir.resolve())).as_posix()
        head = f"# {v.name}: {v.describe()}\n# Written by `graphspec variants`; the base spec holds the rest.\n"
        body = yaml.dump({"extends": extends, "name": v.name, **changes}, Dumper=_Dumper, sort_keys=False,
                         allow_unicode=True)
        files.append((out_dir / f"{v.name}.yaml", head + body))
    names = [p.name.lower() for p, _ in files]
    issues += [Issue((), f"two variants are named {n}", hint="write them in two calls") for n in
               sorted({n for n in names if names.count(n) > 1})]
    if issues:
        raise SpecError(issues, f"nothing written to {out_dir}")
    out_dir.mkdir(parents=True, exist_ok=True)
    for path, text in files:
        path.write_text(text, encoding="utf-8")
    return [p for p, _ in files]
