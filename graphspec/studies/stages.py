"""A study stage's process: forked from a server that has already imported what every stage imports.

A stage is still a process of its own (its own memory peak, nothing left behind
for the next stage), but it no longer starts a fresh interpreter: importing
torch, transformers, timm, DeepSpeed and graphspec's runtime took about 5 s of
each stage's start on this 2-core CPU. The server (multiprocessing's forkserver)
is started once per study, imports those modules and does nothing else: a
process forked after torch has run its OpenMP thread pool would hang in the
child, so the server never computes. Each stage gets the environment it is
given (the study's, without a rendezvous), its output in its log file, and
exits with `graphspec run`'s exit code.

Modules that read environment variables when imported (huggingface_hub's
offline switch) read the study's, as the stage would.
"""

from __future__ import annotations

import multiprocessing
import os
import runpy
import signal
import sys
import time

PRELOAD = ["torch", "transformers", "timm", "deepspeed", "graphspec.cli", "graphspec.runtime.train",
           "graphspec.compiler.backbones"]
_context = None


def _server():
    global _context
    if _context is None:
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload(PRELOAD)
    return _context


def start_server() -> None:
    """Start the server now (its imports overlap with the study's own work); later calls do nothing."""
    from multiprocessing import forkserver

    _server()
    forkserver.ensure_running()


def run_stage(argv: list[str], log: str, env: dict[str, str], deadline_s: float | None = None) -> tuple[int, bool]:
    """`graphspec ARGV` in a process forked from the server, its stdout and stderr appended to `log`: its exit
    code (a negative one: the signal that ended it), and whether it was told to stop at `deadline_s` (SIGUSR1:
    it finishes its step, checkpoints and exits 75)."""
    process = _server().Process(target=_stage, args=(argv, log, env), name="graphspec-stage")
    process.start()
    told = False
    end = None if deadline_s is None else time.monotonic() + deadline_s
    try:
        while process.exitcode is None:
            process.join(timeout=None if end is None or told else max(0.0, end - time.monotonic()))
            if process.exitcode is None and not told and process.pid is not None:
                os.kill(process.pid, signal.SIGUSR1)
                told = True
    except KeyboardInterrupt:  # the stage got the Ctrl-C too (one process group): let it stop as it does
        process.join()
        raise
    return int(process.exitcode or 0), told


def _stage(argv: list[str], log: str, env: dict[str, str]) -> None:
    os.environ.clear()
    os.environ.update(env)
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    sys.argv = ["graphspec", *argv]
    runpy.run_module("graphspec.cli", run_name="__main__")  # as `python -m graphspec.cli ARGV`: it exits
