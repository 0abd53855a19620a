"""Spec files -> validated `Spec`: extends, overrides, schema, spec rules.

Every problem of every stage is collected and raised together as one
`SpecError`, each issue located by the source map.
"""

from __future__ import annotations

import copy
import typing
from dataclasses import replace
from pathlib import Path as FsPath
from typing import Any, Iterable, Mapping

from pydantic import ValidationError

from .errors import Issue, Loc, SpecError, suggest
from .checks import check_spec
from .schema import Spec, head_kinds
from .navigate import TAG_FIELDS, description_of, fields_at, model_at
from .parsing import SourceMap, load_scalar, parse_file, parse_text

Overrides = Iterable[str] | Mapping[str, Any] | None
NOT_A_MAPPING = "a spec must be a mapping of keys (name, inputs, nodes, ...)"


def null_deletes(path: tuple, data: Any) -> bool:
    """Whether `null` at `path` removes the key rather than sets the value none.

    Entries of free-keyed mappings are removed (`heads: {mlm: null}`); a field that
    accepts none takes it (`train: {grad_clip: null}` means no clipping); any other
    field is removed, so it takes its default again.
    """
    model = model_at(tuple(path[:-1]), data)
    field = model.model_fields.get(path[-1]) if model is not None else None
    return field is None or type(None) not in typing.get_args(field.annotation)


def merge(base: Any, child: Any, path: tuple = (), root: Any = None) -> Any:
    """Deep-merge `child` over `base`: mappings merge, anything else replaces, null deletes an entry."""
    if not (isinstance(base, dict) and isinstance(child, dict)):
        return copy.deepcopy(child)
    root = base if root is None else root
    out = copy.deepcopy(base)
    for key, value in child.items():
        if value is None and null_deletes(path + (key,), root):
            out.pop(key, None)
        elif key in out:
            out[key] = merge(out[key], value, path + (key,), root)
        else:
            out[key] = copy.deepcopy(value)
    return out


def read_with_extends(path: FsPath, chain: tuple[FsPath, ...], issues: list[Issue]) -> tuple[Any, SourceMap]:
    data, smap, problems = parse_file(path)
    issues.extend(problems)
    if not isinstance(data, dict):
        if data is not None or not problems:
            issues.append(Issue((), NOT_A_MAPPING, loc=Loc(str(path))))
        return {}, smap
    bases = data.pop("extends", None)
    if bases is None:
        return data, smap
    merged: Any = {}
    merged_map = SourceMap(default=smap.default)
    if not isinstance(bases, (str, list)):
        issues.append(Issue(("extends",), f"extends takes a file name or a list of them, not {bases!r}",
                            hint="write `extends: base.yaml`", loc=smap.locate(("extends",))))
        bases = []
    for i, base in enumerate([bases] if isinstance(bases, str) else bases):
        where = ("extends", i) if isinstance(bases, list) else ("extends",)
        loc = smap.locate(where)
        if not isinstance(base, str):
            issues.append(Issue(("extends",), "extends takes a file name or a list of them", loc=loc))
            continue
        base_path = (path.parent / base).resolve()
        if base_path in chain:
            cycle = " -> ".join(str(p) for p in (*chain, base_path))
            issues.append(Issue(("extends",), f"extends forms a cycle: {cycle}", hint="remove one link", loc=loc))
            continue
        if not base_path.is_file():
            issues.append(Issue(("extends",), f"base spec '{base}' not found (looked for {base_path})",
                                hint="give a path relative to this file", loc=loc))
            continue
        bdata, bmap = read_with_extends(base_path, chain + (base_path,), issues)
        merged = merge(merged, bdata)
        merged_map = bmap.merged_over(merged_map)
    return merge(merged, data), smap.merged_over(merged_map)


def set_path(data: dict, path: tuple, value: Any) -> None:
    cur = data
    for part in path[:-1]:
        if isinstance(cur, list) and isinstance(part, int) and part < len(cur):
            cur = cur[part]
            continue
        if not isinstance(cur, dict):
            raise KeyError(part)
        if cur.get(part) is None:
            cur[part] = {}  # a missing or null section: create it
        elif not isinstance(cur[part], (dict, list)):
            raise KeyError(part)  # never silently turn a value (`name: x`) into a mapping
        cur = cur[part]
    last = path[-1]
    if isinstance(cur, list) and isinstance(last, int) and last < len(cur):
        cur[last] = value
    elif isinstance(cur, dict):
        if value is None and null_deletes(path, data):
            cur.pop(last, None)
        else:
            cur[last] = value
    else:
        raise KeyError(last)


