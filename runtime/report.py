"""What the user sees: a progress bar, metrics as JSON lines, TensorBoard events, a final summary."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


class Reporter:
    """Per step: the bar; every `log_every` steps: losses averaged since the last log, learning rate, speed."""

    def __init__(self, run_dir: Path, total_steps: int, batch_size: int, log_every: int, start_step: int = 0,
                 show_bar: bool | None = None):
        from tqdm import tqdm

        self.metrics = (run_dir / "metrics.jsonl").open("a", buffering=1)
        self.start = time.perf_counter()
        self.total, self.batch_size, self.log_every = total_steps, batch_size, log_every
        self.window_start, self.sums, self.steps, self.waited = self.start, {}, 0, 0.0
        show = sys.stderr.isatty() if show_bar is None else show_bar
        self.bar = tqdm(total=total_steps, initial=start_step, disable=not show, unit="step", dynamic_ncols=True)
        self.show_bar = show
        self.tb = _tensorboard(run_dir / "tensorboard")

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def log(self, record: dict) -> None:
        record = {**record, "time": round(self.elapsed, 3)}
        self.metrics.write(json.dumps(record) + "\n")
        if self.tb is not None:
            prefix = record.get("split", "train")
            for key, value in record.items():
                if isinstance(value, (int, float)) and key not in ("step", "time"):
                    self.tb.add_scalar(f"{prefix}/{key}", value, record["step"])

    def train_step(self, step: int, losses: dict[str, float], lr: float, waited: float = 0.0) -> None:
        """`waited`: seconds the step spent waiting for its batch (the input pipeline was behind)."""
        self.bar.update(1)
        shown = {k: f"{v:.3g}" for k, v in losses.items()}
        self.bar.set_postfix({**shown, **({"waited": f"{waited:.2f}s"} if waited > 1e-3 else {})}, refresh=False)
        self.sums = {k: self.sums.get(k, 0.0) + v for k, v in losses.items()}
        self.steps += 1
        self.waited += waited
        if step % self.log_every and step != self.total:
            return
        mean = {k: v / self.steps for k, v in self.sums.items()}
        elapsed = max(time.perf_counter() - self.window_start, 1e-9)
        rate = self.steps * self.batch_size / elapsed
        self.log({"step": step, **{k: round(v, 5) for k, v in mean.items()}, "lr": lr, "samples_per_s": round(rate, 2),
                  "data_wait_s": round(self.waited / self.steps, 4)})
        if not self.show_bar:  # without a terminal, a line per log with what the bar would show
            eta = (self.total - step) * self.batch_size / max(rate, 1e-9)
            wait = f", waited for data {100 * self.waited / elapsed:.0f}%" if self.waited > 0.01 * elapsed else ""
            self.line(f"step {step}/{self.total} " + " ".join(f"{k} {v:.4f}" for k, v in mean.items())
                      + f" {rate:.1f} samples/s{wait}, eta {eta // 60:.0f}:{eta % 60:02.0f}")
        self.window_start, self.sums, self.steps, self.waited = time.perf_counter(), {}, 0, 0.0

    def line(self, text: str) -> None:
        """A line that shows whether or not there is a bar (e.g. in CI logs)."""
        if self.show_bar:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        self.bar.close()
        self.metrics.close()
        if self.tb is not None:
            self.tb.close()


class Silent:
    """The reporter of a rank other than 0: every rank trains, rank 0 alone shows and writes."""

    elapsed = 0.0

    def log(self, record: dict) -> None:
        pass

    def train_step(self, step: int, losses: dict[str, float], lr: float, waited: float = 0.0) -> None:
        pass

    def line(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass


def _tensorboard(path: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional; metrics.jsonl always has everything
        return None
    return SummaryWriter(str(path))


def format_run_summary(s: dict) -> str:
    lines = [f"run {s['run_dir']}", f"  steps {s['steps']} in {s['wall_time_s']:.0f} s "
             f"({s['samples_per_s']:.1f} samples/s, median step {s['step_time_s']:.3f} s, peak memory "
             f"{s['peak_rss_mb']:,.0f} MB)",
             f"  parameters: {s['params']['trainable']:,} trainable, {s['params']['frozen']:,} frozen"]
    for key, value in s.get("val", {}).items():
        lines.append(f"  val {key}: {value:.4f}" if isinstance(value, float) else f"  val {key}: {value}")
    for key, stats in s.get("data", {}).items():
        if stats.get("skipped"):
            lines.append(f"  {key} data: {stats['skipped']} bad samples skipped ({stats.get('read', 0)} read)")
        if stats.get("bad_images_replaced"):
            lines.append(f"  training: {stats['bad_images_replaced']} bad images replaced by the next sample of "
                         "their batch")
    for tower, c in s.get("frozen_cache", {}).items():
        damaged = f", {c['corrupt']:,} damaged entries computed again" if c.get("corrupt") else ""
        lines.append(f"  {tower} output cache: {c['hits']:,} hits, {c['misses']:,} misses{damaged}; "
                     f"{c['entries']:,} entries, {c['size_mb']:,.1f} MB in {c['dir']}")
    if s.get("two_pass_images"):
        lines.append(f"  two-pass batches: {s['two_pass_images']['why']}")
    p = s.get("predicted")
    if p:
        t, m = p["step_s"], p["peak_memory_mb"]
        lines.append(f"  predicted ({p['machine']}): step {t['predicted']:.3f} s ({t['range'][0]:.3f}-"
                     f"{t['range'][1]:.3f}), measured {t['measured']:.3f} s, error {t['error']:+.0%}; peak memory "
                     f"{m['predicted']:,.0f} MB, measured {m['measured']:,.0f} MB, error {m['error']:+.0%}")
    lines.append(f"  checkpoint: {s['checkpoint']}")
    return "\n".join(lines)


def spec_digest(spec) -> str:
    """What a build's cost.json was computed for: the resolved spec."""
    import hashlib

    text = json.dumps(spec.model_dump(mode="json", exclude={"extends"}), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def predicted_beside(build_dir: Path, spec, summary: dict) -> dict | None:
    """The build's prediction (`graphspec cost`'s cost.json, when there is one for this spec) beside what the
    run measured: step time and peak memory per rank, each with its relative error."""
    try:
        cost = json.loads((build_dir / "cost.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(cost, dict) or cost.get("spec_digest") != spec_digest(spec):
        return None
    machine = cost.get("machine", {})
    out: dict = {"machine": f"{machine.get('name')}, {'calibrated' if machine.get('calibrated') else 'uncalibrated'}"}
    for key, measured in (("step_s", summary.get("step_time_s")), ("peak_memory_mb", summary.get("peak_rss_mb"))):
        predicted = cost.get(key)
        if not isinstance(predicted, (int, float)) or not measured:
            return None
        out[key] = {"predicted": predicted, "measured": measured, "error": round(predicted / measured - 1, 4)}
    out["step_s"]["range"] = [cost.get("step_s_low", 0.0), cost.get("step_s_high", 0.0)]
    return out
