"""Located problems, and the exceptions that carry them.

Every stage (YAML, schema, spec rules, graph rules, shapes) reports *all* of
its problems at once as a list of `Issue`s, each naming where it came from
(file:line:col and the dotted field path) and, where one is knowable, the fix.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, replace
from typing import Iterable, Sequence

Path = tuple  # a field path: ("nodes", "fusion", "width"); ints index lists


@dataclass(frozen=True)
class Loc:
    """Where a value was written: a file and a 1-based line/column, or an override."""

    file: str
    line: int = 0
    col: int = 0

    def __str__(self) -> str:
        if self.line <= 0:
            return self.file
        return f"{self.file}:{self.line}:{self.col}"


@dataclass(frozen=True)
class Issue:
    """One problem: what is wrong, where, and how to fix it."""

    path: Path
    message: str
    hint: str = ""
    severity: str = "error"  # "error" | "warning"
    loc: Loc | None = None

    @property
    def dotted(self) -> str:
        return dotted(self.path)

    def located(self, loc: Loc | None) -> "Issue":
        return self if self.loc is not None else replace(self, loc=loc)

    def format(self) -> str:
        where = f"{self.loc}: " if self.loc else ""
        field_ = f"{self.dotted}: " if self.path else ""
        text = f"{self.severity}: {where}{field_}{self.message}"
        if self.hint:
            text += f"\n  fix: {self.hint}"
        return text


def dotted(path: Sequence) -> str:
    return ".".join(str(p) for p in path)


def suggest(word: str, choices: Iterable[str]) -> str:
    """A 'did you mean' hint for a misspelt name, or '' when nothing is close."""
    choices = sorted(set(str(c) for c in choices))
    close = difflib.get_close_matches(str(word), choices, n=1, cutoff=0.6)
    if close:
        return f"did you mean '{close[0]}'?"
    if choices and len(choices) <= 12:
        return "expected one of: " + ", ".join(choices)
    return ""


class GraphspecError(Exception):
    """A user mistake: reported as a message, never as a traceback."""

    exit_code = 1

    def __init__(self, issues: list[Issue], title: str = ""):
        self.issues = list(issues)
        self.title = title
        super().__init__(self.format())

    @property
    def errors(self) -> list[Issue]:
        return [i for i in self.issues if i.severity == "error"]

    def format(self) -> str:
        lines = [i.format() for i in self.issues]
        n = len(self.errors)
        head = self.title or "the spec has problems"
        lines.append(f"{n} error{'s' if n != 1 else ''}: {head}")
        return "\n".join(lines)


class SpecError(GraphspecError):
    """The spec is wrong (syntax, schema, references, shapes): exit code 2."""

    exit_code = 2


class EnvironmentProblem(GraphspecError):
    """The spec is fine but this machine lacks something (weights, packages): exit code 3."""

    exit_code = 3
