"""The `graphspec` command: validate, compile, schema.

A user mistake ends with the located message and a non-zero exit (2 for a spec
error, 3 when this machine lacks something); a traceback means a bug of ours.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .errors import GraphspecError, Issue
from .loader import load


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="graphspec", description="Declarative vision-language encoder graphs.")
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
    r.add_argument("target", help="a spec file, or a build directory written by `graphspec compile`")
    r.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE",
                   help="override a field of the spec (only with a spec file)")
    r.add_argument("--run-dir", help="where metrics and checkpoints go (default: runs/NAME/TIMESTAMP)")
    r.add_argument("--build-dir", help="where to compile a spec file to (default: build/NAME)")
    e = sub.add_parser("eval", help="a checkpoint's metrics on a split, as JSON")
    e.add_argument("target", help="a run directory or its checkpoint/")
    e.add_argument("--split", default="val", choices=["train", "val", "test"], help="which split (default: val)")
    e.add_argument("-o", "--out", help="write the metrics here (default: TARGET/eval-SPLIT.json)")
    s = sub.add_parser("schema", help="print the JSON Schema of the spec language (for editors)")
    s.add_argument("-o", "--out", help="write it to this file instead of standard output")
    return p


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
    from compiler.summary import format_summary

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


def _run(args) -> int:
    import graphspec
    from runtime.build import read_build
    from runtime.run import run

    target = Path(args.target)
    smap = None
    if target.is_dir():
        if args.overrides:
            raise GraphspecError([Issue((), "--set needs a spec file: a build directory is already compiled",
                                        "run the spec file, or recompile with the override")])
        build = read_build(target)
    else:
        spec = load(target, args.overrides)
        smap = spec._source
        build_dir = Path(args.build_dir or Path("build") / spec.name)
        compiled = graphspec.compile(spec, out=build_dir)
        _print_warnings(compiled.warnings)
        build = read_build(build_dir)
    run_dir = Path(args.run_dir or Path("runs") / build.spec.name / time.strftime("%Y%m%d-%H%M%S"))
    try:
        run(build, run_dir)
    except GraphspecError as e:
        if smap is not None:  # locate runtime errors in the spec file the user gave
            e.issues = [i.located(smap.locate(i.path)) for i in e.issues]
        raise
    return 0


def _eval(args) -> int:
    from runtime.evaluate import evaluate_checkpoint

    metrics = evaluate_checkpoint(args.target, args.split)
    text = json.dumps(metrics, indent=2) + "\n"
    out = Path(args.out or Path(args.target) / f"eval-{args.split}.json")
    out.write_text(text)
    sys.stdout.write(text)
    return 0


COMMANDS = {"validate": _validate, "compile": _compile, "run": _run, "eval": _eval, "schema": _schema}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except GraphspecError as e:
        print(e.format(), file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
