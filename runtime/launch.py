"""Starting the ranks of a run: torchrun on this machine, DeepSpeed's launcher on the machines of a hostfile
(under `srun`, Slurm starts them: graphspec.runtime.slurm).

Each rank gets an even share of the machine's cores (OMP_NUM_THREADS = cores / ranks
per machine, unless the user set it): DeepSpeed's launcher sets no thread count
and torchrun sets one, so either alone oversubscribes or starves a CPU machine.
A rank that fails ends the run with its own message and exit code; the launcher's
report of the failure is reduced to one line.

Preemption: torchrun runs its ranks in sessions of their own, so a signal sent to
the user's `graphspec run` (Slurm's SIGTERM or SIGUSR1, Ctrl-C) would not reach
them, and torchrun's own handling kills them after 30 s. Here torchrun is told
to leave SIGTERM, SIGINT and SIGUSR1 alone (`--signals_to_handle`), and
this process forwards them to the ranks, which finish their step, write a
checkpoint together and exit with the resumable code 75, which the launch returns.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import socket
import sys
from pathlib import Path

from graphspec.language.errors import EnvironmentProblem, Issue, Loc, SpecError

from .guard import HandlerScope


SELF_STARTED = "GRAPHSPEC_SINGLE_PROCESS"  # set where a single-process run filled in the rank variables itself


def launched() -> bool:
    """Inside a rank that a launcher started (both torchrun and DeepSpeed's set LOCAL_RANK)."""
    return "LOCAL_RANK" in os.environ and SELF_STARTED not in os.environ


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def threads_per_rank(local_ranks: int) -> int:
    return max(1, cores() // max(1, local_ranks))


def read_hostfile(path: Path) -> list[tuple[str, int]]:
    """[(host, slots)] from DeepSpeed's hostfile format: a `host slots=N` line per machine, # comments."""
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        raise EnvironmentProblem([Issue((), f"cannot read the hostfile: {e.strerror or e}",
                                        "give a file with one `HOST slots=N` line per machine", loc=Loc(str(path)))],
                                 title="the run cannot start") from None
    hosts: list[tuple[str, int]] = []
    for number, line in enumerate(lines, 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        parts = text.split()
        slots = parts[1][len("slots="):] if len(parts) == 2 and parts[1].startswith("slots=") else ""
        problem = None
        if not slots.isdigit() or int(slots) < 1:
            problem = f"'{text}' is not `HOST slots=N` with N >= 1"
        elif parts[0] in (h for h, _ in hosts):
            problem = f"host '{parts[0]}' is listed twice"
        if problem:
            raise SpecError([Issue((), problem, "write one `HOST slots=N` line per machine, e.g. `worker-1 slots=2`",
                                   loc=Loc(str(path), number))], title="the hostfile is not valid")
        hosts.append((parts[0], int(slots)))
    if not hosts:
        raise SpecError([Issue((), "the hostfile lists no machine", "add a `HOST slots=N` line per machine",
                               loc=Loc(str(path)))], title="the hostfile is not valid")
    return hosts


def torchrun_args(world: int, command: list[str]) -> list[str]:
    # SIGTERM, SIGINT and SIGUSR1 are left to `Forward`: torchrun would kill the ranks 30 s after the first
    return ["--standalone", "--nnodes", "1", "--nproc_per_node", str(world), "--signals_to_handle",
            "SIGHUP,SIGQUIT", "--module", *command]


def launch(world: int, command: list[str], hostfile: Path | None = None, accelerator: str = "cpu") -> int:
    """Start `python -m COMMAND...` as `world` ranks (the caller names its module: the command line passes
    itself, `graphspec.cli run ...`); the exit code of the first that failed, else 0."""
    local = world if hostfile is None else _local_slots(read_hostfile(hostfile))
    if accelerator == "cuda" and local:
        check_gpus(local, hostfile)
    saved = dict(os.environ)
    os.environ.pop(SELF_STARTED, None)  # a single-process run in this process: not the ranks' business
    try:
        return _deepspeed(hostfile, command) if hostfile is not None else _torchrun(world, command)
    finally:  # the thread budget was the ranks', not this process's later children's
        os.environ.clear()
        os.environ.update(saved)


def _local_slots(hosts: list[tuple[str, int]]) -> int:
    """The ranks a hostfile puts on this machine (0 when it names other machines only)."""
    here = ("localhost", "127.0.0.1", socket.gethostname())
    return sum(slots for host, slots in hosts if host in here)


def check_gpus(ranks: int, hostfile: Path | None = None) -> None:
    """One GPU per rank: more ranks on this machine than the GPUs it shows (CUDA_VISIBLE_DEVICES counts) is a
    clear error here, not "invalid device ordinal" from a rank."""
    import torch

    count = torch.cuda.device_count()
    if ranks > count:
        shown = os.environ.get("CUDA_VISIBLE_DEVICES")
        where = f" (CUDA_VISIBLE_DEVICES={shown})" if shown is not None else ""
        ask = f"{'the hostfile puts' if hostfile else '--nproc asks for'} {ranks} ranks on this machine"
        raise EnvironmentProblem([Issue((), f"{ask}, which shows {count} GPU{'s' if count != 1 else ''}{where}: "
                                        "a rank trains on one GPU", f"give --nproc {max(count, 1)}, or spread the "
                                        "ranks over machines with --hostfile", loc=Loc(str(hostfile)) if hostfile
                                        else None)], title="the run cannot start")


class Forward:
    """While the ranks run: SIGTERM, SIGUSR1, SIGUSR2 and SIGINT sent to this process go on to them (its
    children)."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGINT)

    def __init__(self):
        self.scope = HandlerScope(self.SIGNALS, self._forward)
        self.sent: list[int] = []

    def __enter__(self) -> "Forward":
        self.scope.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.scope.__exit__(*exc)

    def _forward(self, signum: int, frame) -> None:
        import psutil  # a dependency of DeepSpeed

        self.sent.append(signum)
        for child in psutil.Process().children():
            try:
                child.send_signal(signum)
            except psutil.NoSuchProcess:
                pass


def _torchrun(world: int, command: list[str]) -> int:
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args
    from torch.distributed.run import run as torchrun

    from .guard import RESUMABLE

    threads = threads_per_rank(world)
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    args = torchrun_args(world, command)
    print(f"launching {world} ranks on this machine ({os.environ['OMP_NUM_THREADS']} threads each): "
          f"torchrun {shlex.join(args)}", flush=True)
    try:
        with Forward():
            torchrun(parse_args(args))
    except ChildFailedError as e:
        codes = [f.exitcode for f in e.failures.values()]
        if RESUMABLE in codes and all(c in (RESUMABLE, 0) or c < 0 for c in codes):
            return RESUMABLE  # stopped on a signal, after a checkpoint: rank 0 said where and how to go on
        failed = sorted(e.failures.items(), key=lambda item: (item[1].exitcode <= 0, item[1].timestamp, item[0]))
        rank, failure = failed[0]  # the first to exit with an error; the others were stopped (a signal)
        print(f"rank {rank} of {world} failed (exit code {failure.exitcode}); its message is above",
              file=sys.stderr)
        return failure.exitcode if failure.exitcode > 0 else 1
    return 0


def _deepspeed(hostfile: Path, command: list[str]) -> int:
    """DeepSpeed's launcher over the hostfile's machines (pdsh and passwordless ssh between them, the build
    and run directories on a shared filesystem); a hostfile of this machine alone needs neither."""
    from deepspeed.launcher.runner import main as deepspeed_main

    hosts = read_hostfile(hostfile)
    args = ["--hostfile", str(hostfile), "--no_local_rank"]
    if len(hosts) == 1 and hosts[0][0] in ("localhost", "127.0.0.1", socket.gethostname()):
        args += ["--no_ssh_check", "--master_addr", "127.0.0.1", "--master_port", free_port()]
    elif shutil.which("pdsh") is None:
        raise _cannot_start(hostfile, "DeepSpeed's launcher starts ranks on other machines with pdsh, which this "
                            "machine lacks", "install pdsh (e.g. `apt install pdsh`) and passwordless ssh to every "
                            "host, or list only this machine")
    args += ["--module", *command]
    world = sum(slots for _, slots in hosts)
    print(f"launching {world} ranks on {len(hosts)} machine{'s' if len(hosts) > 1 else ''}: "
          f"deepspeed {shlex.join(args)}", flush=True)
    try:
        deepspeed_main(args)
    except SystemExit as e:  # the launcher exits with the code of a rank that failed
        return e.code if isinstance(e.code, int) else 1
    except (RuntimeError, ValueError) as e:  # e.g. a host that ssh cannot reach
        raise _cannot_start(hostfile, f"DeepSpeed's launcher refused: {e}", "check the hostfile's hosts and "
                            "passwordless ssh to each") from None
    return 0


def _cannot_start(hostfile: Path, message: str, hint: str) -> EnvironmentProblem:
    return EnvironmentProblem([Issue((), message, hint, loc=Loc(str(hostfile)))], title="the run cannot start")


def share_cores(own: int | None = None) -> None:
    """In a rank whose launcher set no thread count (DeepSpeed's sets none, nor does Slurm): `own` threads
    where the caller knows this rank's CPUs (a Slurm task's, which Slurm has already set apart for it: not to
    be divided again), else this machine's cores split evenly among the ranks it runs."""
    if launched() and "OMP_NUM_THREADS" not in os.environ:
        import torch

        local = int(os.environ.get("LOCAL_WORLD_SIZE") or os.environ.get("LOCAL_SIZE") or 1)
        torch.set_num_threads(own or threads_per_rank(local))


def free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])
