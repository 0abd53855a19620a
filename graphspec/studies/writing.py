"""Writing variants as spec files: each `extends:` its base and holds only its changes, written so that
loading the file gives exactly the variant (checked before any file is written)."""

from __future__ import annotations

import copy
import os
from pathlib import Path as FsPath
from typing import Any, Sequence

import yaml

from graphspec.language.errors import Issue, Loc, SpecError
from graphspec.language.parsing import SourceMap, SpecLoader
from graphspec.language.reading import merge, null_deletes, read_with_extends, validate_data

from .grid import Setting
from .variants import Variant


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
    data, _ = read_with_extends(path.resolve(), (path.resolve(),), issues)
    if any(i.severity == "error" for i in issues):
        raise SpecError(issues, f"in {path}")
    return data


def _loads_the_same(variant: Variant, raw: dict, changes: dict) -> bool:
    """Whether the file would load to exactly the variant's spec (merged as `load` merges `extends:`)."""
    try:
        loaded = validate_data(merge(merge({}, raw), {"name": variant.name, **changes}), SourceMap())
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