class _BadValue(ValueError):
    """The value of a `--set` cannot be read (the path and `=` are fine)."""


def _parse_override(item: str) -> tuple[tuple, Any, str]:
    if "=" not in item:
        raise ValueError("expected PATH=VALUE")
    key, raw = item.split("=", 1)
    if not key.strip():
        raise ValueError("empty PATH")
    path = tuple(int(p) if p.isdigit() else p for p in key.strip().split("."))
    try:
        value = load_scalar(raw, f"--set {key.strip()}") if raw.strip() else ""
    except ValueError as e:
        raise _BadValue(str(e)) from None
    return path, value, raw


def apply_overrides(data: dict, smap: SourceMap, overrides: Overrides, issues: list[Issue]) -> None:
    """Apply `--set path=value` strings, or a {dotted.path: value} mapping, in order."""
    if not overrides:
        return
    items = (
        [(tuple(int(p) if p.isdigit() else p for p in str(k).split(".")), v, f"{k}={v!r}") for k, v in overrides.items()]
        if isinstance(overrides, Mapping)
        else []
    )
    if not isinstance(overrides, Mapping):
        for text in overrides:
            try:
                path, value, _ = _parse_override(text)
            except ValueError as e:
                shown = "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text[:80]) + "..." * (len(text) > 80)
                hint = "write the value as a spec file would" if isinstance(e, _BadValue) else \
                    "write --set path.to.field=value"
                issues.append(Issue((), f"bad override '{shown}': {e}", hint=hint, loc=Loc("--set")))
                continue
            items.append((path, value, text))
    for path, value, text in items:
        try:
            set_path(data, path, value)
        except KeyError:
            issues.append(Issue(path, "this path does not lead to a mapping in the spec",
                                hint="check the dotted path", loc=Loc(f"--set {text}")))
            continue
        here = Loc(f"--set {text}")
        for n in range(1, len(path)):  # sections the override created (e.g. a misspelt `train.optimzer`) are its own
            if path[:n] not in smap.locs:
                smap.locs[path[:n]] = here
        smap.set(path, here)


def _schema_path(loc: tuple, data: Any) -> tuple:
    """Pydantic's error location, less the union-member tags it inserts (e.g. 'co_attention')."""
    out: list = []
    cur = data
    for part in loc:
        if isinstance(cur, dict) and part in cur:
            out.append(part)
            cur = cur[part]
        elif isinstance(cur, list) and isinstance(part, int) and part < len(cur):
            out.append(part)
            cur = cur[part]
        elif isinstance(cur, dict) and (any(cur.get(t) == part for t in TAG_FIELDS) or (out and part == out[-1])):
            continue  # a discriminator tag, given or defaulted from the name
        elif isinstance(part, str) and ("[" in part or part in ("bool", "str", "int", "float", "Freeze")):
            continue  # a union member's name, e.g. 'function-after[...]' or 'bool'
        else:
            out.append(part)
            cur = None
    return tuple(out)


def _union_noise(err: dict, data: Any) -> bool:
    """For `freeze: bool | Freeze`, drop the branch the user clearly did not mean."""
    loc = err["loc"]
    if "bool" in loc:
        return not isinstance(err.get("input"), (bool, str, int)) or "Freeze" in str(loc)
    if "Freeze" in loc and err["type"] == "model_type":
        return True
    return False


def _issue(err: dict, data: Any) -> Issue:
    path = _schema_path(err["loc"], data)
    kind = err["type"]
    if kind == "extra_forbidden":
        key = path[-1]
        return Issue(path, f"unknown field '{key}'", suggest(key, fields_at(path[:-1], data)))
    if kind == "missing":
        desc = description_of(path, data)
        return Issue(path, f"missing required field '{path[-1]}'", f"add `{path[-1]}:`" + (f" ({desc})" if desc else ""))
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        tag_field = err["ctx"].get("discriminator", "'kind'").strip("'")
        tags = [t for t in (t.strip().strip("'") for t in str(err["ctx"].get("expected_tags", "")).split(",")) if t]
        if not tags and path[:1] == ("objectives",):  # an objective's kind is that of the head it trains
            tags = list(head_kinds())
        if kind == "union_tag_not_found":
            return Issue(path + (tag_field,), f"missing '{tag_field}'",
                         "expected one of: " + ", ".join(tags) if tags else f"add `{tag_field}:`")
        got = err["ctx"].get("tag")
        return Issue(path + (tag_field,), f"unknown {tag_field} '{got}'", suggest(got, tags))
    if kind == "literal_error":
        got = err.get("input")
        expected = err["ctx"].get("expected", "")
        choices = [c.strip().strip("'") for c in expected.replace(" or ", ",").split(",") if c.strip()]
        return Issue(path, f"'{got}' is not allowed", suggest(got, choices) or f"expected {expected}")
    desc = description_of(path, data)
    return Issue(path, f"{err['msg']} (got {err.get('input')!r})", desc)


