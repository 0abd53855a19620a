"""A study's first stage under a budget in hours: successive halving, planned before anything runs
(`choose`) and driven while it runs (`Ladder`).

Every variant (an `Arm`) runs stage 1 for `steps` steps, then its later stages. When the whole study does not
fit the budget less a reserve, stage 1 runs in rungs: every arm to the first rung's step, the best 1/eta by a
validation metric on to the next rung, and so on; only the last rung's arms (the survivors) run the later
stages. A run stops at a rung without changing its learning-rate schedule (made for `steps` steps) and
resumes from its checkpoint, so rung k+1 costs (r[k+1] - r[k]) steps, one start and one validation.

Planning is conservative: which arms continue is unknown until the rung has run, so each rung is charged for
its most expensive arms (largest hours for that segment), and the later stages for the most expensive
survivors. A schedule so charged never costs more than planned, whichever arms win (if the predictions hold).

The candidates: for eta in `etas`, K rungs at steps round(steps / eta^(K-1-k)) (half up) with ceil(N / eta^k)
of the N arms, K from 2 while the first rung is >= `min_steps` and the rungs distinct. Of those that fit,
`choose` prefers, in order:

- more survivors: the later stages are what the study compares; a cut on a stage-1 metric is a proxy for it;
- a later first rung: the first cut removes the most arms and rests on the earliest metrics, which are the
  noisiest (warmup, curves that still cross);
- the smaller eta: at equal survivors and first rung, gentler cuts make one more comparison, at a later step,
  before the last one.

When no ladder takes even one arm to `steps`, the survivors train only as far as the budget allows: each
ladder shape (eta, K) gets the largest last rung below `steps` that fits (a bisection on the step count), the
shapes are preferred in the same order, and `cut` says so. Ranking those by the last rung first would pick
the most aggressive shape every time: all arms a few steps, then one on (a comparison at step 3 of 1000).
`min_steps` is the earliest step at which a first comparison means something. A rung where no arm is cut is
dropped (its pause would cost a start and a validation for no decision). Ranges of the predictions are the
caller's business: it passes the hours it wants planned against.

`Ladder` holds the budget as a hard cap while the study runs: `cap` shortens a run to what the hours left can
pay, with the predictions scaled by the worst ratio of charged to predicted hours seen so far. Successive
halving decides on what each rung saw: an arm whose curve rises late (a late bloomer) can be cut before it
overtakes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence


@dataclass(frozen=True)
class Arm:
    """One variant's predicted costs: accelerator-hours per stage-1 step, per start of a stage-1 job (paid
    again at every resume), per validation, and for all its later stages."""

    name: str
    hours_per_step: float
    start_h: float
    eval_h: float
    after_h: float

    def segment_h(self, steps: int) -> float:
        """Hours of one stage-1 run of `steps` steps: a start, the steps, a validation."""
        return self.start_h + steps * self.hours_per_step + self.eval_h


@dataclass(frozen=True)
class Rung:
    """`arms` arms train up to step `steps`."""

    steps: int
    arms: int


@dataclass(frozen=True)
class Schedule:
    """What stage 1 runs under a budget. `full_h`: the whole study without halving; `planned_h`: this schedule,
    charged conservatively; `survivors`: the arms of the last rung (0: nothing runs); `cut`: sentences saying
    what was cut and why (empty when nothing is)."""

    eta: int | None
    rungs: tuple[Rung, ...]
    steps: int
    budget_h: float
    planned_h: float
    reserve_h: float
    full_h: float
    survivors: int
    cut: tuple[str, ...] = field(default=())

    def to_json(self) -> dict[str, Any]:
        """A plain dict (`--plan --json`); `from_json` reads it back."""
        return {"eta": self.eta, "rungs": [{"steps": r.steps, "arms": r.arms} for r in self.rungs],
                "steps": self.steps, "budget_h": self.budget_h, "planned_h": self.planned_h,
                "reserve_h": self.reserve_h, "full_h": self.full_h, "survivors": self.survivors,
                "cut": list(self.cut)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Schedule:
        return cls(data["eta"], tuple(Rung(int(r["steps"]), int(r["arms"])) for r in data["rungs"]),
                   int(data["steps"]), float(data["budget_h"]), float(data["planned_h"]),
                   float(data["reserve_h"]), float(data["full_h"]), int(data["survivors"]), tuple(data["cut"]))


def planned_hours(arms: Sequence[Arm], rungs: Sequence[Rung]) -> float:
    """Hours of a ladder charged conservatively: each rung's `arms` most expensive segments, then the later
    stages of the last rung's `arms` most expensive arms."""
    total, before = 0.0, 0
    for rung in rungs:
        total += sum(sorted((a.segment_h(rung.steps - before) for a in arms), reverse=True)[: rung.arms])
        before = rung.steps
    if rungs:
        total += sum(sorted((a.after_h for a in arms), reverse=True)[: rungs[-1].arms])
    return total


def _rounded(steps: int, divisor: int) -> int:
    """steps / divisor rounded half up, in integers."""
    return (2 * steps + divisor) // (2 * divisor)


