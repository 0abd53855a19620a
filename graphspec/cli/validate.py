"""`graphspec validate SPEC`: every check, no weights built."""

from __future__ import annotations

from graphspec.language.reading import load

from .common import add_overrides, print_warnings

HELP = "run every check without building weights"
QUICK_EXIT = True  # holds no processes, files or connections once it returns


def add_arguments(p) -> None:
    p.add_argument("spec", help="a spec file (.yaml, .yml or .json)")
    add_overrides(p, "override a field, e.g. --set train.optimizer.lr=3e-4 (repeatable)")


def command(args) -> int:
    from graphspec.compiler import compile_spec

    spec = load(args.spec, args.overrides)
    compiled = compile_spec(spec)
    print_warnings(compiled.warnings)
    total = compiled.summary["params"]["total"]
    print(f"{args.spec}: ok ({total['total']:,} parameters, {total['trainable']:,} trainable, "
          f"{total['frozen']:,} frozen)")
    return 0
