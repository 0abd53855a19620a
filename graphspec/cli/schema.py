"""`graphspec schema`: the JSON Schema of the spec language (installed plugins' kinds and tasks included)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

HELP = "print the JSON Schema of the spec language (for editors)"
QUICK_EXIT = False


def add_arguments(p) -> None:
    p.add_argument("-o", "--out", help="write it to this file instead of standard output")


def command(args) -> int:
    from graphspec.language.schema import spec_json_schema

    text = json.dumps(spec_json_schema(), indent=2) + "\n"
    if args.out:
        Path(args.out).write_text(text)
    else:
        sys.stdout.write(text)
    return 0
