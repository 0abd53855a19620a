"""`srun graphspec run ...`: inside a Slurm job step of several tasks, each task is one rank of the run.

Slurm has started the processes already, so none is launched: the task's place in the step becomes the
variables torchrun would have set (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE), and the rendezvous is
the step's first host (MASTER_ADDR) at a port derived from the job (MASTER_PORT); `deepspeed.initialize`
reads them as it reads a launcher's. Either rendezvous variable already in the environment wins.

What is not a step of ranks: an allocation without a step (an `salloc` shell, the batch script itself: no
SLURM_STEP_ID, or Slurm's named steps such as `extern`), a step of one task (a shell on one machine, where
`graphspec run --nproc N` launches its ranks as anywhere else), or any process with GRAPHSPEC_IGNORE_SLURM=1.

Before the ranks meet, every task runs the same command: with a spec file, rank 0 alone compiles and writes
the build folder, then leaves a mark in it naming this attempt of the step (`MARK`); the others wait for the
mark, then read the build (the folder must be on a filesystem the step's nodes share).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping

from graphspec.language.errors import EnvironmentProblem, Issue, Loc, SpecError

from .launch import SELF_STARTED, cores

IGNORE = "GRAPHSPEC_IGNORE_SLURM"
PORT_BASE, PORT_SPAN = 15000, 17000  # unprivileged, and below the ports Linux hands out itself (32768 and up)
MARK = ".slurm-step"  # in the build folder: "JOB.STEP.RESTART written" (or "failed") once rank 0 is done with it
WAIT_S = 600.0  # how long the other tasks wait for rank 0 to compile and write (the tests' spec: about 1 s)
TITLE = "the run cannot start in this Slurm job step"


class StepError(SpecError):
    """The command line or the spec does not fit the step: every task finds the same, rank 0 says it."""

    only_rank0 = True


class StepProblem(EnvironmentProblem):
    """The step's resources do not fit the run (exit code 3): every task finds the same, rank 0 says it."""

    only_rank0 = True


