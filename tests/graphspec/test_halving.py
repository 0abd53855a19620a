"""A study's first stage under a budget: the schedule chosen (hand-computed cases), and the ladder driven on
synthetic learning curves with synthetic costs (what it promotes, what it charges, the budget as a hard cap)."""

from __future__ import annotations

import itertools
import json
import math
import random
from dataclasses import dataclass, field
from typing import Callable

import pytest

from graphspec.studies.halving import Arm, Rung, Schedule, choose, planned_hours
from graphspec.studies.ladder import Ladder

EQUAL = [Arm(f"v{i}", hours_per_step=0.01, start_h=0.1, eval_h=0.05, after_h=1.0) for i in range(4)]
FULL_H = 4 * (0.1 + 1000 * 0.01 + 0.05 + 1.0)  # 44.6


def curve(a: float, tau: float) -> Callable[[int], float]:
    """A learning curve: the metric at a step, rising to `a` with time constant `tau`."""
    return lambda step: a * (1 - math.exp(-step / tau))


@dataclass
class Drive:
    """What a simulated controller did: where each arm's checkpoint is, hours charged per rung, (arm, target,
    step reached) per rung, and the metrics each rung saw."""

    at: dict[str, int]
    charged: dict[int, float] = field(default_factory=dict)
    runs: list[list[tuple[str, int, int]]] = field(default_factory=list)
    seen: list[dict[str, float]] = field(default_factory=list)


def drive(ladder: Ladder, arms: list[Arm], curves: dict[str, Callable[[int], float]],
          factor: Callable[[], float], stop_after: int | None = None, at: dict[str, int] | None = None) -> Drive:
    """Run the ladder as the study controller would: cap, run (charged predicted x factor), report; then the
    later stages of the survivors. `stop_after`: return after that many runs (a study stopped midway); `at`:
    the arms' steps to continue from."""
    by_name = {a.name: a for a in arms}
    at = dict(at) if at else {a.name: 0 for a in arms}
    out, done = Drive(at), 0
    while runs := ladder.next_runs():
        k = ladder.rung
        while len(out.runs) <= k:
            out.runs.append([])
            out.seen.append({})
        for name, target in runs:
            if stop_after is not None and done == stop_after:
                return out
            to = ladder.cap(name, target, at[name])
            if to > at[name]:
                hours = factor() * by_name[name].segment_h(to - at[name])
                ladder.charge(hours, name)
                out.charged[k] = out.charged.get(k, 0.0) + hours
            at[name] = to
            out.runs[k].append((name, target, to))
            out.seen[k][name] = curves[name](to)
            ladder.report(name, k, curves[name](to), step=to)
            done += 1
    last = len(ladder.schedule.rungs)
    for name in ladder.survivors():
        hours = factor() * by_name[name].after_h
        ladder.charge(hours, name)
        out.charged[last] = out.charged.get(last, 0.0) + hours
    return out


# choose()


def test_a_study_that_fits_runs_whole():
    schedule = choose(EQUAL, 1000, FULL_H / 0.9 + 0.01)
    assert schedule.rungs == (Rung(1000, 4),) and schedule.eta is None and schedule.cut == ()
    assert schedule.survivors == 4 and schedule.planned_h == pytest.approx(FULL_H) == schedule.full_h
    assert schedule.reserve_h == pytest.approx(schedule.budget_h - FULL_H)
    assert choose(EQUAL, 1000, FULL_H / 0.9 - 0.01).eta is not None  # the reserve is kept
    ladder = Ladder(schedule, EQUAL)
    drive(ladder, EQUAL, {a.name: curve(0.5, 100) for a in EQUAL}, lambda: 1.0)
    assert ladder.survivors() == [a.name for a in EQUAL] and ladder.spent_h == pytest.approx(FULL_H)
    assert set(ladder.decisions().values()) == {"full: 1000 steps"}


