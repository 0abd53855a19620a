"""A study's first stage under a budget in hours: successive halving, planned before anything runs
(`choose`); `graphspec.studies.ladder` drives it while it runs.

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
"""

from __future__ import annotations

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


__all__ = ["Arm", "Rung", "Schedule", "choose", "planned_hours"]
