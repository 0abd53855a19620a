"""Where a study's stages run: `inline` (one after another, forked from this process's stage server: the
default), `local` (submitit's local executor: each stage a job of its own, several at once) or `slurm`
(submitit's Slurm executor: each stage an sbatch job with the resources its spec asks for).

A job runs `StageJob`: `graphspec run ...` as a child process, its output appended to the stage's log. The
child is started in a session of its own and gets SIGUSR1 once when the job is told to stop (submitit's
SIGUSR2 ahead of a time limit or a preemption, Slurm's SIGTERM, SIGUSR1): it finishes its step, writes a
checkpoint and exits 75. A job whose run did not finish fails (so Slurm's `afterok` holds the stages that
depend on it) and the study's controller resubmits it with `--resume`. Every attempt is recorded in the
stage's `attempts.jsonl` by the job itself (host, pid, start, end, exit code): what a stage spent is read
from there, whatever ran it.

Each executor answers `submit`, `state` ("pending", "running" or "ended") and `cancel` for job ids, which the
controller records in the study folder, so a new invocation re-attaches to jobs still running.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from graphspec.language.errors import GraphspecError, Issue
from graphspec.runtime.launch import SELF_STARTED

STOP_SIGNALS = (signal.SIGUSR2, signal.SIGUSR1, signal.SIGTERM)  # what a scheduler sends before it kills
IGNORE_SLURM = "GRAPHSPEC_IGNORE_SLURM"


class StageStopped(Exception):
    """The run in a job ended without finishing (exit code: 75 after a checkpoint; else a failure)."""


@dataclass
class StageJob:
    """What one job runs (pickled by submitit): `graphspec ARGV`, its output appended to `log`, the attempt
    recorded in `record`."""

    argv: list[str]
    log: str
    record: str
    env: dict[str, str] = field(default_factory=dict)

    def __call__(self) -> int:
        started = time.time()
        with open(self.log, "ab") as out:
            child = subprocess.Popen([sys.executable, "-m", "graphspec.cli", *self.argv], stdout=out,
                                     stderr=subprocess.STDOUT, env={**os.environ, **self.env},
                                     start_new_session=True)
        told: list[int] = []

        def stop(signum: int, frame: Any) -> None:
            if not told:  # once: the run stops gracefully on the first signal
                told.append(signum)
                child.send_signal(signal.SIGUSR1)

        previous = {s: signal.signal(s, stop) for s in STOP_SIGNALS}
        try:
            code = child.wait()
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
        if int(os.environ.get("SLURM_PROCID", "0")) == 0:  # one record per attempt, not per task
            record_attempt(self.record, started, code, signal.Signals(told[0]).name if told else None)
        if code != 0:
            raise StageStopped(f"graphspec {' '.join(self.argv)} exited {code}")
        return code


def _job_id() -> str:
    return os.environ.get("SLURM_JOB_ID") or os.environ.get("SUBMITIT_LOCAL_JOB_ID") or str(os.getpid())


@dataclass(frozen=True)
class Resources:
    """What a stage's job asks the scheduler for (from its spec's distribution block and its prediction)."""

    nodes: int
    tasks_per_node: int
    gpus_per_node: int
    cpus_per_task: int
    mem_gb: int
    minutes: int


TIME_MARGIN = 1.5  # a job's time limit over its predicted hours (the high end), plus 10 minutes


def resources_of(spec, slurm, cost, steps: int, on_slurm: bool, left_h: float | None) -> Resources:
    """What a stage's job of `steps` steps asks for: a task per rank (`slurm.gpus_per_node` ranks a node on a
    GPU cluster), CPUs for the rank and its data workers, memory from the prediction (on a GPU node,
    `slurm.mem_gb_per_gpu` per rank), and a time limit from the predicted hours' high end, never past the
    budget's hours left (`left_h`)."""
    world = spec.distributed.world_size
    gpu = spec.distributed.accelerator != "cpu" and on_slurm
    per_node = min(world, slurm.gpus_per_node) if gpu else world
    nodes = math.ceil(world / per_node)
    cpus = slurm.cpus_per_task or (spec.data.workers or 0) + 2
    if cost is not None:
        hours = (cost.start_h + steps * cost.step_s[2] * cost.accelerators / 3600 + cost.eval_h * 2)
        minutes = math.ceil(hours / cost.accelerators * 60 * TIME_MARGIN) + 10
        mem = slurm.mem_gb_per_gpu * per_node if gpu else math.ceil(cost.peak_memory_mb[2] * per_node / 1024 * 1.2)
    else:
        minutes, mem = 24 * 60, slurm.mem_gb_per_gpu * per_node
    if left_h is not None and cost is not None:  # the budget's hard cap, as a time limit
        minutes = max(5, min(minutes, math.floor(left_h / cost.accelerators * 60)))
    return Resources(nodes, per_node, per_node if gpu else 0, cpus, max(1, mem), minutes)


