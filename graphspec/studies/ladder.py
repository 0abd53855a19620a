"""A study's successive halving while it runs: which variant trains to which step now, what each rung decided,
the hours spent (the schedule itself is planned by `graphspec.studies.halving.choose`).

`Ladder` holds the budget as a hard cap while the study runs: `cap` shortens a run to what the hours left can
pay, with the predictions scaled by the worst ratio of charged to predicted hours seen so far. Successive
halving decides on what each rung saw: an arm whose curve rises late (a late bloomer) can be cut before it
overtakes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

from .halving import Arm, Schedule


@dataclass
class _Run:
    """A run `cap` allowed and not yet reported: its predicted hours and the hours charged to it so far."""

    predicted_h: float
    charged_h: float = 0.0


class Ladder:
    """The running state of a schedule: which arm runs to which step now, what each rung decided, the hours
    spent. The budget (`schedule.budget_h`) is a hard cap. Rungs are numbered from 0 here (texts say
    "rung 1 of 3"). The controller's loop::

        while runs := ladder.next_runs():
            for arm, target in runs:
                to = ladder.cap(arm, target, at_step)   # at_step: where the arm's checkpoint is
                ...run from at_step to `to` when to > at_step; ladder.charge(hours, arm)...
                ladder.report(arm, ladder.rung, metric, step=to)   # also when it could not run
        ...the later stages of ladder.survivors(), each charged...

    Charge a run's hours before reporting its metric: a charge goes to the rung the arm is running.
    """

    def __init__(self, schedule: Schedule, arms: Sequence[Arm], maximise: bool = True, *, metric: str = "metric"):
        if len({a.name for a in arms}) != len(arms):
            raise ValueError("Ladder: arm names must be unique")
        if schedule.rungs and schedule.rungs[0].arms != len(arms):
            raise ValueError(f"Ladder: the schedule's first rung has {schedule.rungs[0].arms} arms, "
                             f"{len(arms)} were given")
        self.schedule = schedule
        self.arms = {a.name: a for a in arms}
        self.order = [a.name for a in arms]
        self._index = {a.name: i for i, a in enumerate(arms)}
        self.maximise = maximise
        self.metric = metric
        self.spent_h = 0.0
        self.spent_by_arm: dict[str, float] = {}
        self.spent_by_rung: dict[int, float] = {}  # key len(schedule.rungs): after the last rung (later stages)
        self.ratio = 1.0  # the largest charged / predicted hours of a reported run, at least 1
        self._reports: list[dict[str, tuple[float | None, int]]] = [{} for _ in schedule.rungs]
        self._runs: dict[str, _Run] = {}

    @property
    def left_h(self) -> float:
        return self.schedule.budget_h - self.spent_h

    def charge(self, hours: float, arm: str | None = None) -> None:
        """Record hours really spent, by `arm` (its rung's run, or its later stages once the ladder is done),
        or by the study as a whole (`arm` None: the current rung)."""
        if arm is not None and arm not in self.arms:
            raise KeyError(f"unknown arm '{arm}'")
        rung = self.rung if arm is None else self._rung_of(arm)
        self.spent_h += hours
        self.spent_by_rung[rung] = self.spent_by_rung.get(rung, 0.0) + hours
        if arm is not None:
            self.spent_by_arm[arm] = self.spent_by_arm.get(arm, 0.0) + hours
            if arm in self._runs:
                self._runs[arm].charged_h += hours

    def _rung_of(self, arm: str) -> int:
        """The rung the arm is running, or the last it ran; once the ladder is done, the later stages."""
        if self.done:
            return len(self.schedule.rungs)
        return self._last(arm)

    def _last(self, arm: str) -> int:
        """The last rung the arm trains in (so far)."""
        return max(k for k, names in enumerate(self._decided()) if arm in names)

    def _decided(self) -> list[list[str]]:
        """The arms of each rung decided so far, best first at the rung before (rung 0: in the order given):
        rung k+1's once every arm of rung k has reported."""
        rungs = self.schedule.rungs
        out = [list(self.order)] if rungs else []
        while out and len(out) < len(rungs) and all(a in self._reports[len(out) - 1] for a in out[-1]):
            out.append(self._ranked(len(out) - 1, out[-1])[: rungs[len(out)].arms])
        return out

    def _arms_at(self, k: int) -> list[str]:
        decided = self._decided()
        return decided[k] if 0 <= k < len(decided) else []

    def _ranked(self, k: int, names: list[str]) -> list[str]:
        """Rung k's arms by their metric there, best first; None (or NaN) last; ties in the order given."""
        def key(arm: str) -> tuple[bool, float, int]:
            value = self._reports[k][arm][0]
            return value is None, 0.0 if value is None else -value if self.maximise else value, self._index[arm]
        return sorted(names, key=key)

    def _complete(self, k: int) -> bool:
        names = self._arms_at(k)
        return bool(names) and all(a in self._reports[k] for a in names)

    @property
    def rung(self) -> int:
        """The rung now running; len(schedule.rungs) once every rung has reported."""
        decided = self._decided()
        if decided and all(a in self._reports[len(decided) - 1] for a in decided[-1]) \
                and len(decided) == len(self.schedule.rungs):
            return len(decided)
        return len(decided) - 1 if decided else 0

    @property
    def done(self) -> bool:
        return self.rung == len(self.schedule.rungs)

    def report(self, arm: str, rung: int, metric: float | None, *, step: int | None = None) -> None:
        """The arm's validation metric at the end of rung `rung` (None or NaN: none, ranked last); `step`: the
        step it reached, when `cap` stopped it short of the rung (default: the rung's). A report repeated with
        the same value is ignored."""
        if metric is not None and math.isnan(metric):
            metric = None
        if not 0 <= rung < len(self.schedule.rungs) or arm not in self._arms_at(rung):
            raise ValueError(f"{arm} does not train in rung {rung}")
        entry = (metric, self.schedule.rungs[rung].steps if step is None else step)
        if arm in self._reports[rung]:
            if self._reports[rung][arm] != entry:
                raise ValueError(f"{arm} already reported {self._reports[rung][arm]} for rung {rung}, not {entry}")
            return
        if rung != self.rung:
            raise ValueError(f"rung {rung} has not started: rung {self.rung} is running")
        self._reports[rung][arm] = entry
        run = self._runs.pop(arm, None)
        if run is not None and run.predicted_h > 0:
            self.ratio = max(self.ratio, run.charged_h / run.predicted_h)

    def next_runs(self) -> list[tuple[str, int]]:
        """(arm, target step) for every run of the current rung not reported yet, in the order given; [] once
        the last rung has reported (the later stages of `survivors()` run next)."""
        k = self.rung
        if k == len(self.schedule.rungs):
            return []
        return [(a, self.schedule.rungs[k].steps) for a in self.order
                if a in self._arms_at(k) and a not in self._reports[k]]

    def cap(self, arm: str, target_step: int, at_step: int) -> int:
        """The step this run, now at `at_step`, may go to: the largest step <= `target_step` whose predicted hours
        (a start, the steps, a validation, times `ratio`) fit the hours left, less the later stages of the
        `schedule.survivors` most expensive arms still in the ladder (at the last rung: the survivors') and
        what other runs allowed by `cap` may still charge. `at_step` when nothing fits: the run must not
        start."""
        a = self.arms[arm]
        if (arm, target_step) not in self.next_runs():
            raise ValueError(f"{arm} has no run to step {target_step} now: {self.next_runs()}")
        if target_step <= at_step:
            return at_step
        later = sum(sorted((self.arms[x].after_h for x in self._arms_at(self.rung)), reverse=True)
                    [: self.schedule.survivors])
        others = sum(max(0.0, r.predicted_h * self.ratio - r.charged_h) for x, r in self._runs.items() if x != arm)
        room = (self.left_h - others) / self.ratio - later - a.start_h - a.eval_h
        if room < 0:
            return at_step
        to = target_step if a.hours_per_step <= 0 else min(target_step, at_step + int(room / a.hours_per_step) + 1)
        while to > at_step and a.segment_h(to - at_step) * self.ratio > self.left_h - others - later * self.ratio:
            to -= 1  # the division's rounding, either way
        if to > at_step:
            self._runs[arm] = _Run(a.segment_h(to - at_step))
        return to

    def promoted(self, rung: int) -> list[str]:
        """The arms that continue from rung `rung` to the next, best first ([] until the rung is complete, and
        for the last rung)."""
        if not 0 <= rung < len(self.schedule.rungs) - 1 or not self._complete(rung):
            return []
        return self._arms_at(rung + 1)

    def survivors(self) -> list[str]:
        """The arms of the last rung (they run the later stages), best first at the rung before; [] until
        decided."""
        return self._arms_at(len(self.schedule.rungs) - 1) if self.schedule.rungs else []

    def _value(self, k: int, arm: str) -> str:
        value = self._reports[k][arm][0]
        return f"{self.metric} {'none' if value is None else f'{value:.4g}'}"

    def decisions(self) -> dict[str, str]:
        """Per arm, a short text: running, waiting, promoted, where it stopped and why, or its full run."""
        rungs, steps = self.schedule.rungs, self.schedule.steps
        out: dict[str, str] = {}
        for arm in self.order:
            if not rungs:
                out[arm] = "not run: the budget does not cover the study's first rung"
                continue
            k = self._last(arm)
            of = f"rung {k + 1} of {len(rungs)}"
            if arm not in self._reports[k]:
                before = f"promoted at step {self._reports[k - 1][arm][1]}; " if k else ""
                out[arm] = f"{before}{of}: to step {rungs[k].steps}"
                continue
            reached = self._reports[k][arm][1]
            if k == len(rungs) - 1:
                run = f"full: {steps} steps" if reached == steps else \
                    f"stopped at step {reached} of {steps} (the budget's limit)"
                out[arm] = run if len(rungs) == 1 and reached == steps else \
                    f"{run}, a survivor of {len(rungs)} rungs: {self._value(k, arm)}" if len(rungs) > 1 else \
                    f"{run}: {self._value(k, arm)}"
            elif not self._complete(k):
                out[arm] = f"{of} (step {reached}): {self._value(k, arm)}, waiting for the rung's other arms"
            else:
                out[arm] = f"stopped at step {reached} ({of}): {self._value(k, arm)}, below the best " \
                    f"{rungs[k + 1].arms}"
        return out

    def to_state(self) -> dict[str, Any]:
        """The state as plain JSON data; `Ladder.from_state` continues from it."""
        return {"arms": list(self.order), "maximise": self.maximise, "metric": self.metric,
                "spent_h": self.spent_h, "spent_by_arm": dict(self.spent_by_arm),
                "spent_by_rung": {str(k): v for k, v in self.spent_by_rung.items()}, "ratio": self.ratio,
                "reports": [{a: [m, s] for a, (m, s) in r.items()} for r in self._reports],
                "runs": {a: [r.predicted_h, r.charged_h] for a, r in self._runs.items()}}

    @classmethod
    def from_state(cls, schedule: Schedule, arms: Sequence[Arm], state: dict[str, Any]) -> Ladder:
        """The ladder `to_state` described, for the same schedule and arms (in the same order)."""
        if state["arms"] != [a.name for a in arms] or len(state["reports"]) != len(schedule.rungs):
            raise ValueError("Ladder.from_state: the state is of other arms or another schedule")
        ladder = cls(schedule, arms, state["maximise"], metric=state["metric"])
        ladder.spent_h = float(state["spent_h"])
        ladder.spent_by_arm = {a: float(v) for a, v in state["spent_by_arm"].items()}
        ladder.spent_by_rung = {int(k): float(v) for k, v in state["spent_by_rung"].items()}
        ladder.ratio = float(state["ratio"])
        ladder._reports = [{a: (None if m is None else float(m), int(s)) for a, (m, s) in r.items()}
                           for r in state["reports"]]
        ladder._runs = {a: _Run(float(p), float(c)) for a, (p, c) in state["runs"].items()}
        return ladder


__all__ = ["Ladder"]
