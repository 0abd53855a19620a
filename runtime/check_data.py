"""`graphspec check-data SPEC`: every image a spec's data blocks name, read and decoded up front, in parallel,
with a progress bar and a report.

Training reads an image only when a batch needs it (a bad one is found then: replaced with `skip_bad`, else
the run stops naming it); this verb finds them all before a long run starts, without the model.
"""

from __future__ import annotations

import multiprocessing
import sys
import time
from dataclasses import dataclass, field

from graphspec.language.errors import Issue, SpecError
from graphspec.language.schema import Spec

from .data.records import MAX_MESSAGES, BadData
from .launch import cores
from .tasks import REGISTRY

CHUNK = 64  # images per task handed to a worker


@dataclass
class Report:
    split: str
    source: str
    images: int = 0
    bad: int = 0
    seconds: float = 0.0
    reasons: dict = field(default_factory=dict)
    messages: list = field(default_factory=list)

    def line(self, workers: int) -> str:
        rate = self.images / max(self.seconds, 1e-9)
        return (f"{self.split} ({self.source}): {self.images:,} images decoded in {self.seconds:.1f} s "
                f"({rate:,.0f}/s, {workers} process{'es' if workers > 1 else ''}): "
                + (f"{self.bad:,} bad ({', '.join(f'{k}: {v}' for k, v in self.reasons.items())})"
                   if self.bad else "all good"))


def _refs(container) -> list:
    """The distinct image references of a task's examples or caption pairs."""
    if hasattr(container, "refs"):  # caption pairs
        found = list(container.refs)
    else:
        found = [ref for example in container for ref in example.images]
    return list(dict.fromkeys(found))  # references compare by where their bytes are


def _check(refs: list) -> tuple[int, list[tuple[str, str]]]:
    bad = []
    for ref in refs:
        try:
            ref.load()
        except BadData as b:
            bad.append((b.reason, b.message))
    return len(refs), bad


def check_data(spec: Spec, splits: list[str], workers: int | None = None, show_bar: bool | None = None) -> list[Report]:
    """Decode every image of the named data blocks (train, val); a Report per block."""
    from tqdm import tqdm

    roles = spec.roles()
    cls = REGISTRY[roles.task.name]
    data = cls.read(spec, roles, transform=None)
    workers = workers or cores()
    reports = []
    for split in splits:
        source = getattr(spec.data, split)
        container = data.train if split == "train" else data.val
        if source is None or container is None:
            continue
        report = Report(split, source.source)
        if source.source == "builtin:shapes":
            reports.append(report)
            continue
        refs = _refs(container)
        chunks = [refs[k:k + CHUNK] for k in range(0, len(refs), CHUNK)]
        start = time.perf_counter()
        bar = tqdm(total=len(refs), desc=f"{split}", unit="img", disable=not (sys.stderr.isatty() if show_bar
                                                                                is None else show_bar))
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            for count, bad in pool.imap_unordered(_check, chunks):
                report.images += count
                for reason, message in bad:
                    report.bad += 1
                    report.reasons[reason] = report.reasons.get(reason, 0) + 1
                    if len(report.messages) < MAX_MESSAGES:
                        report.messages.append(message)
                bar.update(count)
        bar.close()
        report.seconds = time.perf_counter() - start
        reports.append(report)
    return reports


def raise_if_bad(reports: list[Report]) -> None:
    issues = [Issue(("data", r.split), m, "fix or drop it, or set skip_bad: true to replace bad samples while "
                    "training (they are counted)") for r in reports for m in r.messages]
    bad = sum(r.bad for r in reports)
    if bad:
        shown = len(issues)
        raise SpecError(issues, title=f"{bad:,} bad image{'s' if bad > 1 else ''}"
                        + (f" ({bad - shown:,} more not shown)" if bad > shown else ""))
