"""A study's comparison: one row per variant (parameters, step time, memory, wall time, metrics) and plots."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from .plan import Study


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
        summaries = {stage: _summary(out, variant.name, stage) for stage in study.config.stages}
        row["total wall s"] = round(sum(s["wall_time_s"] for s in summaries.values() if s), 1)
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
                if row[metric] is not None and row[f"{first} wall s"] is not None:
                    ax.scatter(row[f"{first} wall s"], row[metric], color=colours[k % len(colours)],
                               label=row["variant"])
            ax.set_xlabel(f"{first} compute (wall s)")
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
                ax.plot(steps, losses, label=variant.name, linewidth=1)
        ax.set_title(stage)
        ax.set_xlabel("step")
        ax.set_ylabel("train loss")
    axes[0][0].legend(fontsize=6)
    fig.tight_layout()
    written.append(out / "plots" / "learning_curves.png")
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)
    return written


def write_comparison(study: Study, out: Path) -> dict:
    table = rows(study, out)
    with (out / "results.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(table[0]))
        writer.writeheader()
        writer.writerows(table)
    (out / "results.md").write_text(f"# {study.name}\n\n" + markdown(table))
    return {"csv": out / "results.csv", "markdown": out / "results.md", "plots": _plots(study, out, table),
            "table": table}
