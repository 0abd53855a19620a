"""`graphspec run`: train a compiled model on its data, validate, report, checkpoint."""

from __future__ import annotations

import json
import math
import os
import resource
import shutil
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from graphspec.compiler import FreezePlan, build_weights
from graphspec.compiler.folders import Build, check_parameters, read_build
from graphspec.language.errors import EnvironmentProblem, Issue, Loc
from graphspec.language.schema.training import Exploding

from . import devices, ranks
from .checkpoint import save_checkpoint, trainable_weights
from .engine import Trainer, make_trainer
from .report import Reporter, Silent, format_run_summary, predicted_beside
from .guard import LossGuard, Preempted, Signals, diverged
from .batches import Batches
from .malloc import keep_freed_memory
from .resume import ResumeError, checkpoints, frozen_digests, frozen_record, restore
from .resume import save as save_state
from .tasks import Task, TaskContext, make_task
from .text import load_tokenizer, text_node


def prepare_run_dir(run_dir: Path) -> Path:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write-test-{ranks.rank()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise EnvironmentProblem([Issue((), f"cannot write the run directory: {e.strerror or e}",
                                    "choose another with --run-dir, or fix its permissions", loc=Loc(str(run_dir)))],
                             title="the run cannot start") from None
    return run_dir


@dataclass
class Session:
    """Everything a run needs, built once from the build directory."""

    task: Task
    plan: FreezePlan
    trainer: Trainer
    reads: dict = field(default_factory=lambda: {"decoded": 0, "replaced": 0, "decodes_saved": 0})  # this rank's
    started: float = field(default_factory=time.perf_counter)  # when run() began: for the time to the first step
    first_step_s: float | None = None
    process_first_step_s: float | None = None  # the same from the process's start: imports and compile included
    first_step_at: float | None = None  # when the first step ended (epoch seconds): a study times its stages by it
    images: dict | None = None  # two-pass recipe: whether a batch passes each image once, and why
    exploding: LossGuard = field(default_factory=lambda: LossGuard.of(Exploding.model_validate({})))  # its judge
    frozen_sha256: dict = field(default_factory=dict)  # node -> hash of its frozen weights, as built


def prepare(build: Build, outside: bool = True) -> Session:
    """`outside=False` keeps frozen towers inside the engine (the benchmark's grads-off-only baseline)."""
    spec = build.spec
    accelerator = os.environ.get("DS_ACCELERATOR") or build.accelerator
    devices.configure_kernels(spec.train.tf32, spec.train.deterministic, accelerator)
    if accelerator == "cpu":
        keep_freed_memory()  # before the model and the engine allocate anything; on a GPU node it would only
        # hold every rank's freed host memory (the steps' buffers live on the device there)
    model, plan = build_weights(spec, build.plan), build.plan
    check_parameters(build, model)
    frozen_sha = frozen_digests(model, set(plan.frozen))  # as built, before the engine casts or shards them
    text = spec.roles().text
    vocab = model.get_submodule(text_node(spec, text)[0]).vocab_size
    trainer = make_trainer(spec, model, plan, build.groups, build.ds_config, build.placed if outside else None)
    once, why = build.shared_images
    task = make_task(spec, model, lambda data: load_tokenizer(spec, text, vocab, build.dir, data.texts),
                     context=TaskContext(caches=trainer.towers.image_caches, share_images=once))
    return Session(task, plan, trainer, images={"once": once, "why": why} if task.two_pass else None,
                   frozen_sha256=frozen_sha, exploding=LossGuard.of(spec.train.exploding))


def train_step(s: Session, spec, step: int, batches: Batches) -> tuple[dict[str, float], bool, bool]:
    """One optimizer step over `accumulation` micro batches: (the losses averaged over them and the ranks,
    whether they were finite, whether DeepSpeed itself skipped the update: see `deepspeed_skipped`). A micro
    batch whose loss is not finite on any rank ends the step before its backward, on every rank: the weights
    are not touched. Each micro batch is moved to the device once (`Trainer.move`), and read back to the host
    once: its losses, in one copy, which also tells whether they are finite."""
    micro, accum = spec.batch_plan()
    shown: dict[str, float] = {}
    skipped_before = s.trainer.engine.skipped_steps
    for m in range(accum):
        batch = batches.next((step - 1) * accum + m)
        for k, v in batch.pop("_data", {}).items():
            s.reads[k] = s.reads.get(k, 0) + v
        if "_stream" in batch:  # where this rank's stream is after this batch: what a checkpoint records
            s.reads["position"] = batch.pop("_stream")
        parts = step_losses(s, batch)
        values = dict(zip(parts, torch.stack([v.detach().float() for v in parts.values()]).tolist()))
        if ranks.any_true(not all(math.isfinite(v) for v in values.values())):
            return values, False, False
        why = s.exploding.judge(values["loss"])
        if ranks.any_true(why is not None):  # every rank acts alike; the one that saw it says what it saw
            s.exploding.why = why or "a loss exploded on another rank"
            if spec.train.exploding.action != "warn":
                return values, False, False
        s.trainer.engine.backward(parts["loss"])
        s.trainer.engine.step()
        s.exploding.accept(values["loss"])
        for k, v in values.items():
            shown[k] = shown.get(k, 0.0) + v / accum
    dropped = deepspeed_skipped(spec, s.trainer.engine.skipped_steps > skipped_before)
    return ranks.mean(shown), True, dropped


def step_losses(s: Session, batch: dict) -> dict[str, torch.Tensor]:
    """A host micro batch's losses, on the training device: the batch moved once, and both the forward and
    the losses read the moved one (a target left on the host would meet the device's outputs)."""
    batch = s.trainer.move(batch)
    return s.task.losses(s.trainer.forward(batch), batch)


def deepspeed_skipped(spec, skipped: bool) -> bool:
    """Whether DeepSpeed skipped this step's update because a gradient was not finite. It checks the gradients
    itself in bf16 (`bf16.check_grad_overflow`) and, with a gradient norm, in fp32; in fp16 a skip is its loss
    scaler lowering the scale, which is not divergence."""
    return ranks.any_true(skipped and spec.train.precision != "fp16")


def grad_norm_is_finite(trainer: Trainer) -> bool:
    """The step's global gradient norm, where DeepSpeed computed one anyway (for clipping), is a number."""
    norm = trainer.engine.get_global_grad_norm()
    return norm is None or bool(torch.isfinite(torch.as_tensor(norm, dtype=torch.float64)))


def keep_build(build: Build, run_dir: Path) -> None:
    """A copy of the build (and its trained vocabulary) in the run directory: `--resume` needs only the run."""
    source, target = build.dir.resolve(), (run_dir / "build").resolve()
    if source != target and source not in target.parents:  # a run inside its build dir holds the build already
        shutil.copytree(build.dir, run_dir / "build", dirs_exist_ok=True)


def resume_build(run_dir: str | Path) -> Build:
    path = Path(run_dir)
    for candidate in (path / "build", path):
        if (candidate / "manifest.json").is_file():
            return read_build(candidate)
    raise ResumeError([Issue((), "not a run directory (no build/ inside)", "give the --run-dir of a run "
                             "started by this graphspec", loc=Loc(str(path)))], title="cannot resume this run")


def run(build: Build, run_dir: Path, show_bar: bool | None = None, resume: bool = False,
        stop_at: int | None = None) -> dict:
    """Train; with `resume`, continue from the run directory's newest checkpoint on the same trajectory.
    With `stop_at` (a step before the last), stop after that step as if paused there: checkpoint, validate,
    write `stopped.json` (the step, its validation, times and memory) and return it; the learning-rate
    schedule stays the full run's, so `resume` continues on the uninterrupted trajectory.

    Under a launcher this is one rank of several: each trains on its slice of every batch, rank 0 reports.
    SIGTERM, SIGUSR1 or Ctrl-C finish the step, write a checkpoint and raise `Preempted` (exit code 75); a
    loss that is not finite stops the run (`Diverged`, exit code 4) or, as the spec asks, skips the step.
    """
    started = time.perf_counter()
    spec = build.spec
    main = ranks.is_main()
    run_dir = prepare_run_dir(run_dir)
    s = prepare(build)
    s.started = started
    if main:
        keep_build(build, run_dir)
    micro, accum = spec.batch_plan()
    torch.manual_seed(spec.train.seed + ranks.rank())  # dropout: the same run twice gives the same losses
    frozen = frozen_record(spec, s.trainer.engine.module, s.trainer.cut.towers, set(s.plan.frozen))
    first, reading = restore(run_dir, s.trainer, s.task, frozen) if resume else (0, {})
    first += 1
    if stop_at is not None and stop_at < first:
        raise ResumeError([Issue((), f"--stop-at {stop_at}: the run is already at step {first - 1}",
                                 f"give a step after {first - 1}", loc=Loc(str(run_dir)))],
                          title="the run cannot continue")
    if stop_at is not None and stop_at >= spec.train.steps:
        stop_at = None  # the whole run: nothing to stop early
    if reading.get("position"):  # a stream goes on from where it was, neither re-reading nor skipping
        s.task.resume_reading((first - 1) * accum * micro, reading["position"])
        s.reads["position"] = reading["position"]
    if resume and main:
        trim_metrics(run_dir, first - 1)
    reporter = Reporter(run_dir, spec.train.steps, spec.train.batch_size, spec.train.log_every,
                        start_step=first - 1, show_bar=show_bar) if main else Silent()
    world = spec.distributed.world_size
    reporter.line(f"{'resuming at step ' + str(first) + ' of' if resume else 'training'} {spec.name}: "
                  f"{s.task.describe()}, {spec.train.steps} steps of {spec.train.batch_size} "
                  f"({micro} x {accum}{f' x {world} ranks' if world > 1 else ''}), run dir {run_dir}")
    for tower, c in s.trainer.towers.cache_report().items():
        reporter.line(f"outputs of {tower} cached in {c['dir']} ({c['entries']:,} entries, {c['size_mb']:,.1f} MB)")
    batches = Batches(s.task, micro, (first - 1) * accum, spec.train.steps * accum, spec.data.workers,
                      spec.data.prefetch, accelerator=s.trainer.engine.device.type != "cpu")
    if batches.workers:
        reporter.line(f"{batches.workers} worker process{'es' if batches.workers > 1 else ''} per rank read and "
                      f"decode batches ahead ({spec.data.prefetch} each)")
    try:
        with Signals() as signals:
            val, step_times, skipped = _loop(s, spec, run_dir, first, frozen, reporter, signals, batches, stop_at)
    finally:
        batches.close()
        reporter.close()
    if stop_at is not None:
        return _stopped(run_dir, spec, stop_at, val, reporter.elapsed, step_times)
    summary = _finish(build, run_dir, s, val, reporter.elapsed, step_times, skipped)
    ranks.finish()
    return summary


def _loop(s: Session, spec, run_dir: Path, first: int, frozen: dict, reporter, signals: Signals, batches: Batches,
          stop_at: int | None = None):
    """The training steps from `first` to the last (or `stop_at`): (last validation, step times, steps skipped
    for a non-finite loss)."""
    every, policy = spec.train.checkpoint_every, spec.train.nonfinite
    val: dict = {}
    step_times: list[float] = []
    skipped = in_a_row = 0
    for step in range(first, (stop_at or spec.train.steps) + 1):
        start = time.perf_counter()
        s.exploding.why = None
        losses, finite, dropped = train_step(s, spec, step, batches)  # dropped: DeepSpeed left the weights
        exploded = s.exploding.why
        if exploded and finite:  # train.exploding.action: warn
            reporter.line(f"step {step}: {exploded}; trained on (train.exploding.action: warn)")
        guard = spec.train.exploding if exploded and not finite else policy
        if finite and not dropped and not ranks.any_true(not grad_norm_is_finite(s.trainer)):
            in_a_row = 0
            step_times.append(time.perf_counter() - start)
            if s.first_step_s is None:
                s.first_step_s = round(time.perf_counter() - s.started, 2)
                s.first_step_at = time.time()
                s.process_first_step_s = round(s.first_step_at - _process_start(), 2)
            reporter.train_step(step, losses, s.trainer.scheduler.get_last_lr()[0], batches.take_waited())
        elif (not finite or dropped) and guard.action == "skip" and in_a_row < policy.max_in_a_row:
            skipped, in_a_row = skipped + 1, in_a_row + 1
            what = (exploded if exploded and not finite else "the loss is not finite" if not finite
                    else "a gradient is not finite")
            reporter.line(f"step {step}: {what}; step skipped ({in_a_row} in a row)")
        else:
            last = (checkpoints(run_dir) or [None])[-1]
            what = (exploded if exploded and not finite else "the loss is not finite" if not finite
                    else "a gradient is not finite (DeepSpeed skipped the update)" if dropped
                    else "the gradient norm is not finite")
            ranks.finish()  # every rank decided alike: they leave the group together
            raise diverged(step, what, losses, last, run_dir, in_a_row, applied=finite and not dropped,
                           setting="exploding" if exploded and not finite else "nonfinite")
        validated = spec.data.val and ((spec.train.val_every and step % spec.train.val_every == 0)
                                       or step == spec.train.steps)
        if validated:
            val = validation(s, reporter, step)
        if step == stop_at:  # checkpoint first: the state the uninterrupted run has after this step
            reading = {"position": s.reads["position"]} if "position" in s.reads else {}
            if save_state(run_dir, step, s.trainer, s.task, frozen, spec.train.keep_checkpoints, reading,
                          s.frozen_sha256) is None:
                raise EnvironmentProblem([Issue((), f"--stop-at {step}: the checkpoint could not be written (see "
                                                "the warning above)", "free disk space, then run again",
                                                loc=Loc(str(run_dir)))], title="the run stopped")
            if spec.data.val and not validated:
                val = validation(s, reporter, step)
            break
        stop = step < spec.train.steps and ranks.any_true(signals.pending)  # at the last step: just finish
        if stop or (every and step % every == 0 and step < spec.train.steps):
            reading = {"position": s.reads["position"]} if "position" in s.reads else {}
            saved = save_state(run_dir, step, s.trainer, s.task, frozen, spec.train.keep_checkpoints, reading,
                               s.frozen_sha256)
            if stop:
                ranks.finish()
                if saved is None:
                    raise EnvironmentProblem([Issue((), f"stopped on {signals.name or 'a signal'} after step {step}, "
                                                    "but its checkpoint could not be written (see the warning above)",
                                                    "free disk space, then resume from the last checkpoint",
                                                    loc=Loc(str(run_dir)))], title="the run stopped")
                raise Preempted(signals.name or "a signal (on another rank)", step, saved, run_dir)
    return val, step_times, skipped


def _stopped(run_dir: Path, spec, step: int, val: dict, wall: float, step_times: list[float]) -> dict:
    """`--stop-at`: what the run reached (rank 0 writes `stopped.json`; every rank leaves the group)."""
    peak = ranks.maximum(_peak_rss_mb())
    ranks.finish()
    record = {"run_dir": str(run_dir), "spec": spec.name, "stopped_at": step, "steps": spec.train.steps,
              "val": val, "wall_time_s": round(wall, 1), "peak_rss_mb": peak,
              "step_time_s": round(statistics.median(step_times), 4) if step_times else None,
              "checkpoint": str(checkpoints(run_dir)[-1]) if checkpoints(run_dir) else None}
    if ranks.is_main():
        (run_dir / "stopped.json").write_text(json.dumps(record, indent=2) + "\n")
        print(f"stopped after step {step} of {spec.train.steps}, as asked (--stop-at): checkpoint "
              f"{record['checkpoint']}\n  continue with: graphspec run --resume {run_dir}", flush=True)
    return record


def validation(s: Session, reporter: Reporter | Silent, step: int) -> dict:
    """Every rank runs the forwards (ZeRO-3 gathers weights in them); the split is not divided among ranks."""
    s.trainer.eval()
    val = s.task.evaluate(s.trainer.host_forward)  # metrics on the host, where the task made the targets
    s.trainer.train()
    reporter.log({"step": step, "split": "val", **val})
    reporter.line(f"step {step} validation: " + " ".join(f"{k} {v:.4f}" for k, v in val.items()))
    return val


def trim_metrics(run_dir: Path, step: int) -> None:
    """Drop what was logged after the checkpoint a run resumes from: those steps run again."""
    path = run_dir / "metrics.jsonl"
    if path.is_file():
        lines = [line for line in path.read_text().splitlines() if line.strip()]
        path.write_text("".join(line + "\n" for line in lines if json.loads(line)["step"] <= step))


def _numel(p: torch.nn.Parameter) -> int:
    """A parameter's size, also where ZeRO-3 keeps only a shard of it here."""
    return getattr(p, "ds_numel", p.numel())


def _process_start() -> float:
    """When this process started (epoch seconds): a study stage's or a command's start."""
    import psutil

    return psutil.Process().create_time()


def _peak_rss_mb() -> float:
    """This process's peak resident memory so far. On Linux the high-water mark of its own memory (VmHWM):
    getrusage's ru_maxrss survives exec, so a run started from a large process (a study, a calibration) would
    report its parent's size; elsewhere ru_maxrss (macOS reports bytes, others KiB)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 2**10, 1)
    except (OSError, ValueError, IndexError):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (2**20 if sys.platform == "darwin" else 2**10), 1)


def _finish(build: Build, run_dir: Path, s: Session, val: dict, wall: float, step_times: list[float],
            skipped: int = 0) -> dict:
    """The final checkpoint and summary (written by rank 0); a resumed run's time and speed are those of
    its last part, its peak memory the largest of any rank's."""
    spec, trainer, plan = build.spec, s.trainer, s.plan
    weights = trainable_weights(trainer.engine.module, set(plan.frozen))
    peak = ranks.maximum(_peak_rss_mb())
    ckpt = run_dir / "checkpoint"
    failed: EnvironmentProblem | None = None
    if ranks.is_main():
        try:
            save_checkpoint(ckpt, weights, spec.model_dump(mode="json", exclude={"extends"}), plan,
                            {"step": spec.train.steps, "val": val, "frozen_sha256": s.frozen_sha256,
                             **s.task.vocabulary()}, s.task.tokenizer)
        except EnvironmentProblem as e:
            failed = e
    if ranks.any_true(failed is not None):  # every rank stops, none waits in a collective below
        ranks.finish()
        raise failed or EnvironmentProblem([Issue((), "rank 0 could not write the final checkpoint", "see rank 0's "
                                                  "message", loc=Loc(str(ckpt)))], title="the run stopped")
    total = sum(_numel(p) for p in trainer.engine.module.parameters()) + sum(
        p.numel() for p in trainer.cut.towers.parameters())
    frozen = sum(_numel(p) for n, p in trainer.engine.module.named_parameters() if n in plan.frozen) + sum(
        p.numel() for p in trainer.cut.towers.parameters())
    decoded = ranks.gather_counts(s.reads["decoded"])
    replaced = round(ranks.total({"replaced": s.reads["replaced"]})["replaced"])
    saved = round(ranks.total({"saved": s.reads["decodes_saved"]})["saved"])
    stream = ranks.total({k: s.reads.get(k, 0) for k in ("stream_read", "stream_skipped")})
    caches = trainer.towers.cache_report()
    for c in caches.values():  # lookups of all ranks
        c.update({k: round(v) for k, v in ranks.total({k: c[k] for k in ("hits", "misses", "corrupt")}).items()})
    if not ranks.is_main():
        return {}
    summary = {"run_dir": str(run_dir), "spec": spec.name, "steps": spec.train.steps, "wall_time_s": round(wall, 1),
               "samples_per_s": round(len(step_times) * spec.train.batch_size / max(wall, 1e-9), 2),
               "step_time_s": round(statistics.median(step_times), 4) if step_times else None,
               "peak_rss_mb": peak, "ranks": spec.distributed.world_size, "first_step_s": s.first_step_s,
               "process_first_step_s": s.process_first_step_s, "first_step_at": s.first_step_at,
               "params": {"trainable": total - frozen, "frozen": frozen}, "val": val, "checkpoint": str(ckpt),
               "data": {**s.task.data_stats, "train_reads": {
                   "images_decoded": sum(decoded), "images_decoded_per_rank": decoded, "bad_images_replaced": replaced,
                   "decodes_saved": saved,
                   **({k: round(v) for k, v in stream.items()} if stream["stream_read"] else {})}},
               **({"frozen_cache": caches} if caches else {}),
               **({"two_pass_images": s.images} if s.images else {}),
               **({"nonfinite_skipped": skipped} if spec.train.nonfinite.action == "skip" else {}),
               **({"steps_skipped": skipped} if spec.train.exploding.action == "skip" else {})}
    predicted = predicted_beside(build.dir, spec, summary)
    if predicted:
        summary["predicted"] = predicted
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(format_run_summary(summary), flush=True)
    return summary
