"""`graphspec eval RUN`: a checkpoint's metrics on a split, as JSON."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .common import add_device, device

HELP = "a checkpoint's metrics on a split, as JSON"
QUICK_EXIT = False


def add_arguments(e) -> None:
    e.add_argument("target", help="a run directory or its checkpoint/")
    e.add_argument("--split", default="val", choices=["train", "val", "test"], help="which split (default: val)")
    e.add_argument("-o", "--out", help="write the metrics here (default: TARGET/eval-SPLIT.json)")
    add_device(e)


def command(args) -> int:
    from graphspec.runtime.evaluate import evaluate_checkpoint

    metrics = evaluate_checkpoint(args.target, args.split, device(args.device))
    text = json.dumps(metrics, indent=2) + "\n"
    out = Path(args.out or Path(args.target) / f"eval-{args.split}.json")
    out.write_text(text)
    sys.stdout.write(text)
    return 0
