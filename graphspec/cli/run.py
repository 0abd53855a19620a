"""`graphspec run TARGET`: train a spec file (compiled first) or a build folder; `--resume` continues a run.
With several ranks this process starts them (`python -m graphspec.cli run ...` each) and waits; in a Slurm job
step of several tasks (`srun graphspec run ...`), each task is one rank itself (graphspec.runtime.slurm)."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from graphspec.language.errors import GraphspecError, Issue, Loc, SpecError
from graphspec.language.reading import load

from .common import add_overrides, positive, print_warnings

HELP = "train: compile a spec if needed, then run it"
QUICK_EXIT = False
RANK_MODULE = __name__.rpartition(".")[0]  # what each rank runs: this command line


def add_arguments(r) -> None:
    r.add_argument("target", help="a spec file, or a build directory written by `graphspec compile`; with "
                   "--resume, the run directory to continue")
    r.add_argument("--resume", action="store_true", help="continue the run in TARGET from its newest checkpoint "
                   "(see train.checkpoint_every), on the trajectory it would have followed uninterrupted")
    r.add_argument("--stop-at", type=positive, metavar="STEP", help="stop after STEP as if paused there: "
                   "checkpoint, validate, write stopped.json and exit 0, under the full run's learning-rate "
                   "schedule; `--resume` continues on the uninterrupted trajectory (a study's rungs use it)")
    add_overrides(r, "override a field of the spec (only with a spec file)")
    r.add_argument("--run-dir", help="where metrics and checkpoints go (default: runs/NAME/TIMESTAMP; in a "
                   "Slurm job step, runs/NAME/slurm-JOBID-STEPID)")
    r.add_argument("--build-dir", help="where to compile a spec file to (default: build/NAME)")
    r.add_argument("--located-in", help=argparse.SUPPRESS)  # a launched rank: the spec file errors point into
    where = r.add_mutually_exclusive_group()
    where.add_argument("--nproc", type=positive, metavar="N", help="train with N data-parallel processes on this "
                       "machine (sets distributed.world_size), each with an equal share of the cores")
    where.add_argument("--hostfile", metavar="FILE", help="train on the machines of a DeepSpeed hostfile (`HOST "
                       "slots=N` lines; world size = total slots), started by DeepSpeed's launcher")


def _world(args) -> int | None:
    """The number of ranks the command line asks for, if it does."""
    if args.hostfile:
        from graphspec.runtime.launch import read_hostfile

        return sum(slots for _, slots in read_hostfile(Path(args.hostfile)))
    return args.nproc


def _ranks_match(build, world: int | None, target: Path) -> int:
    """The build's world size, which must be the one the command line asks for."""
    compiled = build.spec.distributed.world_size
    if world is not None and world != compiled:
        raise SpecError([Issue(("distributed", "world_size"), f"this build was compiled for {compiled} "
                               f"processes, the command line asks for {world}",
                               f"run the spec file with --nproc {world}, or give --nproc {compiled}",
                               loc=Loc(str(target)))])
    return compiled


def _stop(args) -> list[str]:
    """`--stop-at`, as the ranks get it."""
    return ["--stop-at", str(args.stop_at)] if args.stop_at else []


def _launch(args, world: int, run_args: list[str], build) -> int:
    from graphspec.runtime.launch import launch

    accelerator = os.environ.get("DS_ACCELERATOR") or build.accelerator
    return launch(world, [RANK_MODULE, "run", *run_args], Path(args.hostfile) if args.hostfile else None,
                  accelerator)


def _compile(spec, build_dir: Path, step):
    """Compile the spec and write its build folder, once: in a Slurm job step, rank 0 does, and the other tasks
    wait for it and read what it wrote (None: compiled elsewhere)."""
    from graphspec.compiler import compile_spec
    from graphspec.compiler.folders import write_build
    from graphspec.runtime import slurm

    if step is not None and step.rank > 0:
        slurm.wait_for_build(build_dir, step)
        return None
    with slurm.writing_build(build_dir, step):
        compiled = compile_spec(spec)
        write_build(compiled, build_dir)
    print_warnings(compiled.warnings)
    return compiled


def command(args) -> int:
    from graphspec.compiler.folders import read_build
    from graphspec.runtime import slurm
    from graphspec.runtime.engine import own_extensions_folder
    from graphspec.runtime.launch import launched, share_cores
    from graphspec.runtime.train import run

    target = Path(args.target)
    step = slurm.join(args.nproc, args.hostfile)  # in a Slurm job step of several tasks: this task is one rank
    smap = None
    world = _world(args)
    overrides = args.overrides + ([f"distributed.world_size={world}"] if world is not None else [])
    share_cores(step.cpus() if step else None)
    own_extensions_folder()  # DeepSpeed's C++ ops: built once per installation, not again after another's
    if args.resume:
        from graphspec.runtime.train import resume_build

        if args.overrides or args.run_dir or args.build_dir:
            raise GraphspecError([Issue((), "--resume continues a run as it was: it takes no --set, --run-dir or "
                                        "--build-dir", "give only the run directory")])
        build = resume_build(target)
        slurm.check(step, build.spec, Loc(str(target)), can_set=False)
        world = _ranks_match(build, world, target)
        if world > 1 and not launched():
            return _launch(args, world, [str(target), "--resume", *_stop(args)], build)
        run(build, target, resume=True, stop_at=args.stop_at)
        return 0
    compiled = None
    if target.is_dir():
        if args.overrides and not args.located_in:
            raise GraphspecError([Issue((), "--set needs a spec file: a build directory is already compiled",
                                        "run the spec file, or recompile with the override")])
        build = read_build(target)
        slurm.check(step, build.spec, Loc(str(target)), can_set=False)
        _ranks_match(build, world, target)
        if args.located_in:  # as the launching process read it
            smap = load(Path(args.located_in), args.overrides)._source
    else:
        spec = load(target, overrides)
        smap = spec._source
        build_dir = Path(args.build_dir or Path("build") / spec.name)
        slurm.check(step, spec, smap.locate(("distributed", "world_size")), can_set=True)
        compiled = _compile(spec, build_dir, step)
        build = read_build(build_dir)
    run_dir = Path(args.run_dir or Path("runs") / build.spec.name / (  # a Slurm step's tasks: the same name
        step.name if step else time.strftime("%Y%m%d-%H%M%S")))
    if not launched() or (step and step.rank == 0):  # the prediction the run's summary sets beside what it
        # measures, made once: here, or by a Slurm step's rank 0 (the other tasks go on to meet it)
        from graphspec.cost.predict import ensure

        ensure(build.dir, build.spec, compiled)
    if build.spec.distributed.world_size > 1 and not launched():  # every rank gets the same run directory
        located = [] if smap is None else ["--located-in", str(target)] + [
            a for o in overrides for a in ("--set", o)]
        return _launch(args, build.spec.distributed.world_size, [str(build.dir), "--run-dir", str(run_dir),
                                                                  *located, *_stop(args)], build)
    try:
        run(build, run_dir, stop_at=args.stop_at)
    except GraphspecError as e:
        if smap is not None:  # locate runtime errors in the spec file the user gave
            e.issues = [i.located(smap.locate(i.path)) for i in e.issues]
        raise
    return 0