@pytest.mark.parametrize("budget, eta, rungs, planned", [
    # 60% of the study: 24.08 h to plan. Fitting: eta 2 (250/4, 500/2, 1000/1: 22.05 h), eta 4 (250/4,
    # 1000/1: 19.25 h) and earlier first rungs; one survivor each, first rung 250 both: the smaller eta.
    (0.6 * FULL_H, 2, ((250, 4), (500, 2), (1000, 1)), 4 * 2.65 + 2 * 2.65 + 5.15 + 1),
    # 30.6 h: two survivors fit with eta 3 (333/4, 1000/2: 29.56 h), not with eta 2 (500/4, 1000/2: 32.9 h).
    (34.0, 3, ((333, 4), (1000, 2)), 4 * (0.15 + 3.33) + 2 * (0.15 + 6.67) + 2),
    # 33.3 h: both keep two; eta 2 cuts later (step 500, not 333).
    (37.0, 2, ((500, 4), (1000, 2)), 4 * 5.15 + 2 * 5.15 + 2),
])
def test_the_ladder_prefers_survivors_then_a_later_first_rung_then_the_smaller_eta(budget, eta, rungs, planned):
    schedule = choose(EQUAL, 1000, budget)
    assert (schedule.eta, [(r.steps, r.arms) for r in schedule.rungs]) == (eta, list(rungs))
    assert schedule.planned_h == pytest.approx(planned) and schedule.planned_h <= budget * 0.9
    assert schedule.reserve_h == pytest.approx(budget - planned) and schedule.full_h == pytest.approx(FULL_H)
    assert schedule.survivors == rungs[-1][1]
    assert Schedule.from_json(json.loads(json.dumps(schedule.to_json()))) == schedule


def test_the_cut_says_what_stops_where_and_why():
    schedule = choose(EQUAL, 1000, 0.6 * FULL_H)
    assert schedule.cut == ("2 of 4 variants stop at step 250 of 1000 (rung 1 of 3); the full study needs 44.6 h, "
                            "the budget is 26.8 h", "1 of 4 variants stop at step 500 of 1000 (rung 2 of 3)")
    assert schedule.to_json()["cut"] == list(schedule.cut)
    eight = choose(ARMS, 1000, 0.6 * full_hours(ARMS, 1000))  # 8 arms, eta 4: 6 stop, 2 go on
    assert eight.cut == ("6 of 8 variants stop at step 250 of 1000 (rung 1 of 2); the full study needs 71.3 h, the "
                         "budget is 42.8 h",)


def test_a_budget_below_the_first_rung_gives_no_rungs_and_says_the_minimum():
    # The cheapest schedule: every variant to step 1, then one to step 4 (eta 4): 4 x 0.16 + 0.18 + 1 = 1.82 h.
    schedule = choose(EQUAL, 1000, 0.5)
    assert schedule.rungs == () and schedule.survivors == 0 and schedule.planned_h == 0
    (sentence,) = schedule.cut
    assert sentence.startswith("the budget of 0.50 h does not cover the study's first rung")
    assert "(4 variants to step 1, then 1 to step 4, and the later stages of its survivors) needs 1.82 h" in sentence
    assert "the budget must be at least 2.02 h" in sentence
    assert choose(EQUAL, 1000, 1.82 / 0.9 + 1e-6).rungs == (Rung(1, 4), Rung(4, 1))  # and that is enough
    ladder = Ladder(schedule, EQUAL)
    assert ladder.next_runs() == [] and ladder.done and ladder.survivors() == []
    assert set(ladder.decisions().values()) == {"not run: the budget does not cover the study's first rung"}


