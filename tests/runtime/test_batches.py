"""How many worker processes a rank gets when the spec does not say (the measurements are in the function's
docstring and the README's input pipeline section)."""

from __future__ import annotations

import pytest

from graphspec.runtime import batches as loader


@pytest.mark.parametrize("cores, ranks, accelerator, expected", [
    (2, 1, False, 0),    # on the CPU, the model's threads use every core: a worker only takes from them
    (64, 8, False, 0),
    (2, 1, True, 1),     # on an accelerator, the rank's cores but one
    (16, 8, True, 1),
    (96, 8, True, 8),    # up to 8
    (16, 1, True, 8),
    (1, 1, True, 0),     # one core drives the device
    (4, 8, True, 0),     # more ranks than cores
])
def test_default_workers(monkeypatch, cores, ranks, accelerator, expected):
    monkeypatch.setattr(loader, "cores", lambda: cores)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(ranks))
    assert loader.default_workers(accelerator) == expected
