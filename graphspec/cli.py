"""The `graphspec` command: validate, compile, run, eval, export, predict, variants, study, schema.

A user mistake ends with the located message and a non-zero exit (2 for a spec
error, 3 when this machine lacks something); a traceback means a bug of ours.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from pathlib import Path


from .errors import EnvironmentProblem, GraphspecError, Issue, Loc, SpecError
from .loader import load
from .source import load_scalar
from .version import __version__


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="graphspec", description="Declarative vision-language encoder graphs.")
    p.add_argument("--version", action="version", version=f"graphspec {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    for name, help_ in (("validate", "run every check without building weights"),
                        ("compile", "check the spec and write the build directory")):
        c = sub.add_parser(name, help=help_)
        c.add_argument("spec", help="a spec file (.yaml, .yml or .json)")
        c.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE",
                       help="override a field, e.g. --set train.optimizer.lr=3e-4 (repeatable)")
        if name == "compile":
            c.add_argument("-o", "--out", help="build directory (default: build/SPEC_NAME)")
    r = sub.add_parser("run", help="train: compile a spec if needed, then run it")
    r.add_argument("target", help="a spec file, or a build directory written by `graphspec compile`; with "
                   "--resume, the run directory to continue")
    r.add_argument("--resume", action="store_true", help="continue the run in TARGET from its newest checkpoint "
                   "(see train.checkpoint_every), on the trajectory it would have followed uninterrupted")
    r.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE",
                   help="override a field of the spec (only with a spec file)")
    r.add_argument("--run-dir", help="where metrics and checkpoints go (default: runs/NAME/TIMESTAMP)")
    r.add_argument("--build-dir", help="where to compile a spec file to (default: build/NAME)")
    r.add_argument("--located-in", help=argparse.SUPPRESS)  # a launched rank: the spec file errors point into
    where = r.add_mutually_exclusive_group()
    where.add_argument("--nproc", type=_positive, metavar="N", help="train with N data-parallel processes on this "
                       "machine (sets distributed.world_size), each with an equal share of the cores")
    where.add_argument("--hostfile", metavar="FILE", help="train on the machines of a DeepSpeed hostfile (`HOST "
                       "slots=N` lines; world size = total slots), started by DeepSpeed's launcher")
    e = sub.add_parser("eval", help="a checkpoint's metrics on a split, as JSON")
    e.add_argument("target", help="a run directory or its checkpoint/")
    e.add_argument("--split", default="val", choices=["train", "val", "test"], help="which split (default: val)")
    e.add_argument("-o", "--out", help="write the metrics here (default: TARGET/eval-SPLIT.json)")
    e.add_argument("--device", default="cpu", help="where the model computes: cpu (default), cuda, cuda:1, ...")
    x = sub.add_parser("export", help="a run's trained model as one folder (Hugging Face Hub layout): every "
                       "weight, tokenizer, preprocessing, labels, model card")
    x.add_argument("target", help="a run directory, its checkpoint/, or one of its training checkpoints "
                   "(RUN/checkpoints/step-N)")
    x.add_argument("-o", "--out", required=True, help="the folder to write (must not exist, or be empty)")
    x.add_argument("--no-program", dest="program", action="store_false", help="leave out model.pt2 (the "
                   "torch.export program, which takes seconds to trace; load_model and predict do not need it)")
    pr = sub.add_parser("predict", help="run an exported model on an image and a text: match probability, or the "
                        "task head's answer")
    pr.add_argument("model", help="a folder `graphspec export` wrote, or a hub model id")
    pr.add_argument("--image", action="append", default=[], metavar="FILE", help="an image file (repeatable)")
    pr.add_argument("--text", action="append", default=[], metavar="TEXT", help="a text (repeatable); one image "
                    "and several texts, or several images and one text, are paired each with each")
    pr.add_argument("--json", action="store_true", help="print JSON instead of lines")
    pr.add_argument("--device", default="cpu", help="where the model computes: cpu (default), cuda, cuda:1, ...")
    v = sub.add_parser("variants", help="write specs derived from a base spec by a grid or a list of changes")
    v.add_argument("source", help="the base spec file, or a grid file (base:, grid:, variants:)")
    v.add_argument("--grid", dest="axes", action="append", default=[], metavar="PATH=V1,V2",
                   help="vary a field, e.g. --grid nodes.vision_tower.freeze=false,true (repeatable; the grid is "
                        "their product; values read as YAML: 1e-4 is a number, {layers: '0:6'} a mapping)")
    v.add_argument("-o", "--out", required=True, help="the directory to write the variant specs to")
    v.add_argument("--no-compile-check", dest="compile_check", action="store_false",
                   help="check the schema and spec rules only (fast, no torch), not every compile check")
    st = sub.add_parser("study", help="run every variant and stage of a study (skipping what is complete), then "
                        "write the comparison table and plots")
    st.add_argument("study", help="a study file (name:, base:, grid:/variants:, stages:, compare:)")
    st.add_argument("-o", "--out", help="the study folder (default: studies/NAME)")
    st.add_argument("--plan", action="store_true", help="check everything and print the plan; run nothing")
    cd = sub.add_parser("check-data", help="read and decode every image a spec's data blocks name, in parallel, "
                        "and report the bad ones (file, row, column)")
    cd.add_argument("spec", help="a spec file")
    cd.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE",
                    help="override a field of the spec")
    cd.add_argument("--split", choices=["train", "val", "both"], default="both", help="which data blocks")
    cd.add_argument("--workers", type=_positive, metavar="N", help="decoding processes (default: every core)")
    s = sub.add_parser("schema", help="print the JSON Schema of the spec language (for editors)")
    s.add_argument("-o", "--out", help="write it to this file instead of standard output")
    return p


def _device(text: str):
    """A --device value as torch's device, or a located message: not one torch knows, or not on this machine."""
    import torch

    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise SpecError([Issue((), f"--device {text}: not a device torch knows", "give cpu, cuda or cuda:N")],
                        title="bad argument") from None
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        raise EnvironmentProblem([Issue((), f"--device {text}: this machine shows "
                                        f"{torch.cuda.device_count() if torch.cuda.is_available() else 'no'} GPU(s)",
                                        "give --device cpu, or a GPU it shows")], title="the device is not here")
    return device


