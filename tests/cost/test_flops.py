"""The FLOPs `graphspec cost` predicts on the meta device are those torch's FlopCounterMode counts over a real
training step on the same batch: every spec in specs/, each freeze variant (nothing frozen, each tower alone,
every tower), towers at random init, one row a micro batch (tests/cost/flops_check.py). Specs that differ only
in what they freeze are one model, checked once with all its variants. The models are checked by two
processes at once (the counting is Python-bound: one core each)."""

from __future__ import annotations

import multiprocessing
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path

import pytest

from tests.cost.flops_check import check_model, model_key, one_thread

from ..test_specs import ROOT, SPECS, _needs_packages


# Experiment 2's configurations are one kind of model at other sizes: electra_small (text backbone, projected
# embeddings), deit_small (a transformers vision backbone) and nlvr2 (resampled positions, pair head) cover what
# they build; a real step of the base-sized ones costs 10-15 s each here and checks nothing more.
SAME_KIND = {f"paper/exp2/{name}.yaml" for name in ("electra_base", "bert_base", "vit_base", "dino_s16", "random",
                                                    "snli_ve")}


def _models() -> list[Path]:
    seen: dict[str, Path] = {}
    for path in SPECS:
        if path.relative_to(ROOT).as_posix() not in SAME_KIND:
            seen.setdefault(model_key(path), path)
    return list(seen.values())


MODELS = _models()


@pytest.fixture(scope="module")
def counted():
    """Every model's check, submitted at once to two processes; each test waits for its own."""
    pool = ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn"), initializer=one_thread)
    futures: dict[Path, Future] = {p: pool.submit(check_model, str(p)) for p in MODELS}
    yield futures
    pool.shutdown(cancel_futures=True)


@pytest.mark.parametrize("path", MODELS, ids=lambda p: str(p.relative_to(p.parents[1])))
def test_predicted_flops_are_torchs_count_of_a_real_step(path, counted):
    _needs_packages(path)
    rows = counted[path].result(timeout=900)
    assert [r[0] for r in rows][0] == "none" and len(rows) >= 2
    for name, predicted, measured in rows:
        assert measured > 0
        assert predicted == pytest.approx(measured, rel=0.01), (name, predicted, measured)
