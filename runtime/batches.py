"""Training batches made ahead of the step, in worker processes.

A micro batch is a pure function of its index (`Task.train_batch`: every rank plans the global batch alike and
reads, decodes and transforms only its own rows), so worker processes can make any of them, in any order,
and the run is the same with 0, 1 or 8 workers; a resumed run starts the loader at its next index. Workers
ignore SIGTERM, SIGINT and SIGUSR1: the training process decides when to stop (it checkpoints first) and
then ends them. An error a worker finds (a bad image without skip_bad) is sent back as data and raised in
the training process, as the same located error.
"""

from __future__ import annotations

import os
import signal
import time

import torch
from torch.utils.data import DataLoader, Dataset

from graphspec.language.errors import GraphspecError

from . import slurm
from .launch import cores


class MicroBatches(Dataset):
    """Micro batch `index` of the run, this rank's rows: what the workers compute."""

    def __init__(self, task, micro: int, count: int):
        self.task, self.micro, self.count = task, micro, count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> dict:
        try:
            batch = self.task.train_batch(self.micro, index)
        except GraphspecError as e:  # our exceptions do not survive pickling through the worker queue
            return {"_error": (type(e), e.issues, e.title)}
        batch["_index"] = index
        return batch


def _quiet_worker(worker_id: int) -> None:
    """A worker computes; the training process stops the run (a signal to all processes of a job reaches
    workers too, and one that died would end the run without its checkpoint)."""
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
        signal.signal(sig, signal.SIG_IGN)
    torch.set_num_threads(1)  # decoding and transforms are per image; the rank's threads are for the model


def default_workers(accelerator: bool) -> int:
    """The workers of a rank when the spec leaves `data.workers` unset.

    Training on the CPU, none: the model's threads already use every core of the rank, and a worker can only
    take cores from them. Measured on 2 cores (benchmarks/data.py: the quickstart model on 224-pixel images,
    where decoding is 36% of the step), samples/s with 2 model threads and 0, 1, 2 workers: 139, 107, 127
    (a repeat: 117 with 0, 123 with 2); with 1 thread and 1 or 2 workers: 121, 110. One worker is always
    worse, two are even with none within the noise, at the cost of two more processes. On an accelerator,
    the rank's cores but one (which drives the device), up to 8: the model computes on the device, and the
    cores would idle while it does (not measured here: this machine has no accelerator).
    """
    if not accelerator:
        return 0
    local = int(os.environ.get("LOCAL_WORLD_SIZE") or os.environ.get("LOCAL_SIZE") or 1)
    step = slurm.current()  # a Slurm task's CPUs are its own already
    return max(0, min(8, (step.cpus() if step else cores() // max(1, local)) - 1))


class Batches:
    """The iterator the training loop reads: the micro batches from `first` on, with the time spent waiting."""

    def __init__(self, task, micro: int, first: int, last: int, workers: int | None, prefetch: int,
                 accelerator: bool):
        """`accelerator`: the model computes on one (batches come in pinned memory, and the default number
        of workers is another)."""
        self.workers = default_workers(accelerator) if workers is None else workers
        dataset = MicroBatches(task, micro, last)
        # A generator of its own: the loader draws its workers' base seed from it, not from the global one that
        # dropout draws from (a resumed run restores that one, and must not see it advanced by the loader).
        self.loader = DataLoader(dataset, batch_size=None, sampler=range(first, last), num_workers=self.workers,
                                 prefetch_factor=prefetch if self.workers else None,
                                 pin_memory=accelerator and torch.cuda.is_available(),
                                 worker_init_fn=_quiet_worker if self.workers else None,
                                 multiprocessing_context="fork" if self.workers else None,
                                 generator=torch.Generator().manual_seed(0))
        self.iterator = iter(self.loader)
        self.next_index = first
        self.waited = 0.0

    def next(self, index: int) -> dict:
        start = time.perf_counter()
        batch = next(self.iterator)
        self.waited += time.perf_counter() - start
        error = batch.pop("_error", None)
        if error is not None:
            cls, issues, title = error
            raise cls(issues, title)
        got = batch.pop("_index")
        if got != index:
            raise RuntimeError(f"the loader gave micro batch {got} where {index} was due")
        return batch

    def take_waited(self) -> float:
        waited, self.waited = self.waited, 0.0
        return waited

    def close(self) -> None:
        """End the workers now: they ignore SIGTERM (see `_quiet_worker`), so a terminate() at exit would not."""
        iterator, self.iterator = self.iterator, None
        workers = list(getattr(iterator, "_workers", []))
        shutdown = getattr(iterator, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()  # asks each worker to stop, then joins it
        for w in workers:
            if w.is_alive():
                w.kill()
                w.join()