@dataclass(frozen=True)
class Step:
    """This task's place in a Slurm job step of several tasks."""

    job: int
    step: int
    restart: int  # SLURM_RESTART_COUNT: a requeued job runs its steps again under the same ids
    rank: int
    world: int
    local_rank: int
    local_world: int
    nodes: str  # the step's hosts, in Slurm's compressed form

    @property
    def name(self) -> str:
        """The run directory's default name: the same in every task (a timestamp would not be)."""
        return f"slurm-{self.job}-{self.step}"

    @property
    def attempt(self) -> str:
        return f"{self.job}.{self.step}.{self.restart}"

    def cpus(self) -> int:
        """The threads this task's rank may use: the CPUs Slurm gave the task (--cpus-per-task, where this
        process may run on that many); without --cpus-per-task, this process's CPUs shared by its node's tasks
        (Slurm's default is one CPU a task: bound to it, the share of one CPU is still one)."""
        given = os.environ.get("SLURM_CPUS_PER_TASK", "")
        if given.isdigit() and int(given) > 0:
            return min(int(given), cores())  # the batch script's value, which srun may not have applied
        return max(1, cores() // self.local_world)


def current(env: Mapping[str, str] | None = None) -> Step | None:
    """The step this process is a task of, when the step has several tasks; else None (see the module)."""
    env = os.environ if env is None else env
    if env.get(IGNORE, "") not in ("", "0") or not env.get("SLURM_STEP_ID", "").isdigit():
        return None
    read = _Reader(env)
    world = read.number("SLURM_NTASKS")
    if world == 1:
        return None
    step = Step(job=read.number("SLURM_JOB_ID"), step=read.number("SLURM_STEP_ID"),
                restart=int(env.get("SLURM_RESTART_COUNT") or 0), rank=read.number("SLURM_PROCID"), world=world,
                local_rank=read.number("SLURM_LOCALID"), local_world=read.local_world(),
                nodes=read.first("SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST"))
    read.done()
    return step


class _Reader:
    """The step's variables, each problem collected and reported together."""

    def __init__(self, env: Mapping[str, str]):
        self.env, self.issues = env, []

    def _fail(self, message: str) -> None:
        self.issues.append(Issue((), message, f"run `graphspec run` as a task of `srun`, or set {IGNORE}=1 to "
                                 "ignore Slurm"))

    def number(self, name: str) -> int:
        text = self.env.get(name, "")
        if not re.fullmatch(r"[0-9]+", text):
            self._fail(f"SLURM_STEP_ID is set, but {name} is {'missing' if not text else repr(text)}: not a "
                       "task of a Slurm job step as srun starts them")
            return 0
        return int(text)

    def first(self, *names: str) -> str:
        found = next((self.env[n] for n in names if self.env.get(n)), None)
        if found is None:
            self._fail(f"SLURM_STEP_ID is set, but none of {', '.join(names)} is")
        return found or ""

    def local_world(self) -> int:
        """The tasks on this node: the step's count for it (`2(x3),1`: 2, 2, 2 and 1 on four nodes)."""
        name = next((n for n in ("SLURM_STEP_TASKS_PER_NODE", "SLURM_NTASKS_PER_NODE", "SLURM_TASKS_PER_NODE")
                     if self.env.get(n)), None)
        if name is None:
            self._fail("SLURM_STEP_ID is set, but neither SLURM_STEP_TASKS_PER_NODE nor SLURM_NTASKS_PER_NODE is")
            return 1
        try:
            counts = tasks_per_node(self.env[name])
        except ValueError as e:
            self._fail(f"{name}={self.env[name]!r}: {e}")
            return 1
        node = self.env.get("SLURM_NODEID", "")
        return counts[int(node)] if node.isdigit() and int(node) < len(counts) else counts[0]

    def done(self) -> None:
        if self.issues:
            raise EnvironmentProblem(self.issues, title="this Slurm job step is not one graphspec can read")


def tasks_per_node(text: str) -> list[int]:
    """Slurm's per-node counts expanded: `2(x3),1` -> [2, 2, 2, 1]."""
    counts: list[int] = []
    for part in text.split(","):
        m = re.fullmatch(r"([0-9]+)(?:\(x([0-9]+)\))?", part.strip())
        if not m:
            raise ValueError(f"'{part}' is not a count (`N` or `N(xREPEATS)`)")
        counts += [int(m[1])] * int(m[2] or 1)
    return counts


def hostnames(nodelist: str) -> list[str]:
    """Slurm's compressed host list, expanded in order (as `scontrol show hostnames` does):
    `node[01-03,07],gpu-a[1-2]-x` -> node01 node02 node03 node07 gpu-a1-x gpu-a2-x. Ranges keep the width of
    their first number (`[08-10]`: 08 09 10); several brackets in one name expand as a product. A ValueError
    says what is not that syntax."""
    hosts: list[str] = []
    for group in _top_level(nodelist):
        hosts += _expand(group)
    return hosts


def _top_level(text: str) -> list[str]:
    """The comma-separated groups of a host list (commas inside brackets belong to their range)."""
    groups, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "[]":
            depth += 1 if ch == "[" else -1
            if depth not in (0, 1):
                raise ValueError(f"unbalanced brackets in '{text}'")
        elif ch == "," and depth == 0:
            groups.append(text[start:i])
            start = i + 1
    if depth:
        raise ValueError(f"unbalanced brackets in '{text}'")
    groups.append(text[start:])
    if any(not g.strip() for g in groups):
        raise ValueError(f"an empty host name in '{text}'")
    return [g.strip() for g in groups]


def _expand(group: str) -> list[str]:
    m = re.fullmatch(r"([^\[]*)\[([^\]]*)\](.*)", group)
    if not m:
        return [group]
    prefix, ranges, rest = m.groups()
    tails = _expand(rest) if rest else [""]
    return [prefix + n + tail for n in _numbers(ranges) for tail in tails]


def _numbers(ranges: str) -> list[str]:
    out: list[str] = []
    for part in ranges.split(","):
        m = re.fullmatch(r"([0-9]+)(?:-([0-9]+))?", part)
        if not m or (m[2] is not None and int(m[2]) < int(m[1])):
            raise ValueError(f"'[{ranges}]' is not a list of numbers and rising ranges (e.g. [01-03,07])")
        low, high = m[1], m[2] or m[1]
        out += [str(i).zfill(len(low)) for i in range(int(low), int(high) + 1)]
    return out


def first_host(nodelist: str) -> str:
    """The first host of a node list: `scontrol show hostnames` where it is on PATH and answers, else our own
    reading of the syntax."""
    scontrol = shutil.which("scontrol")
    if scontrol is not None:
        try:
            done = subprocess.run([scontrol, "show", "hostnames", nodelist], capture_output=True, text=True,
                                  timeout=30)
        except (OSError, subprocess.SubprocessError):
            done = None
        names = done.stdout.split() if done is not None and done.returncode == 0 else []
        if names:
            return names[0]
    try:
        return hostnames(nodelist)[0]
    except ValueError as e:
        raise EnvironmentProblem([Issue((), f"cannot read the step's node list '{nodelist}': {e}", "put "
                                        "`scontrol` on PATH, or set MASTER_ADDR to the first node's address")],
                                 title=TITLE) from None


def port(job: int, step: int) -> int:
    """The step's rendezvous port: the same in every task, another for each job and step."""
    return PORT_BASE + (job + step) % PORT_SPAN


def become_rank(step: Step) -> None:
    """Set the variables a launched rank has (see the module)."""
    os.environ.pop(SELF_STARTED, None)  # a single-process run earlier in this process: this one is a rank
    os.environ.update(RANK=str(step.rank), WORLD_SIZE=str(step.world), LOCAL_RANK=str(step.local_rank),
                      LOCAL_WORLD_SIZE=str(step.local_world))
    if not os.environ.get("MASTER_ADDR"):
        os.environ["MASTER_ADDR"] = first_host(step.nodes)
    if not os.environ.get("MASTER_PORT"):
        os.environ["MASTER_PORT"] = str(port(step.job, step.step))


def join(nproc: int | None, hostfile: str | None) -> Step | None:
    """In a step of several tasks: this process becomes its task's rank (it launches none); else None."""
    step = current()
    if step is None:
        return None
    become_rank(step)  # first: the errors below are said by rank 0 alone
    flag = "--nproc" if nproc is not None else "--hostfile" if hostfile is not None else None
    if flag:
        raise StepError([Issue((), f"{flag} starts ranks, but this process is already one: task {step.rank} of "
                               f"a Slurm job step of {step.world} tasks, each of them a rank",
                               f"drop {flag} (`srun --ntasks N graphspec run ...` trains on N ranks), or set "
                               f"{IGNORE}=1 to launch the ranks from each task")], title=TITLE)
    return step


def check(step: Step | None, spec, loc: Loc | None, can_set: bool) -> None:
    """The spec's world size is the step's task count, and on GPUs each task sees its node's GPUs.
    `can_set`: TARGET is a spec file (`--set` applies)."""
    if step is None:
        return
    wanted = spec.distributed.world_size
    if wanted != step.world:
        other = (f"or give `--set distributed.world_size={step.world}`" if can_set else "or compile the spec "
                 f"again with `--set distributed.world_size={step.world}`")
        raise StepError([Issue(("distributed", "world_size"), f"the spec asks for {wanted} processes, but this "
                               f"Slurm job step has {step.world} tasks (one rank each)",
                               f"start {wanted} tasks (`srun --ntasks {wanted} ...`), {other}", loc=loc)],
                        title=TITLE)
    shown = os.environ.get("CUDA_VISIBLE_DEVICES")
    visible = [d for d in (shown or "").split(",") if d.strip()]
    if shown is not None and len(visible) < step.local_world and _accelerator(spec) == "cuda":
        raise StepProblem([Issue((), f"this node runs {step.local_world} tasks of the step, and task "
                                 f"{step.rank} sees {len(visible)} GPU(s) (CUDA_VISIBLE_DEVICES={shown}): "
                                 "Slurm gave each task its own GPUs, while a rank trains on its node's GPU number "
                                 "LOCAL_RANK", "let every task see its node's GPUs: --gpus-per-node=N (or "
                                 "--gres=gpu:N) rather than --gpus-per-task, or add --gpu-bind=none")], title=TITLE)


def _accelerator(spec) -> str:
    from graphspec.compiler.ds_config import resolve_accelerator

    return os.environ.get("DS_ACCELERATOR") or resolve_accelerator(spec)


@contextmanager
def writing_build(build_dir: Path, step: Step | None) -> Iterator[None]:
    """Around rank 0's compile and write: then the mark the other tasks wait for (written whole, so a task
    never reads half of it), saying whether the build is there. Outside a step, nothing."""
    if step is None:
        yield
        return
    ok = False
    try:
        yield
        ok = True
    finally:
        Path(build_dir).mkdir(parents=True, exist_ok=True)
        tmp = Path(build_dir) / f"{MARK}.tmp"
        tmp.write_text(f"{step.attempt} {'written' if ok else 'failed'}\n")
        os.replace(tmp, Path(build_dir) / MARK)


def wait_for_build(build_dir: Path, step: Step) -> None:
    """Until rank 0 has marked the build folder for this attempt of the step (a mark left by another job or
    attempt, and a build under it, are not this one's)."""
    deadline = time.monotonic() + WAIT_S
    mark = Path(build_dir) / MARK
    while True:
        try:
            said = mark.read_text().split()
        except OSError:
            said = []
        if said[:1] == [step.attempt]:
            if said[1:] == ["written"]:
                return
            raise StepError([Issue((), "rank 0 could not compile the spec or write the build folder",
                                   "its message says why", loc=Loc(str(build_dir)))], title=TITLE)
        if time.monotonic() > deadline:
            raise EnvironmentProblem([Issue((), f"rank 0 did not write the build folder within {WAIT_S:g} s",
                                            "see rank 0's output; the build folder must be on a filesystem every "
                                            "node of the step shares (give --build-dir on one)",
                                            loc=Loc(str(build_dir)))], title=TITLE)
        time.sleep(0.2)
