"""Reading a build directory, refusing one from an incompatible version."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from graphspec.compiler import FORMAT_VERSION, FreezePlan
from graphspec.errors import GraphspecError, Issue, Loc
from graphspec.schema import Spec
from graphspec.version import __version__

FILES = ("manifest.json", "spec.resolved.json", "ds_config.json", "param_groups.json", "freeze.json")


class BuildError(GraphspecError):
    """A build directory that is missing, incomplete or from another version."""

    exit_code = 2


@dataclass(frozen=True)
class Build:
    dir: Path
    spec: Spec
    ds_config: dict
    groups: list[dict]
    plan: FreezePlan
    manifest: dict


def _fail(path: Path, message: str, hint: str) -> BuildError:
    return BuildError([Issue((), message, hint, loc=Loc(str(path)))], title="cannot use this build directory")


def _groups_fit(groups) -> bool:
    keys = {"name": str, "lr_scale": (int, float), "weight_decay": (int, float), "params": list}
    return isinstance(groups, list) and all(
        isinstance(g, dict) and all(isinstance(g.get(k), kind) for k, kind in keys.items())
        and all(isinstance(p, str) for p in g["params"]) for g in groups)


def check_groups(build: "Build", parameters: set[str]) -> None:
    """The optimizer groups name parameters of the model built from the build's spec, none frozen."""
    unknown = sorted(n for g in build.groups for n in g["params"] if n not in parameters or n in build.plan.frozen)
    if unknown:
        raise _fail(build.dir / "param_groups.json", f"names {len(unknown)} parameters that are not trainable "
                    f"parameters of this model (e.g. {unknown[0]})", f"recompile it: graphspec compile SPEC -o "
                    f"{build.dir}")


def read_build(directory: str | Path) -> Build:
    d = Path(directory)
    recompile = f"recompile it: graphspec compile SPEC -o {d}"
    missing = [f for f in FILES if not (d / f).is_file()]
    if missing:
        raise _fail(d, f"not a complete build directory (missing {', '.join(missing)})", recompile)
    data = {}
    for name in FILES:
        try:
            data[name] = json.loads((d / name).read_text())
        except (OSError, ValueError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise _fail(d / name, f"cannot read it: {e}", recompile) from None
    if not isinstance(data["manifest.json"], dict):
        raise _fail(d / "manifest.json", "not a build manifest (a JSON object)", recompile)
    version = data["manifest.json"].get("format_version")
    if version != FORMAT_VERSION:
        made = data["manifest.json"].get("graphspec", "an unknown graphspec")
        raise _fail(d / "manifest.json", f"build format version {version!r} (written by graphspec {made}); this "
                    f"graphspec ({__version__}) reads version {FORMAT_VERSION}", recompile)
    try:
        spec = Spec.model_validate(data["spec.resolved.json"])
    except ValidationError as e:
        raise _fail(d / "spec.resolved.json", f"the resolved spec does not fit this graphspec: {e.errors()[0]['msg']}",
                    recompile) from None
    try:
        plan = FreezePlan.from_json(data["freeze.json"])
    except (KeyError, TypeError) as e:
        raise _fail(d / "freeze.json", f"not a freeze plan this graphspec reads ({e})", recompile) from None
    if not isinstance(data["ds_config.json"], dict):
        raise _fail(d / "ds_config.json", "not a DeepSpeed config (a JSON object)", recompile)
    if not _groups_fit(data["param_groups.json"]):
        raise _fail(d / "param_groups.json", "not the optimizer groups this graphspec writes (a list of "
                    "{name, lr_scale, weight_decay, params})", recompile)
    return Build(d, spec, data["ds_config.json"], data["param_groups.json"], plan, data["manifest.json"])