def test_heterogeneous_costs_are_charged_for_the_most_expensive_arms():
    """Frozen-tower variants train cheaper but fine-tune dearer: each rung is charged for its most expensive
    segments, the later stages for the most expensive survivors, whichever arms those are."""
    full = [Arm(f"full{i}", 0.01, 0.1, 0.05, 1.0) for i in range(2)]
    frozen = [Arm(f"frozen{i}", 0.004, 0.08, 0.05, 1.2) for i in range(2)]
    arms = [full[0], frozen[0], full[1], frozen[1]]
    schedule = choose(arms, 1000, 31.0)
    assert [(r.steps, r.arms) for r in schedule.rungs] == [(500, 4), (1000, 2)]
    # rung 1: 2 x 5.15 + 2 x 2.13; rung 2: the two full ones (5.15 each); later: the two frozen ones (1.2 each)
    assert schedule.planned_h == pytest.approx(14.56 + 10.3 + 2.4) and schedule.planned_h <= 31.0 * 0.9
    outcomes = [sum(a.segment_h(500) for a in arms) + sum(a.segment_h(500) + a.after_h for a in two)
                for two in itertools.combinations(arms, 2)]
    assert max(outcomes) == pytest.approx(26.86) and max(outcomes) < schedule.planned_h  # none costs more
    assert planned_hours(EQUAL, schedule.rungs) == pytest.approx(max(
        sum(a.segment_h(500) for a in EQUAL) + sum(a.segment_h(500) + a.after_h for a in two)
        for two in itertools.combinations(EQUAL, 2)))  # equal arms: exactly the dearest outcome


def test_min_steps_bounds_the_first_rung():
    for budget in [2.0 + 2 * k for k in range(22)]:
        schedule = choose(EQUAL, 1000, budget, min_steps=300)
        assert not schedule.rungs or schedule.rungs[0].steps >= 300, (budget, schedule.rungs)
        assert schedule.planned_h <= budget * 0.9
    # 60%: the ladders that take one variant to 1000 with a first rung >= 300 cost 29.56 h or more; the first
    # that fits below 24.08 h is eta 2 with its last rung as far as the budget goes: 2.9 h + 0.03 h a step.
    schedule = choose(EQUAL, 1000, 0.6 * FULL_H, min_steps=300)
    assert [(r.steps, r.arms) for r in schedule.rungs] == [(353, 4), (706, 2)] and schedule.eta == 2
    assert planned_hours(EQUAL, (Rung(354, 4), Rung(707, 2))) > 0.6 * FULL_H * 0.9  # a step more does not fit
    assert schedule.cut[-1].startswith("the 2 surviving variants train to step 706 of 1000 only: the budget covers "
                                       "no more")
    assert choose(EQUAL, 1000, 0.6 * FULL_H).rungs[0].steps == 250  # without min_steps


def test_one_variant_that_cannot_reach_the_end_trains_as_far_as_the_budget_allows():
    schedule = choose(EQUAL[:1], 1000, 5.0)  # 4.5 h: 0.15 h + 1 h + 0.01 h a step
    assert schedule.rungs == (Rung(335, 1),) and schedule.eta is None and schedule.survivors == 1
    assert schedule.cut[0].startswith("the variant trains to step 335 of 1000 only")


# Ladder

ARMS = [Arm(f"v{i}", hours_per_step=h, start_h=0.2, eval_h=0.05, after_h=a)
        for i, (h, a) in enumerate([(0.010, 1.0), (0.004, 1.5), (0.012, 0.8), (0.006, 1.2),
                                    (0.010, 1.0), (0.004, 1.5), (0.008, 1.1), (0.006, 1.2)])]
HEIGHTS = [0.62, 0.71, 0.55, 0.80, 0.67, 0.59, 0.76, 0.50]  # same tau: the curves never cross
CURVES = {a.name: curve(h, 300.0) for a, h in zip(ARMS, HEIGHTS)}


