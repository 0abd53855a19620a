"""Large freed buffers stay with the process: the next step's allocation of the same size faults no pages in."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROBE = """
import resource, sys, torch
from graphspec.runtime.malloc import keep_freed_memory
kept = keep_freed_memory()
def faults(): return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
counts = []
for step in range(6):  # as a training step would: 200 MB (above glibc's mmap threshold) allocated, written, freed
    before = faults()
    x = torch.empty(200 * 2**20, dtype=torch.uint8).fill_(step); del x
    counts.append(faults() - before)
print(kept, max(counts[3:]), min(counts[3:]))  # the heap settles within the first steps
"""


def _probe(**env) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", PROBE], env={**os.environ, **env}, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    kept, most, least = out.stdout.split()
    return kept, int(most), int(least)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_a_freed_large_buffer_is_reused_without_page_faults():
    kept, most, _ = _probe()
    assert kept == "True"
    assert most < 1000  # later steps reuse the pages the earlier ones faulted in
    kept, _, least = _probe(GRAPHSPEC_KEEP_FREED_MEMORY="0")
    assert kept == "False"
    assert least > 20_000  # every step maps 51,200 pages of 4 KiB afresh (fewer if the kernel maps huge pages)