def _ladder(n: int, last: int, eta: int, k: int, min_steps: int) -> tuple[Rung, ...] | None:
    """K rungs at round(last / eta^(K-1-k)) with ceil(n / eta^k) arms, rungs that cut nothing dropped; None
    when the first rung is below `min_steps` or two rungs share a step."""
    steps = [_rounded(last, eta ** (k - 1 - i)) for i in range(k)]
    if steps[0] < min_steps or any(a >= b for a, b in zip(steps, steps[1:])):
        return None
    counts = [max(1, -(-n // eta ** i)) for i in range(k)]
    return tuple(Rung(s, c) for i, (s, c) in enumerate(zip(steps, counts)) if i == k - 1 or counts[i + 1] < c)


def _hours(h: float) -> str:
    return f"{h:.1f} h" if h >= 10 else f"{h:.2f} h" if h >= 0.1 else f"{h:.3g} h"


def _describe(rungs: Sequence[Rung]) -> str:
    return ", then ".join(f"{r.arms} variant{'s' * (r.arms != 1)} to step {r.steps}" if i == 0
                          else f"{r.arms} to step {r.steps}" for i, r in enumerate(rungs))


def _cut(n: int, steps: int, rungs: Sequence[Rung], full_h: float, budget_h: float) -> tuple[str, ...]:
    sentences = []
    for i, (rung, after) in enumerate(zip(rungs, rungs[1:])):
        sentences.append(f"{rung.arms - after.arms} of {n} variants stop at step {rung.steps} of {steps} "
                         f"(rung {i + 1} of {len(rungs)})")
    last = rungs[-1]
    if last.steps < steps:
        if len(rungs) > 1:
            who = "the surviving variant trains" if last.arms == 1 else f"the {last.arms} surviving variants train"
        else:
            who = "the variant trains" if n == 1 else f"all {n} variants train"
        sentences.append(f"{who} to step {last.steps} of {steps} only: the budget covers no more, and "
                         f"their learning-rate schedule, made for {steps} steps, stops before its end")
    if not sentences:
        return ()
    sentences[0] += f"; the full study needs {_hours(full_h)}, the budget is {_hours(budget_h)}"
    return tuple(sentences)


def _bisect(fits: Callable[[int], bool], lo: int, hi: int) -> int:
    """The largest t in [lo, hi] with fits(t), given fits(lo) (and fits falling with t, up to rounding)."""
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def choose(arms: Sequence[Arm], steps: int, budget_h: float, *, reserve: float = 0.1, min_steps: int = 1,
           etas: Sequence[int] = (2, 3, 4)) -> Schedule:
    """The schedule of stage 1 for these arms under `budget_h`, planned against `budget_h * (1 - reserve)`:
    the whole study if it fits, else the preferred ladder that fits (module docstring), else the ladder that
    takes its survivors furthest below `steps`, else no rungs (the caller refuses to start)."""
    n = len(arms)
    if n == 0 or steps < 1 or not 1 <= min_steps <= steps or not 0 <= reserve < 1 or any(e < 2 for e in etas):
        raise ValueError(f"choose: needs arms, steps >= 1, 1 <= min_steps <= steps, 0 <= reserve < 1 and etas "
                         f">= 2 (got {n} arms, steps {steps}, min_steps {min_steps}, reserve {reserve}, etas "
                         f"{list(etas)})")
    if len({a.name for a in arms}) != n:
        raise ValueError("choose: arm names must be unique")
    usable = budget_h * (1 - reserve)
    full_h = planned_hours(arms, (Rung(steps, n),))

    def schedule(eta: int | None, rungs: tuple[Rung, ...]) -> Schedule:
        planned, survivors = planned_hours(arms, rungs), rungs[-1].arms
        return Schedule(eta if len(rungs) > 1 else None, rungs, steps, budget_h, planned, budget_h - planned,
                        full_h, survivors, _cut(n, steps, rungs, full_h, budget_h))

    if full_h <= usable:
        return schedule(None, (Rung(steps, n),))
    best: tuple[tuple[float, ...], int, tuple[Rung, ...]] | None = None
    for eta in sorted(set(etas)):
        k = 2
        while (rungs := _ladder(n, steps, eta, k, min_steps)) is not None:
            planned = planned_hours(arms, rungs)
            key = (rungs[-1].arms, rungs[0].steps, -eta, -planned)
            if planned <= usable and (best is None or key > best[0]):
                best = (key, eta, rungs)
            k += 1
    if best is not None:
        return schedule(best[1], best[2])
    # No ladder takes one arm to `steps`: each shape's last rung below it, the largest that fits.
    cheapest: tuple[float, tuple[Rung, ...]] = (full_h, (Rung(steps, n),))
    for eta in sorted(set(etas)):
        for k in range(2, 64):
            lo = min_steps * eta ** (k - 1)  # from here on the first rung is >= min_steps and the rungs distinct
            if lo >= steps:
                break

            def rungs_at(last: int, eta: int = eta, k: int = k) -> tuple[Rung, ...]:
                ladder = _ladder(n, last, eta, k, min_steps)
                assert ladder is not None  # last >= lo
                return ladder

            low = planned_hours(arms, rungs_at(lo))
            if low < cheapest[0]:
                cheapest = (low, rungs_at(lo))
            if low > usable:
                continue
            rungs = rungs_at(_bisect(lambda t: planned_hours(arms, rungs_at(t)) <= usable, lo, steps - 1))
            key = (rungs[-1].arms, rungs[0].steps, -eta, rungs[-1].steps, -planned_hours(arms, rungs))
            if best is None or key > best[0]:
                best = (key, eta, rungs)
    if best is not None:
        return schedule(best[1], best[2])
    need = f"; with the {reserve:.0%} reserve kept, the budget must be at least " \
        f"{_hours(cheapest[0] / (1 - reserve))}" if reserve else ""
    return Schedule(None, (), steps, budget_h, 0.0, budget_h, full_h, 0, (
        f"the budget of {_hours(budget_h)} does not cover the study's first rung: the cheapest schedule "
        f"({_describe(cheapest[1])}, and the later stages of its survivors) needs {_hours(cheapest[0])}{need}; "
        f"the full study needs {_hours(full_h)}",))


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


__all__ = ["Arm", "Rung", "Schedule", "Ladder", "choose", "planned_hours"]