def _print_warnings(warnings: list[Issue]) -> None:
    for w in warnings:
        print(w.format(), file=sys.stderr)


def _validate(args) -> int:
    import graphspec

    spec = load(args.spec, args.overrides)
    compiled = graphspec.compile(spec)
    _print_warnings(compiled.warnings)
    total = compiled.summary["params"]["total"]
    print(f"{args.spec}: ok ({total['total']:,} parameters, {total['trainable']:,} trainable, "
          f"{total['frozen']:,} frozen)")
    return 0


def _compile(args) -> int:
    import graphspec

    start = time.perf_counter()
    spec = load(args.spec, args.overrides)
    out = Path(args.out or Path("build") / spec.name)
    compiled = graphspec.compile(spec, out=out)
    _print_warnings(compiled.warnings)
    from graphspec.compiler.summary import format_summary

    print(format_summary(compiled.summary))
    print(f"\nwrote {out}/ (model.py, ds_config.json, summary.txt, graph.mmd, ...) "
          f"in {time.perf_counter() - start:.1f} s; checks and emission {compiled.seconds:.2f} s")
    return 0


def _schema(args) -> int:
    from .schema import spec_json_schema

    text = json.dumps(spec_json_schema(), indent=2) + "\n"
    if args.out:
        Path(args.out).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number of processes >= 1")
    return int(text)


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


def _launch(args, world: int, run_args: list[str], spec) -> int:
    from graphspec.compiler.ds_config import resolve_accelerator
    from graphspec.runtime.launch import launch

    accelerator = os.environ.get("DS_ACCELERATOR") or resolve_accelerator(spec)
    return launch(world, run_args, Path(args.hostfile) if args.hostfile else None, accelerator)