def validate_data(data: Any, smap: SourceMap, issues: list[Issue] | None = None, title: str = "") -> Spec:
    """Validate plain data against the schema and the spec rules; raise every problem at once."""
    issues = list(issues or [])
    spec = None
    if not isinstance(data, dict) and not any(i.severity == "error" for i in issues):
        issues.append(Issue((), NOT_A_MAPPING))  # e.g. an empty text: never raise an error without an issue
    if isinstance(data, dict) and not any(i.severity == "error" for i in issues):
        try:
            spec = Spec.model_validate(data)
        except ValidationError as e:
            errs = [err for err in e.errors() if not _union_noise(err, data)] or e.errors()
            issues.extend(_issue(err, data) for err in errs)
    rules = check_spec(spec) if spec is not None else []
    issues = [i.located(smap.locate(i.path)) for i in issues + rules]
    if any(i.severity == "error" for i in issues) or spec is None:
        raise SpecError(issues, title)
    spec._source = smap  # kept for later stages' located errors
    spec._warnings = [i.located(smap.locate(i.path)) for i in rules if i.severity == "warning"]  # for compile
    return spec


def load(path: str | FsPath, overrides: Overrides = None) -> Spec:
    """Load a YAML or JSON spec file (with `extends:`), apply overrides, validate."""
    path = FsPath(path)
    issues: list[Issue] = []
    data, smap = read_with_extends(path.resolve(), (path.resolve(),), issues)
    smap = _relative(smap, path)  # report paths as the user wrote them, not resolved
    issues = [replace(i, loc=_relative_loc(i.loc)) if i.loc else i for i in issues]
    apply_overrides(data, smap, overrides, issues)
    return validate_data(data, smap, issues, title=f"in {path}")


def _relative_loc(loc: Loc) -> Loc:
    try:
        return Loc(str(FsPath(loc.file).relative_to(FsPath.cwd())), loc.line, loc.col)
    except ValueError:
        return loc


def _relative(smap: SourceMap, path: FsPath) -> SourceMap:
    return SourceMap({p: _relative_loc(l) for p, l in smap.locs.items()}, Loc(str(path)))


def loads(text: str, fmt: str = "yaml", overrides: Overrides = None, file: str = "<spec>") -> Spec:
    """Load a spec from text (no `extends:`: there is no folder to resolve it against)."""
    data, smap, issues = parse_text(text, file, fmt)
    if isinstance(data, dict) and "extends" in data:
        issues.append(Issue(("extends",), "extends needs a spec file", hint="use graphspec.load(path)",
                            loc=smap.locate(("extends",))))
    apply_overrides(data if isinstance(data, dict) else {}, smap, overrides, issues)
    return validate_data(data, smap, issues, title=f"in {file}")


def source_map(spec: Spec) -> SourceMap:
    return spec._source or SourceMap()


def spec_warnings(spec: Spec) -> list[Issue]:
    """The spec rules' warnings, located: those loading found (the rules run once per spec), or, for a spec
    made without this module, the rules' own."""
    if spec._warnings is not None:
        return list(spec._warnings)
    smap = source_map(spec)
    return [i.located(smap.locate(i.path)) for i in check_spec(spec) if i.severity == "warning"]


def override(spec: Spec, overrides: Overrides) -> Spec:
    """A copy of `spec` with overrides applied and everything re-validated."""
    data = spec.model_dump(mode="json", exclude={"extends"})
    smap = copy.deepcopy(source_map(spec))
    issues: list[Issue] = []
    apply_overrides(data, smap, overrides, issues)
    return validate_data(data, smap, issues, title="after overrides")
