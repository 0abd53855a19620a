"""A study's comparison: one row per variant (parameters, step time, memory, hours, metrics), a table of
predicted against spent hours and memory per stage, and plots.

A stage's spent hours are its jobs' wall times (each attempt, as the job recorded it in attempts.jsonl: start-up
and validations included) times the accelerators it held; where a stage has no such record (a study folder of
an earlier graphspec), its run's wall time.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from .names import short_name
from .plan import Study

# Each metric's chance level, drawn as a line: ITM's validation pairs are half negatives, NLVR2 is true/false,
# SNLI-VE has three classes. Metrics without a known chance level (MLM accuracy, whose chance is the most
# frequent token's share; retrieval) get no line.
CHANCE = {"itm_acc": 0.5, "nlvr2_acc": 0.5, "snli_ve_acc": 1 / 3}


def _summary(out: Path, variant: str, stage: str) -> dict | None:
    path = out / "runs" / variant / stage / "run" / "summary.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _curve(out: Path, variant: str, stage: str) -> tuple[list[int], list[float]]:
    path = out / "runs" / variant / stage / "run" / "metrics.jsonl"
    steps, losses = [], []
    for line in path.read_text().splitlines() if path.is_file() else []:
        record = json.loads(line)
        if record.get("split", "train") == "train" and "loss" in record:
            steps.append(record["step"])
            losses.append(record["loss"])
    return steps, losses


def spent_h(out: Path, variant: str, stage: str, accelerators: int = 1) -> float | None:
    """The hours a stage has spent: its attempts' wall times (else its run's) times its accelerators."""
    d = out / "runs" / variant / stage
    path = d / "attempts.jsonl"
    if path.is_file():
        attempts = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return sum(a["ended"] - a["started"] for a in attempts) * accelerators / 3600
    summary = _summary(out, variant, stage)
    return summary["wall_time_s"] * accelerators / 3600 if summary else None


def _reached(out: Path, variant: str, stage: str) -> dict | None:
    """The run's summary, or where it paused (`stopped.json`)."""
    summary = _summary(out, variant, stage)
    if summary is not None:
        return summary
    path = out / "runs" / variant / stage / "run" / "stopped.json"
    return json.loads(path.read_text()) if path.is_file() else None


def spent_rows(study: Study, out: Path, forecast=None, state: dict | None = None) -> list[dict]:
    """Per (variant, stage): predicted hours and peak memory (with their ranges, when the study was planned)
    beside what it spent and measured, how far it ran, and why."""
    table = []
    stages = (state or {}).get("stages", {})
    for run in study.runs:
        cost = forecast.cost(run.variant, run.stage) if forecast is not None else None
        reached = _reached(out, run.variant, run.stage)
        spent = spent_h(out, run.variant, run.stage, cost.accelerators if cost else 1)
        status = stages.get(f"{run.variant}/{run.stage}", {}).get("status")
        if forecast is not None and run.variant in forecast.refused:
            status = "refused: " + forecast.refused[run.variant]
        steps = reached.get("stopped_at", reached.get("steps")) if reached else 0
        parts = stages.get(f"{run.variant}/{run.stage}", {}).get("parts", [])
        ran = _predicted_for_parts(cost, parts) if cost is not None and parts else None
        if ran is None and cost is not None and reached and "stopped_at" not in reached:
            ran = cost.hours[1]  # run whole, in one go (a study folder without the record of its parts)
        table.append({
            "variant": short_name(run.variant, study.base_name), "stage": run.stage,
            "steps": f"{steps}/{run.spec.train.steps}",
            "predicted h": round(cost.hours[1], 4) if cost else None,
            "range h": f"{cost.hours[0]:.3g}-{cost.hours[2]:.3g}" if cost else None,
            "predicted h, as run": round(ran, 4) if ran is not None else None,
            "spent h": round(spent, 4) if spent is not None else None,
            "spent/predicted": round(spent / ran, 2) if ran and spent else None,
            "predicted peak MB": cost.peak_memory_mb[1] if cost else None,
            "peak MB": reached.get("peak_rss_mb") if reached else None,
            "status": status or ("complete" if reached and "stopped_at" not in reached else "not run")})
    return table


def _predicted_for_parts(cost, parts: list[dict]) -> float | None:
    """What the prediction says the stage's parts as they ran cost (each job: a start, its steps, a
    validation), so that a stage paused at a rung or resumed is set beside what it was predicted to cost."""
    done = [p for p in parts if p.get("ended") and p.get("target") is not None]
    if not done:
        return None
    return sum(cost.start_h + (p["target"] - p.get("from", 0)) * cost.hours_per_step() + (cost.eval_h if cost.evals
                                                                                         else 0.0) for p in done)


