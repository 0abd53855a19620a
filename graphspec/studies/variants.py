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
import itertools
import re
from dataclasses import dataclass, replace
from pathlib import Path as FsPath
from typing import Any, Mapping, Sequence

from graphspec.language.errors import EnvironmentProblem, GraphspecError, Issue, SpecError
from graphspec.language.reading import load, set_path, source_map, validate_data
from graphspec.language.schema import Spec

from .grid import Grid, Setting, grid_from, is_grid_file, load_grid, show, static_issues
from .names import variant_names


@dataclass(frozen=True)
class Variant:
    """A derived spec: its name, its changes (dotted path -> value, in order) and the validated spec."""

    name: str
    changes: dict[str, Any]
    spec: Spec
    base: FsPath | None = None  # the base spec file, when the variants came from one
    warnings: tuple[Issue, ...] = ()

    def describe(self) -> str:
        return ", ".join(f"{k}={show(v)}" for k, v in self.changes.items()) or "(the base spec)"



# --- building and validating -------------------------------------------------------------------------


def _build(base: Spec, name: str, combo: list[Setting]) -> tuple[Spec | None, list[Issue]]:
    """The base with `combo` applied as `--set` would, validated; issues located at the grid."""
    data = base.model_dump(mode="json", exclude={"extends"})
    smap = copy.deepcopy(source_map(base))
    issues: list[Issue] = []
    for s in combo:
        try:
            set_path(data, s.path, copy.deepcopy(s.value))
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


def tagged(found: list[tuple[str, list[Issue]]]) -> list[Issue]:
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
    issues = static_issues(g, spec.model_dump(mode="json"))
    if issues:
        raise SpecError(issues, "in the grid")
    pairs = [(list(e), list(c)) for e in (g.entries or [[]]) for c in itertools.product(*g.axes)]
    combos = [e + c for e, c in pairs]
    found, out, spec_fault = [], [], False
    for name, combo in zip(variant_names(spec.name, pairs), combos):
        built, problems = _build(spec, name, combo)
        warnings, machine = [], False
        if built is not None and compile_check:
            problems, warnings, machine = _compile_issues(built)
        spec_fault |= bool(problems) and not machine
        found.append((name, problems))
        if built is not None:
            changes = {s.dotted: s.value for s in combo if s.dotted != "name"}  # the name is the variant's own
            out.append(Variant(name, changes, built, g.base, tuple(warnings)))
    errors = tagged(found)
    if any(i.severity == "error" for i in errors):  # the spec's faults first (exit 2), else the machine's (3)
        raise (SpecError if spec_fault else EnvironmentProblem)(errors, f"in the variants of {g.base or spec.name}")
    return out

