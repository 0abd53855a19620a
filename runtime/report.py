"""What the user sees: a progress bar, metrics as JSON lines, TensorBoard events, a final summary."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


class Reporter:
    def __init__(self, run_dir: Path, total_steps: int, start_step: int = 0, show_bar: bool | None = None):
        from tqdm import tqdm

        self.metrics = (run_dir / "metrics.jsonl").open("a", buffering=1)
        self.start = time.perf_counter()
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

    def step(self, step: int, shown: dict) -> None:
        self.bar.update(1)
        if shown:
            self.bar.set_postfix({k: f"{v:.3g}" for k, v in shown.items()}, refresh=False)

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


def _tensorboard(path: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional; metrics.jsonl always has everything
        return None
    return SummaryWriter(str(path))


def format_summary(s: dict) -> str:
    lines = [f"run {s['run_dir']}", f"  steps {s['steps']} in {s['wall_time_s']:.0f} s "
             f"({s['samples_per_s']:.1f} samples/s)",
             f"  parameters: {s['params']['trainable']:,} trainable, {s['params']['frozen']:,} frozen"]
    for key, value in s.get("val", {}).items():
        lines.append(f"  val {key}: {value:.4f}" if isinstance(value, float) else f"  val {key}: {value}")
    lines.append(f"  checkpoint: {s['checkpoint']}")
    return "\n".join(lines)