def rows(study: Study, out: Path) -> list[dict]:
    """Per variant: what changed, the first stage's costs (trainable/frozen parameters, median step time, peak
    memory, wall time), the whole wall time, and every compared metric (None where a stage has not run)."""
    first = next(iter(study.config.stages))
    table = []
    for variant in study.variants:
        head = _summary(out, variant.name, first) or {}
        row = {"variant": variant.name, "changes": variant.describe(),
               "trainable": head.get("params", {}).get("trainable"), "frozen": head.get("params", {}).get("frozen"),
               f"{first} step s": head.get("step_time_s"), f"{first} peak MB": head.get("peak_rss_mb"),
               f"{first} wall s": head.get("wall_time_s")}
        summaries = {stage: _reached(out, variant.name, stage) for stage in study.config.stages}
        row["total wall s"] = round(sum(s["wall_time_s"] for s in summaries.values() if s), 1)
        spent = [spent_h(out, variant.name, stage) for stage in study.config.stages]
        row["total h"] = round(sum(h for h in spent if h is not None), 4) if any(h is not None for h in spent) \
            else None
        for metric in study.config.compare:
            stage, _, key = metric.partition(".")
            row[metric] = (summaries[stage] or {}).get("val", {}).get(key)
        table.append(row)
    return table


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 10 else f"{value:,.1f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def markdown(table: list[dict]) -> str:
    keys = list(table[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(_cell(row[k]) for k in keys) + " |" for row in table]
    return "\n".join(lines) + "\n"


def _plots(study: Study, out: Path, table: list[dict]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")  # files only, no screen
    import matplotlib.pyplot as plt

    first = next(iter(study.config.stages))
    (out / "plots").mkdir(exist_ok=True)
    written = []
    if study.config.compare:
        fig, axes = plt.subplots(1, len(study.config.compare), figsize=(4.5 * len(study.config.compare), 3.8),
                                 squeeze=False)
        colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        for ax, metric in zip(axes[0], study.config.compare):
            for k, row in enumerate(table):  # one colour per variant in every panel, named in the legend
                if row[metric] is not None and row["total h"] is not None:
                    ax.scatter(row["total h"], row[metric], color=colours[k % len(colours)],
                               label=short_name(row["variant"], study.base_name))
            chance = CHANCE.get(metric.partition(".")[2])
            if chance is not None:
                ax.axhline(chance, color="grey", linestyle="--", linewidth=1)
                ax.annotate("chance", (0, chance), xycoords=("axes fraction", "data"), fontsize=7, color="grey",
                            xytext=(2, 2), textcoords="offset points")
            ax.set_xlabel("compute, all stages (hours)")
            ax.set_ylabel(metric)
            if not ax.collections:  # no variant has this metric (e.g. the stage had no validation)
                ax.text(0.5, 0.5, "no values", ha="center", va="center", transform=ax.transAxes)
        named = {}  # every variant that has a point in some panel, once
        for ax in axes[0]:
            for handle, label in zip(*ax.get_legend_handles_labels()):
                named.setdefault(label, handle)
        if named:
            fig.legend(list(named.values()), list(named), loc="lower center", ncol=min(2, len(named)), fontsize=7)
        fig.tight_layout(rect=(0, 0.06 * ((len(named) + 1) // 2), 1, 1))
        written.append(out / "plots" / "metrics_vs_compute.png")
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)
    stages = list(study.config.stages)
    fig, axes = plt.subplots(1, len(stages), figsize=(4.5 * len(stages), 3.8), squeeze=False)
    for ax, stage in zip(axes[0], stages):
        for variant in study.variants:
            steps, losses = _curve(out, variant.name, stage)
            if steps:
                ax.plot(steps, losses, label=short_name(variant.name, study.base_name), linewidth=1)
        ax.set_title(stage)
        ax.set_xlabel("step")
        ax.set_ylabel("train loss")
    axes[0][0].legend(fontsize=6)
    fig.tight_layout()
    written.append(out / "plots" / "learning_curves.png")
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)
    return written


def write_comparison(study: Study, out: Path, forecast=None, state: dict | None = None) -> dict:
    """results.csv and results.md (one row per variant), spent.md (per stage: predicted against spent), the
    plots; the paths written, and the tables."""
    table = rows(study, out)
    spent = spent_rows(study, out, forecast, state)
    budget = f"budget {forecast.budget_h:g} h; " if forecast is not None and forecast.budget_h is not None else ""
    total = sum(r["spent h"] or 0 for r in spent)
    planned = f"planned {forecast.planned_h:.4g} h; " if forecast is not None else ""
    if forecast is not None:  # the plan charges the dearest variants' continuation; this, what did continue
        planned += f"predicted for what ran {sum(r['predicted h, as run'] or 0 for r in spent):.4g} h; "
    (out / "spent.md").write_text(f"# {study.name}: predicted and spent\n\n{budget}{planned}spent {total:.4g} h\n\n"
                                  + markdown(spent))
    with (out / "results.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(table[0]))
        writer.writeheader()
        writer.writerows(table)
    (out / "results.md").write_text(f"# {study.name}\n\n" + markdown(table))
    return {"csv": out / "results.csv", "markdown": out / "results.md", "spent": out / "spent.md",
            "plots": _plots(study, out, table), "table": table, "spent_table": spent}
