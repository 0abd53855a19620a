"""What stops a run early, on purpose: a preemption signal (finish the step, checkpoint, exit resumable) and a
loss that is not finite (stop before the update, or skip the step).

Exit codes (the README's table): 75 stopped by a signal after writing a checkpoint (`graphspec run --resume
RUN_DIR` continues on the uninterrupted trajectory); 4 the run diverged; 130 interrupted now (Ctrl-C twice).
Every decision is taken by all ranks together (one all-reduce), so none is left waiting in a collective.
"""

from __future__ import annotations

import os
import signal
import statistics
import sys
import threading
from collections import deque
from pathlib import Path

from graphspec.language.errors import GraphspecError, Issue, Loc

RESUMABLE = 75  # EX_TEMPFAIL: try again (with --resume)
DIVERGED = 4
# SIGUSR1: Slurm's warning ahead of the kill (--signal=USR1@S); SIGUSR2: submitit's, which a study's Slurm jobs
# ask for, and which Slurm sends to every process of the step (its default action would end the run at once)
GRACEFUL = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGINT)


class Preempted(GraphspecError):
    """A signal stopped the run after it wrote a checkpoint: not an error, a pause."""

    exit_code = RESUMABLE
    only_rank0 = True  # every rank stops alike; one says so

    def __init__(self, signame: str, step: int, checkpoint: Path, run_dir: Path):
        self.signame, self.step, self.checkpoint, self.run_dir = signame, step, checkpoint, run_dir
        super().__init__([Issue((), f"stopped on {signame} after step {step}", loc=Loc(str(checkpoint)))])

    def format(self) -> str:
        return (f"stopped on {self.signame} after step {self.step}: checkpoint {self.checkpoint}\n"
                f"  continue with: graphspec run --resume {self.run_dir} (exit code {RESUMABLE}: resumable)")


class LossGuard:
    """Judges each micro batch's finite loss against `train.exploding`: over `bound` x the median of the first
    three losses this process saw, or, once `window` were accepted, over `spike` x their median and over the
    first ones too. A resumed run starts its reference anew from its first three losses."""

    def __init__(self, bound: float, spike: float, window: int):
        self.bound, self.spike = bound, spike
        self.first: list[float] = []
        self.recent: deque[float] = deque(maxlen=window)
        self.why: str | None = None  # this step's verdict (set by the run loop, on every rank alike)

    @classmethod
    def of(cls, setting) -> "LossGuard":
        """The guard a spec's `train.exploding` asks for."""
        return cls(setting.bound, setting.spike, setting.window)

    def judge(self, loss: float) -> str | None:
        if len(self.first) < 3:
            return None
        ref = statistics.median(self.first)
        if ref > 0 and loss > self.bound * ref:
            return f"the loss exploded: {loss:.4g}, over {self.bound:g} x the first steps' {ref:.4g}"
        if len(self.recent) == self.recent.maxlen:
            median = statistics.median(self.recent)
            if loss > self.spike * median and loss > ref:
                return (f"the loss spiked: {loss:.4g}, over {self.spike:g} x the median of the last "
                        f"{len(self.recent)} steps ({median:.4g})")
        return None

    def accept(self, loss: float) -> None:
        if len(self.first) < 3:
            self.first.append(loss)
        self.recent.append(loss)


class Diverged(GraphspecError):
    """The loss (or the gradient norm) stopped being a number."""

    exit_code = DIVERGED


def diverged(step: int, what: str, losses: dict[str, float], last: Path | None, run_dir: Path,
             skipped_in_a_row: int = 0, applied: bool = False, setting: str = "nonfinite") -> Diverged:
    shown = ", ".join(f"{k} {v:.4g}" for k, v in losses.items())
    where = (f"the last good checkpoint is {last} (graphspec run --resume {run_dir} goes on from it)" if last
             else "no checkpoint was written before it (train.checkpoint_every)")
    row = f" after {skipped_in_a_row} skipped steps in a row" if skipped_in_a_row else ""
    if applied:  # the gradient norm is known only once DeepSpeed has stepped: that update cannot be skipped
        when, hint = ("the run stopped after this step's update (not saved)",
                      "lower train.optimizer.lr (or raise the warm-up); skipping applies to non-finite losses only")
    else:
        when, hint = ("the run stopped before this step's update", "lower train.optimizer.lr (or raise the "
                      f"warm-up), or set train.{setting}.action: skip to skip such steps")
    return Diverged([Issue(("train",), f"step {step}: {what} ({shown}){row}; {when}; {where}", hint,
                           loc=Loc(str(run_dir)))], title="the run diverged")


class HandlerScope:
    """`handler` for `signals` while the scope is open, the previous handlers restored after. Only the main
    thread may install handlers (Python delivers signals there); elsewhere the scope installs nothing."""

    def __init__(self, signals, handler):
        self.signals, self.handler = tuple(signals), handler
        self.previous: dict = {}

    def __enter__(self) -> "HandlerScope":
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                self.previous[sig] = signal.signal(sig, self.handler)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous.clear()


class Signals:
    """The preemption signals, caught in the training loop: the first asks for a graceful stop at the end of
    the step (the loop checks `pending`), a second SIGINT stops now."""

    def __init__(self):
        self.received: int | None = None
        self.scope = HandlerScope(GRACEFUL, self._handle)

    def __enter__(self) -> "Signals":
        self.scope.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.scope.__exit__(*exc)

    def _handle(self, signum: int, frame) -> None:
        if signum == signal.SIGINT and self.received == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl-C: now
        if self.received is None:
            self.received = signum
            if os.environ.get("RANK", "0") == "0":  # every rank got it: one says so
                print(f"\n{signal.Signals(signum).name}: stopping after this step, with a checkpoint "
                      "(Ctrl-C again to stop now)", file=sys.stderr, flush=True)

    @property
    def pending(self) -> bool:
        return self.received is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.received).name if self.received else ""
