"""Studies: a base spec, its variants, and the stages each variant runs (pretrain, then fine-tune on tasks).

A study file is data, like a spec::

    name: exp1-cpu-twin
    base: ../paper/exp1_cpu_twin.yaml          # the pretraining spec every variant derives from
    grid:                                      # and/or `variants: [{path: value, ...}, ...]`
      nodes.vision_tower.freeze: [false, true]
      nodes.text_tower.freeze: [false, true]
    stages:
      pretrain: {}                             # the variant's spec as it is
      nlvr2: {spec: ../tasks/twin_nlvr2.yaml, from: pretrain, changes: false}
    compare: [pretrain.itm_acc, nlvr2.nlvr2_acc]

`plan_study` turns it into one spec per (variant, stage), every one validated before
anything runs; `graphspec.studies.execute` runs them and writes the comparison. Importing this
module imports no torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from graphspec.language.errors import Issue, SpecError, suggest
from graphspec.language.reading import load, override, source_map
from graphspec.language.schema import Spec
from graphspec.language.parsing import parse_file
from .grid import load_grid
from .variants import Variant, variants


class Stage(BaseModel):
    """One training run per variant: the variant's own spec, or a task spec that starts from an earlier stage."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    spec: str | None = Field(None, description="A spec file (relative to the study file) this stage runs, e.g. a "
                             "fine-tuning spec that extends the base; unset: the variant's own spec.")
    from_: str | None = Field(None, alias="from", description="An earlier stage whose checkpoint initialises this "
                              "one (`init_from`), variant by variant.")
    changes: bool | list[str] = Field(True, description="Which of the variant's changes apply to this stage's "
                                      "spec: all (true), none (false, e.g. to fine-tune every variant with all "
                                      "weights trainable after a frozen-tower pretraining), or the listed paths.")
    set: dict[str, Any] = Field(default_factory=dict, description="Further overrides of this stage's spec "
                                "(dotted path -> value), as `--set`.")


class SlurmOptions(BaseModel):
    """What a study's Slurm jobs ask for besides what each stage's spec gives (ranks, GPUs, time)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    partition: str | None = Field(default=None, description="sbatch --partition.")
    account: str | None = Field(default=None, description="sbatch --account.")
    gpus_per_node: int = Field(default=8, ge=1, description="GPUs of a node: a stage of more ranks spans several "
                               "nodes.")
    cpus_per_task: int | None = Field(default=None, ge=1, description="CPUs per rank (default: the spec's data workers "
                                      "+ 2).")
    mem_gb_per_gpu: int = Field(default=32, ge=1, description="Host memory per rank on a GPU node, in GB.")
    options: dict[str, Any] = Field(default_factory=dict, description="Further sbatch options (name -> value, "
                                    "e.g. qos: high, constraint: h100).")


class StudyFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="Name of the study and its folder.")
    description: str = Field("", description="Free text.")
    base: str = Field(description="The base spec file, relative to the study file.")
    grid: dict[str, list[Any]] = Field(default_factory=dict, description="Dotted path -> values; every combination "
                                       "is a variant.")
    variants: list[dict[str, Any]] = Field(default_factory=list, description="Variants given one by one (dotted "
                                           "path -> value); combined with every grid point.")
    stages: dict[str, Stage] = Field(min_length=1, description="Runs per variant, in order.")
    compare: list[str] = Field(default_factory=list, description="Metrics to compare, `STAGE.METRIC` (a key of the "
                               "stage's validation metrics, e.g. nlvr2.nlvr2_acc).")
    rank_by: str | None = Field(None, description="The first stage's validation metric (`STAGE.METRIC`) that "
                                "promotes variants from one rung to the next when a budget calls for successive "
                                "halving; higher is better unless its name says loss. Default: the first stage's "
                                "first compare metric.")
    slurm: SlurmOptions = Field(default_factory=lambda: SlurmOptions(), description="Where `--executor slurm` "
                                "submits (the command line's flags win).")


@dataclass(frozen=True)
class StageRun:
    """What one (variant, stage) runs: its spec (without `init_from`, filled in once `after` has finished)."""

    variant: str
    stage: str
    spec: Spec
    after: str | None  # the stage whose checkpoint initialises this one


@dataclass(frozen=True)
class Study:
    file: Path
    config: StudyFile
    base_file: Path
    variants: list[Variant]
    runs: list[StageRun]  # variant by variant, stage by stage

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def base_name(self) -> str:
        """The base spec's name: every variant's name starts with it."""
        return load(self.base_file).name

    @property
    def rank_by(self) -> str | None:
        """The metric that promotes variants between rungs: `rank_by`, else the first stage's first compared."""
        first = next(iter(self.config.stages))
        return self.config.rank_by or next((m for m in self.config.compare if m.startswith(first + ".")), None)


def _read(path: Path) -> tuple[StudyFile, Any]:
    data, smap, issues = parse_file(path)
    if issues:
        raise SpecError(issues, title="the study file cannot be read")
    try:
        return StudyFile.model_validate(data), smap
    except ValidationError as e:
        known = [*StudyFile.model_fields, *SlurmOptions.model_fields, "spec", "from", "changes", "set"]
        found = [Issue(err["loc"], err["msg"], suggest(str(err["loc"][-1]), known)
                       if err["type"] == "extra_forbidden" else "", loc=smap.locate(err["loc"])) for err in e.errors()]
        raise SpecError(found, title="the study file has errors") from None