def full_hours(arms: list[Arm], steps: int) -> float:
    return sum(a.segment_h(steps) + a.after_h for a in arms)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_ladder_promotes_the_best_and_its_hours_add_up(seed):
    rng = random.Random(seed)
    budget = 0.6 * full_hours(ARMS, 1000)
    schedule = choose(ARMS, 1000, budget)
    assert len(schedule.rungs) >= 2
    ladder = Ladder(schedule, ARMS, metric="itm_acc")
    done = drive(ladder, ARMS, CURVES, lambda: rng.uniform(0.7, 1.3))
    assert ladder.done and ladder.next_runs() == []
    assert ladder.spent_by_rung == pytest.approx(done.charged)  # per rung: the sum of its runs' charges
    assert sum(ladder.spent_by_arm.values()) == pytest.approx(ladder.spent_h) and ladder.spent_h <= budget
    for k, rung in enumerate(schedule.rungs[1:]):
        truth = sorted(done.seen[k], key=lambda name: -done.seen[k][name])[: rung.arms]
        assert ladder.promoted(k) == truth and sorted(truth) == sorted(name for name, _, _ in done.runs[k + 1])
    best = sorted(ARMS, key=lambda a: -HEIGHTS[ARMS.index(a)])[: schedule.survivors]
    assert ladder.survivors() == [a.name for a in best]
    texts = ladder.decisions()
    assert texts[best[0].name].startswith(f"full: 1000 steps, a survivor of {len(schedule.rungs)} rungs: itm_acc 0.")
    worst = ARMS[HEIGHTS.index(min(HEIGHTS))].name
    assert texts[worst].startswith(f"stopped at step {schedule.rungs[0].steps} (rung 1 of {len(schedule.rungs)}): "
                                   f"itm_acc ") and texts[worst].endswith(f"below the best {schedule.rungs[1].arms}")


def test_the_budget_holds_when_runs_cost_more_than_predicted():
    """Every run costs 1.3x its prediction: planned at 90% of the budget, the study would need 117%. The cap
    learns the ratio from the first run and shortens the last runs; the later stages keep their hours. (Equal
    costs: the conservative plan is then what the runs cost.)"""
    arms = [Arm(a.name, 0.01, 0.2, 0.05, 1.0) for a in ARMS]
    budget = 0.6 * full_hours(arms, 1000)
    schedule = choose(arms, 1000, budget)
    assert 1.3 * schedule.planned_h > budget
    ladder = Ladder(schedule, arms)
    done = drive(ladder, arms, CURVES, lambda: 1.3)
    assert ladder.spent_h <= budget + 1e-9 and ladder.ratio == pytest.approx(1.3)
    assert ladder.left_h < 0.01 * budget  # used, not wasted
    capped = [(name, target, to) for runs in done.runs for name, target, to in runs if to < target]
    assert capped  # the cap shortened runs
    assert len(ladder.spent_by_rung) == len(schedule.rungs) + 1  # the later stages ran too, within the budget
    assert ladder.spent_by_rung[len(schedule.rungs)] == pytest.approx(
        1.3 * sum(a.after_h for a in arms if a.name in ladder.survivors()))
    name, _, to = capped[-1]
    assert ladder.decisions()[name].startswith(f"stopped at step {to} of 1000 (the budget's limit)")


def test_crossing_curves_promote_what_the_rung_saw():
    """Successive halving decides on what each rung saw: a late bloomer, worst at step 250 and best at step
    1000, is cut at the first rung."""
    curves = {"v0": curve(0.7, 100), "v1": curve(0.6, 100), "v2": curve(0.5, 100), "late": curve(0.9, 400)}
    arms = [*EQUAL[:3], Arm("late", 0.01, 0.1, 0.05, 1.0)]
    schedule = choose(arms, 1000, 0.6 * FULL_H)
    assert [r.steps for r in schedule.rungs] == [250, 500, 1000]
    ladder = Ladder(schedule, arms)
    drive(ladder, arms, curves, lambda: 1.0)
    assert ladder.promoted(0) == ["v0", "v1"] and ladder.survivors() == ["v0"]
    assert curves["late"](1000) > curves["v0"](1000)  # it would have won
    assert ladder.decisions()["late"].startswith("stopped at step 250 (rung 1 of 3): metric 0.4")