def _run(args) -> int:
    import graphspec
    from graphspec.runtime.build import read_build
    from graphspec.runtime.launch import launched, share_cores
    from graphspec.runtime.run import run

    target = Path(args.target)
    smap = None
    world = _world(args)
    overrides = args.overrides + ([f"distributed.world_size={world}"] if world is not None else [])
    share_cores()
    if args.resume:
        from graphspec.runtime.run import resume_build

        if args.overrides or args.run_dir or args.build_dir:
            raise GraphspecError([Issue((), "--resume continues a run as it was: it takes no --set, --run-dir or "
                                        "--build-dir", "give only the run directory")])
        build = resume_build(target)
        world = _ranks_match(build, world, target)
        if world > 1 and not launched():
            return _launch(args, world, [str(target), "--resume"], build.spec)
        run(build, target, resume=True)
        return 0
    if target.is_dir():
        if args.overrides and not args.located_in:
            raise GraphspecError([Issue((), "--set needs a spec file: a build directory is already compiled",
                                        "run the spec file, or recompile with the override")])
        build = read_build(target)
        _ranks_match(build, world, target)
        if args.located_in:  # as the launching process read it
            smap = load(Path(args.located_in), args.overrides)._source
    else:
        spec = load(target, overrides)
        smap = spec._source
        build_dir = Path(args.build_dir or Path("build") / spec.name)
        compiled = graphspec.compile(spec, out=build_dir)
        _print_warnings(compiled.warnings)
        build = read_build(build_dir)
    run_dir = Path(args.run_dir or Path("runs") / build.spec.name / time.strftime("%Y%m%d-%H%M%S"))
    if build.spec.distributed.world_size > 1 and not launched():  # every rank gets the same run directory
        located = [] if smap is None else ["--located-in", str(target)] + [
            a for o in overrides for a in ("--set", o)]
        return _launch(args, build.spec.distributed.world_size, [str(build.dir), "--run-dir", str(run_dir), *located],
                       build.spec)
    try:
        run(build, run_dir)
    except GraphspecError as e:
        if smap is not None:  # locate runtime errors in the spec file the user gave
            e.issues = [i.located(smap.locate(i.path)) for i in e.issues]
        raise
    return 0


def _eval(args) -> int:
    from graphspec.runtime.evaluate import evaluate_checkpoint

    metrics = evaluate_checkpoint(args.target, args.split, _device(args.device))
    text = json.dumps(metrics, indent=2) + "\n"
    out = Path(args.out or Path(args.target) / f"eval-{args.split}.json")
    out.write_text(text)
    sys.stdout.write(text)
    return 0


def _export(args) -> int:
    from graphspec.runtime.export import export_model

    out = export_model(args.target, args.out, args.program)
    print(f"exported to {out}: " + ", ".join(sorted(p.name for p in out.iterdir())))
    return 0


def _predict(args) -> int:
    import torch

    from graphspec.runtime.inference import load_model

    model, processor = load_model(args.model, _device(args.device))
    images, texts = args.image, args.text
    with torch.no_grad():
        out = model(**processor(images=images or None, text=texts or None))
    rows = max(len(images), len(texts))
    results = [{"image": images[i if len(images) > 1 else 0] if images else None,
                "text": texts[i if len(texts) > 1 else 0] if texts else None, **model.describe(out, i)}
               for i in range(rows)]
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    for r in results:
        said = "; ".join(f"{head} " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in answer.items())
                         for head, answer in r.items() if isinstance(answer, dict))
        print(f"{r['image'] or '-'} | {r['text'] or '-'}: {said}")
    return 0


def _split_values(text: str) -> list[str]:
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


def _grid_arg(text: str, issues: list[Issue]) -> list:
    """`--grid PATH=V1,V2`: the values read as `--set` reads one (YAML 1.2), located at the argument."""
    from .variants import make_axis

    loc = Loc(f"--grid {text}")
    key, sep, raw = text.partition("=")
    pieces = _split_values(raw)
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