def default_parallel(kind: str, world: int) -> int:
    """Stages at once: inline one; Slurm all (its scheduler queues them); local, the GPUs here over a stage's
    ranks, and 1 on a CPU, where a stage takes every core it is given (two trainings at once slow both)."""
    if kind == "inline":
        return 1
    if kind == "slurm":
        return 10**6
    try:
        import torch

        gpus = torch.cuda.device_count()
    except ImportError:
        gpus = 0
    return max(1, gpus // world) if gpus else 1


class Executor(ABC):
    kind = ""

    @abstractmethod
    def submit(self, job: StageJob, name: str, resources: Resources, after: str | None = None) -> str:
        """Start (or queue) the job; its id. `after`: the id of a job that must succeed first."""

    @abstractmethod
    def state(self, job_id: str) -> str:
        """"pending", "running" or "ended"."""

    @abstractmethod
    def cancel(self, job_id: str) -> None:
        """Stop the job now (what it has not checkpointed is lost)."""


class Inline(Executor):
    """One stage at a time, in a process forked from this one's stage server: `submit` returns when the stage
    has ended. Its time limit is held here: at the limit the stage gets SIGUSR1 (checkpoint, exit 75)."""

    kind = "inline"

    def submit(self, job: StageJob, name: str, resources: Resources, after: str | None = None) -> str:
        from .stages import run_stage

        started = time.time()
        code, told = run_stage(job.argv, job.log, _env(job), deadline_s=resources.minutes * 60)
        record_attempt(job.record, started, code, "SIGUSR1 (time limit)" if told else None)
        return f"inline-{os.getpid()}-{time.time_ns()}"

    def state(self, job_id: str) -> str:
        return "ended"

    def cancel(self, job_id: str) -> None:
        return None


def record_attempt(record: str, started: float, code: int, signame: str | None) -> None:
    """One line per attempt in the stage's attempts.jsonl: what the study charges it."""
    entry = {"host": socket.gethostname(), "pid": os.getpid(), "job": _job_id(), "started": started,
             "ended": time.time(), "exit": code, "signal": signame}
    with open(record, "a") as f:
        f.write(json.dumps(entry) + "\n")


DIST_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", SELF_STARTED)


def fresh_env() -> dict[str, str]:
    """This process's environment without the rendezvous a run in this process may have set up: a stage is a
    run of its own, and would otherwise try to bind the same MASTER_PORT."""
    return {k: v for k, v in os.environ.items() if k not in DIST_VARS}


def _env(job: StageJob) -> dict[str, str]:
    """A stage's environment here: the study's, no rendezvous, and no Slurm step (a stage on this machine is
    not one of the tasks of a step the study may run in)."""
    return {**fresh_env(), IGNORE_SLURM: "1", **job.env}


class Local(Executor):
    """submitit's local executor: each job a process tree of its own on this machine, which outlives this
    controller; its job id is the pid of submitit's job process."""

    kind = "local"

    def __init__(self, folder: Path):
        import submitit

        self.executor = submitit.LocalExecutor(folder=str(folder))
        self.jobs: dict[str, Any] = {}

    def submit(self, job: StageJob, name: str, resources: Resources, after: str | None = None) -> str:
        self.executor.update_parameters(timeout_min=resources.minutes, signal_delay_s=60, tasks_per_node=1,
                                        gpus_per_node=resources.gpus_per_node)
        env = _env(job)
        saved = dict(os.environ)
        os.environ.clear()
        os.environ.update({**env, IGNORE_SLURM: "1"})  # the job's environment is this process's at submission
        try:
            submitted = self.executor.submit(job)
        finally:
            os.environ.clear()
            os.environ.update(saved)
        self.jobs[submitted.job_id] = submitted
        return str(submitted.job_id)

    def state(self, job_id: str) -> str:
        submitted = self.jobs.get(job_id)
        if submitted is not None:
            return "running" if submitted.state == "RUNNING" else "ended"
        return "running" if _local_job_alive(int(job_id)) else "ended"  # one submitted by an earlier controller

    def cancel(self, job_id: str) -> None:
        if self.state(job_id) == "running":
            os.kill(int(job_id), signal.SIGINT)  # as submitit's LocalJob.cancel


def _local_job_alive(pid: int) -> bool:
    import psutil

    try:
        return "submitit.local._local" in " ".join(psutil.Process(pid).cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False


SLURM_DONE = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "PREEMPTED", "NODE_FAIL", "OUT_OF_MEMORY",
              "BOOT_FAIL", "DEADLINE", "REVOKED"}


class Slurm(Executor):
    """submitit's Slurm executor: one sbatch job per stage part; `after` becomes `--dependency=afterok:ID`."""

    kind = "slurm"

    def __init__(self, folder: Path, partition: str | None = None, account: str | None = None,
                 options: dict[str, Any] | None = None):
        self.folder = folder
        self.partition, self.account, self.options = partition, account, dict(options or {})

    def submit(self, job: StageJob, name: str, resources: Resources, after: str | None = None) -> str:
        extra = dict(self.options)
        if after:
            extra["dependency"] = f"afterok:{after}"
            extra.setdefault("kill-on-invalid-dep", "yes")
        params: dict[str, Any] = {
            "job_name": name, "nodes": resources.nodes, "ntasks_per_node": resources.tasks_per_node,
            "cpus_per_task": resources.cpus_per_task, "mem": f"{resources.mem_gb}GB", "time": resources.minutes,
            "signal_delay_s": 120, "additional_parameters": extra}
        if resources.gpus_per_node:
            params["gpus_per_node"] = resources.gpus_per_node
        if self.partition:
            params["partition"] = self.partition
        if self.account:
            params["account"] = self.account
        import submitit

        executor = submitit.SlurmExecutor(folder=str(self.folder), max_num_timeout=0)
        executor.update_parameters(**params)
        saved = dict(os.environ)
        os.environ.update(job.env)
        try:
            return str(executor.submit(job).job_id)
        finally:
            os.environ.clear()
            os.environ.update(saved)

    def state(self, job_id: str) -> str:
        out = subprocess.run(["sacct", "-j", job_id, "-X", "-n", "-P", "-o", "State"], capture_output=True,
                             text=True)
        words = out.stdout.split()
        if out.returncode != 0 or not words:
            return "pending"  # not in the accounting yet
        state = words[0].split()[0].rstrip("+")
        return "ended" if state in SLURM_DONE else "running" if state == "RUNNING" else "pending"

    def cancel(self, job_id: str) -> None:
        subprocess.run(["scancel", job_id], capture_output=True)


def make_executor(kind: str, folder: Path, partition: str | None = None, account: str | None = None,
                  options: dict[str, Any] | None = None) -> Executor:
    if kind == "inline":
        return Inline()
    try:
        import submitit  # noqa: F401
    except ImportError:
        raise GraphspecError([Issue((), f"--executor {kind} needs submitit, which is not installed",
                                    "pip install submitit (it is in graphspec's dependencies)")]) from None
    if kind == "local":
        return Local(folder)
    if kind == "slurm":
        return Slurm(folder, partition, account, options)
    raise GraphspecError([Issue((), f"unknown executor '{kind}'", "give inline, local or slurm")])


__all__ = ["Executor", "Inline", "Local", "Resources", "Slurm", "StageJob", "StageStopped", "make_executor",
           "default_parallel", "resources_of"]
