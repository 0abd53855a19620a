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
from .loader import load, spec_warnings


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
    _print_warnings(spec_warnings(spec) + compiled.warnings)
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
    _print_warnings(spec_warnings(spec) + compiled.warnings)
    from compiler.summary import format_summary

    print(format_summary(compiled.summary))
    print(f"\nwrote {out}/ (model.py, ds_config.json, summary.txt, graph.mmd, ...) "
          f"in {time.perf_counter() - start:.1f} s; checks and emission {compiled.seconds:.2f} s")
    return 0


def _schema(args) -> int:
    from .schema import Spec

    text = json.dumps(Spec.model_json_schema(), indent=2) + "\n"
    if args.out:
        Path(args.out).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


COMMANDS = {"validate": _validate, "compile": _compile, "schema": _schema}


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
