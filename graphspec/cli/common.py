"""What several commands share: printing warnings, reading --device, --nproc and --set."""

from __future__ import annotations

import argparse
import sys

from graphspec.language.errors import EnvironmentProblem, Issue, SpecError


def print_warnings(warnings: list[Issue]) -> None:
    for w in warnings:
        print(w.format(), file=sys.stderr)


def positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number of processes >= 1")
    return int(text)


def add_overrides(parser: argparse.ArgumentParser, help_: str) -> None:
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE", help=help_)


def add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cpu", help="where the model computes: cpu (default), cuda, cuda:1, ...")


def device(text: str):
    """A --device value as torch's device, or a located message: not one torch knows, or not on this machine."""
    import torch

    try:
        found = torch.device(text)
    except (RuntimeError, ValueError):
        raise SpecError([Issue((), f"--device {text}: not a device torch knows", "give cpu, cuda or cuda:N")],
                        title="bad argument") from None
    if found.type == "cuda" and (not torch.cuda.is_available() or (found.index or 0) >= torch.cuda.device_count()):
        raise EnvironmentProblem([Issue((), f"--device {text}: this machine shows "
                                        f"{torch.cuda.device_count() if torch.cuda.is_available() else 'no'} GPU(s)",
                                        "give --device cpu, or a GPU it shows")], title="the device is not here")
    return found