def _order_issues(config: StudyFile, smap) -> list[Issue]:
    issues, seen = [], []
    for name, stage in config.stages.items():
        if stage.from_ is not None and stage.from_ not in seen:
            where = ("stages", name, "from")
            issues.append(Issue(where, f"stage '{name}' starts from '{stage.from_}', which is not an earlier stage",
                                suggest(stage.from_, seen) or f"earlier stages: {', '.join(seen) or 'none'}",
                                loc=smap.locate(where)))
        seen.append(name)
    first = next(iter(config.stages))
    if config.rank_by is not None and (not config.rank_by.startswith(first + ".") or config.rank_by == first + "."):
        issues.append(Issue(("rank_by",), f"'{config.rank_by}' is not {first}.METRIC: variants are promoted on a "
                            "validation metric of the first stage", f"e.g. rank_by: {first}.itm_acc",
                            loc=smap.locate(("rank_by",))))
    for k, metric in enumerate(config.compare):
        stage = metric.partition(".")[0]
        if "." not in metric or stage not in config.stages:
            issues.append(Issue(("compare", k), f"'{metric}' is not STAGE.METRIC of a stage of this study",
                                suggest(stage, list(config.stages)) or f"stages: {', '.join(config.stages)}",
                                loc=smap.locate(("compare", k))))
    return issues


def _kept(changes: dict[str, Any], keep: bool | list[str]) -> dict[str, Any]:
    if keep is True:
        return dict(changes)
    if keep is False:
        return {}
    return {k: v for k, v in changes.items() if any(k == p or k.startswith(p + ".") for p in keep)}


def _stage_spec(base: Spec | None, name: str, stage: Stage, variant: Variant, smap, issues: list[Issue]
                ) -> Spec | None:
    """The spec a variant runs in a stage: its own, or the stage's (`base`) with the changes it keeps."""
    where = ("stages", name)
    try:
        spec = variant.spec if base is None else base
        changes = _kept(variant.changes, stage.changes) if base is not None else {}
        spec = override(spec, {**changes, **stage.set, "name": f"{variant.name}.{name}"})
        return override(spec, {"init_from": None}) if stage.from_ else spec
    except SpecError as e:
        issues += [Issue(where + i.path, f"variant {variant.name}: {i.message}", i.hint, i.severity,
                         loc=i.loc or smap.locate(where)) for i in e.issues]
        return None


def _load_stage(study: Path, name: str, stage: Stage, smap, issues: list[Issue]) -> Spec | None:
    if stage.spec is None:
        return None
    if not (study.parent / stage.spec).is_file():
        where = ("stages", name, "spec")
        issues.append(Issue(where, f"no spec file '{stage.spec}' beside the study ({study.parent / stage.spec})",
                            "give a path relative to the study file", loc=smap.locate(where)))
        return None
    try:
        return load(study.parent / stage.spec)
    except SpecError as e:
        issues += [i if i.loc else Issue(("stages", name, "spec") + i.path, i.message, i.hint, i.severity,
                                         loc=smap.locate(("stages", name, "spec"))) for i in e.issues]
        return None


def plan_study(path: str | Path, compile_check: bool = True) -> Study:
    """Read a study file and derive every (variant, stage) spec; all problems are reported together."""
    path = Path(path)
    config, smap = _read(path)
    issues = _order_issues(config, smap)
    grid = load_grid(path, extra_keys=("name", "description", "stages", "compare", "rank_by", "slurm"))
    found = variants(grid, compile_check=compile_check)
    bases = {name: _load_stage(path, name, stage, smap, issues) for name, stage in config.stages.items()}
    runs = []
    for variant in found:
        for name, stage in config.stages.items():
            if stage.spec is not None and bases[name] is None:
                continue  # its file did not load: reported once
            spec = _stage_spec(bases[name], name, stage, variant, smap, issues)
            if spec is not None:
                runs.append(StageRun(variant.name, name, spec, stage.from_))
    if compile_check and not issues:  # a stage that runs the variant's spec unchanged was checked with it
        issues += _compile_issues([r for r in runs if config.stages[r.stage].spec or config.stages[r.stage].set])
    if issues:
        raise SpecError(issues, title=f"study {config.name}: {len(issues)} problem(s) before anything ran")
    return Study(path, config, grid.base, found, runs)


def _compile_issues(runs: list[StageRun]) -> list[Issue]:
    """Every stage spec passes the compiler's checks."""
    from graphspec.compiler import compile_spec  # imports torch: only here

    issues = []
    for run in runs:
        try:
            compile_spec(run.spec)
        except SpecError as e:
            issues += [Issue(i.path, f"{run.variant}, stage {run.stage}: {i.message}", i.hint, i.severity,
                             loc=i.loc or source_map(run.spec).locate(i.path)) for i in e.issues]
    return issues


__all__ = ["SlurmOptions", "Stage", "StudyFile", "StageRun", "Study", "plan_study"]