def _variants(args) -> int:
    from .variants import Grid, _tagged, is_grid_file, load_grid, variants, write_variants

    start = time.perf_counter()
    issues: list[Issue] = []
    axes = [axis for axis in (_grid_arg(text, issues) for text in args.axes) if axis]
    if issues:
        raise SpecError(issues, "in --grid")
    grid = load_grid(args.source) if is_grid_file(args.source) else Grid(Path(args.source))
    found = variants(Grid(grid.base, grid.axes + axes, grid.entries), compile_check=args.compile_check)
    paths = write_variants(found, args.out)
    _print_warnings(_tagged([(v.name, list(v.warnings)) for v in found]))
    for v, path in zip(found, paths):
        print(f"{path}: {v.describe()}")
    checks = "every compile check" if args.compile_check else "schema and spec rules only"
    print(f"wrote {len(paths)} variants of {grid.base} ({checks}) in {time.perf_counter() - start:.1f} s")
    return 0


def _study(args) -> int:
    from .study import plan_study

    start = time.perf_counter()
    if not args.plan:
        from .stage_process import start_server

        start_server()  # the stages' server imports their libraries while the study is checked
    study = plan_study(args.study)
    out = Path(args.out or Path("studies") / study.name)
    print(f"study {study.name}: {len(study.variants)} variants x {len(study.config.stages)} stages, checked in "
          f"{time.perf_counter() - start:.1f} s; folder {out}")
    if args.plan:
        for v in study.variants:
            print(f"  {v.name}: {v.describe()}")
        return 0
    from .study_run import run_study

    written = run_study(study, out)
    print(f"\n{written['markdown'].read_text()}\nwrote {written['csv']}, {written['markdown']}, "
          + ", ".join(str(p) for p in written["plots"]))
    return 0


def _check_data(args) -> int:
    from graphspec.runtime.check_data import check_data, raise_if_bad
    from graphspec.runtime.launch import cores

    spec = load(args.spec, args.overrides)
    splits = ["train", "val"] if args.split == "both" else [args.split]
    workers = args.workers or cores()
    reports = check_data(spec, splits, workers)
    for report in reports:
        print(report.line(workers) if report.source != "builtin:shapes" else
              f"{report.split} (builtin:shapes): generated, nothing to decode")
    try:
        raise_if_bad(reports)
    except GraphspecError as e:
        e.issues = [i.located(spec._source.locate(i.path + ("source",))) for i in e.issues]
        raise
    return 0


def _rank_prefix() -> str:
    """Which rank speaks, when a launcher started several."""
    return f"rank {os.environ['RANK']}: " if int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ else ""


COMMANDS = {"validate": _validate, "compile": _compile, "run": _run, "eval": _eval, "export": _export,
            "predict": _predict, "variants": _variants,
            "study": _study, "schema": _schema, "check-data": _check_data}


def main(argv: list[str] | None = None) -> int:
    return _dispatch(_parser().parse_args(argv))


def _dispatch(args) -> int:
    try:
        return COMMANDS[args.command](args)
    except GraphspecError as e:
        if not getattr(e, "only_rank0", False):
            print(_rank_prefix() + e.format(), file=sys.stderr)
        elif os.environ.get("RANK", "0") == "0":  # every rank stopped alike: one says so
            print(e.format(), file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


QUICK_EXIT = ("validate", "compile")  # they hold no processes, files or connections once they return


def entry() -> None:
    """The console command. After a command that only checks and writes files, the process ends without the
    interpreter's teardown, which takes about 1 s once torch is imported (measured: validate 5.0 s -> 3.9 s).
    Any other command ends through the usual teardown (atexit handlers, worker processes joined), but with the
    garbage collector's final passes over every object of torch, transformers, timm and DeepSpeed skipped:
    they took 1.6 of the 2.1 s a process spent exiting after importing those (measured 2026-12-03), in every
    rank and every launcher."""
    args = _parser().parse_args(sys.argv[1:])
    code = _dispatch(args)
    if args.command in QUICK_EXIT:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    gc.freeze()  # what exists now is never collected again: the interpreter's teardown skips walking it
    sys.exit(code)


if __name__ == "__main__":
    entry()