def test_the_state_round_trips_mid_ladder():
    rng = random.Random(5)
    budget = 0.6 * full_hours(ARMS, 1000)
    schedule = choose(ARMS, 1000, budget)
    ladder = Ladder(schedule, ARMS, maximise=True, metric="itm_acc")
    stopped = drive(ladder, ARMS, CURVES, lambda: rng.uniform(0.7, 1.3), stop_after=len(ARMS) + 1)  # in rung 2
    name, target = ladder.next_runs()[0]
    assert ladder.cap(name, target, stopped.at[name]) == target  # a run under way
    state = json.loads(json.dumps(ladder.to_state()))
    again = Ladder.from_state(Schedule.from_json(json.loads(json.dumps(schedule.to_json()))), ARMS, state)
    assert again.to_state() == ladder.to_state()
    assert again.next_runs() == ladder.next_runs() and again.rung == ladder.rung == 1
    assert again.decisions() == ladder.decisions() and again.left_h == ladder.left_h
    first, second = random.Random(9), random.Random(9)
    drive(ladder, ARMS, CURVES, lambda: first.uniform(0.7, 1.3), at=stopped.at)
    drive(again, ARMS, CURVES, lambda: second.uniform(0.7, 1.3), at=stopped.at)
    assert again.to_state() == ladder.to_state() and again.survivors() == ladder.survivors()
    with pytest.raises(ValueError, match="other arms"):
        Ladder.from_state(schedule, ARMS[::-1], state)


def test_next_runs_is_idempotent_and_a_reported_run_is_not_asked_again():
    schedule = choose(EQUAL, 1000, 0.6 * FULL_H)
    ladder = Ladder(schedule, EQUAL)
    assert ladder.next_runs() == ladder.next_runs() == [(a.name, 250) for a in EQUAL]
    ladder.report("v2", 0, 0.5)
    ladder.report("v2", 0, 0.5)  # the same again: ignored
    assert ladder.next_runs() == [("v0", 250), ("v1", 250), ("v3", 250)]
    with pytest.raises(ValueError, match="already reported"):
        ladder.report("v2", 0, 0.6)
    with pytest.raises(ValueError):
        ladder.report("v0", 1, 0.5)  # rung 1 is not decided
    for name in ("v0", "v1", "v3"):
        ladder.report(name, 0, {"v0": 0.1, "v1": 0.7, "v3": 0.3}[name])
    assert ladder.next_runs() == [("v1", 500), ("v2", 500)] and ladder.promoted(0) == ["v1", "v2"]
    assert ladder.decisions()["v1"] == "promoted at step 250; rung 2 of 3: to step 500"
    with pytest.raises(ValueError, match="no run"):
        ladder.cap("v0", 500, 250)  # v0 stopped: a cap would hold hours for a run that never reports


def test_nan_ranks_last_and_ties_follow_the_arm_order():
    schedule = choose(EQUAL, 1000, 0.6 * FULL_H)  # 2 of 4 go on from rung 1
    for maximise, values, promoted in [(True, [float("nan"), 0.5, None, 0.4], ["v1", "v3"]),
                                       (False, [float("nan"), 0.5, None, 0.4], ["v3", "v1"]),
                                       (True, [0.5, 0.5, 0.5, 0.9], ["v3", "v0"]),
                                       (False, [None, float("nan"), 0.5, None], ["v2", "v0"])]:
        ladder = Ladder(schedule, EQUAL, maximise=maximise)
        for arm, value in zip(EQUAL, values):
            ladder.report(arm.name, 0, value)
        assert ladder.promoted(0) == promoted, (maximise, values)


def test_cap_is_the_largest_step_the_hours_left_pay_for():
    schedule = choose(EQUAL, 1000, 0.6 * FULL_H)  # budget 26.76 h; one survivor (1 h of later stages)
    ladder = Ladder(schedule, EQUAL)
    assert ladder.cap("v0", 250, 0) == 250
    ladder.charge(26.76 - 3.005)  # 2.005 h left beyond the survivor's later stages: 0.15 h + 185.5 steps
    assert ladder.cap("v0", 250, 100) == 250 and ladder.cap("v0", 250, 0) == 185
    assert ladder.cap("v0", 250, 250) == 250
    assert ladder.cap("v1", 250, 0) == 0  # v0's run, allowed 2 h and not charged yet, holds them
    ladder.charge(1.9, "v0")
    ladder.report("v0", 0, 0.5, step=185)
    assert ladder.left_h == pytest.approx(1.105) and ladder.ratio == 1.0  # cheaper than predicted: no change
    assert ladder.cap("v1", 250, 0) == 0  # a start and a validation (0.15 h) and the later stages do not fit
