"""`graphspec calibrate SPEC...`: measure this machine for `graphspec cost` (at most about a minute), or
`--from RUN_DIR`: refit a profile from a finished run's measured steps."""

from __future__ import annotations

import json
from pathlib import Path

from graphspec.language.errors import Issue, Loc, SpecError
from graphspec.language.reading import load

HELP = "measure this machine (or refit a profile from a run) for `graphspec cost`"
QUICK_EXIT = True


def add_arguments(p) -> None:
    p.add_argument("specs", nargs="*", help="spec files whose shapes to measure at (their towers at random init)")
    p.add_argument("--from", dest="run_dir", metavar="RUN_DIR", help="refit a profile from this finished run (its "
                   "summary.json and its build's cost.json)")
    p.add_argument("--machine", help="with --from: the name to store the refitted profile under (default: the "
                   "one the run's prediction used, e.g. h200 after a short run on an H200)")


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise SpecError([Issue((), f"cannot read {path.name}: {e}", "give the folder of a finished `graphspec "
                               "run` whose build has a cost.json", loc=Loc(str(path)))],
                        title="cannot refit from this run") from None


def _as_predicted_now(run: Path, report: dict) -> dict:
    """The run's prediction by the profile its name resolves to now: the one `refit` scales. When that profile
    has changed since the run predicted (calibrated or refitted again), its step is predicted again."""
    from graphspec.compiler.folders import read_build
    from graphspec.cost.machine import resolve
    from graphspec.cost.predict import estimate

    used = report.get("machine", {})
    now, _ = resolve(used.get("name", ""))
    if (now.source, now.date) == (used.get("source"), used.get("date")):
        return report
    return estimate(read_build(run / "build").spec, used["name"])


def command(args) -> int:
    from graphspec.cost.calibrate import calibrate, refit
    from graphspec.cost.machine import save

    if args.run_dir:
        run = Path(args.run_dir)
        summary, report = _json(run / "summary.json"), _json(run / "build" / "cost.json")
        machine = args.machine or report.get("machine", {}).get("name", "")
        try:
            report = _as_predicted_now(run, report)
            profile = refit(summary, report, machine)
        except (KeyError, ValueError) as e:
            raise SpecError([Issue((), f"cannot refit the profile {e}", "give a run that finished its steps and "
                                   "whose prediction named a profile this machine knows", loc=Loc(str(run)))],
                            title="cannot refit") from None
        path = save(profile, machine)
        print(f"{machine}: {profile.source}; stored in {path}")
        return 0
    if not args.specs:
        raise SpecError([Issue((), "give the spec files to measure at (e.g. specs/paper/exp1_two_tower.yaml), or "
                               "--from RUN_DIR", "graphspec calibrate SPEC [SPEC ...]")], title="bad argument")
    specs = [load(s) for s in args.specs]
    print(f"calibrating this machine at the shapes of {', '.join(s.name for s in specs)}:")
    profile = calibrate(specs)
    from graphspec.cost.machine import path_of

    print(f"stored as {profile.name} in {path_of(profile.name)} ({profile.fits['seconds']:.0f} s)")
    return 0
