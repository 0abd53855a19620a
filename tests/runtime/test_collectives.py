"""Every tensor graphspec hands to a collective is on the device its group requires under NCCL: host values
(flags, counts, losses read back) through a gloo group on the host, device tensors (features, masked-token
counts) through the run's own group. Checked in this one process against a stand-in for two NCCL ranks, which
records each call; on a CPU machine an NCCL group's device is made observable with tests/runtime/devices.py."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from graphspec.runtime import metrics, ranks

from .devices import FAKE, Device, _OnFake, on_device

HOST = "the gloo group beside NCCL"


@pytest.fixture
def nccl(monkeypatch):
    """Rank 0 of 2 under an NCCL run: every collective recorded as (name, group, tensor); results as if the
    other rank had sent the same values."""
    calls: list[tuple[str, object, torch.Tensor]] = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setattr(ranks, "group_active", lambda: True)
    monkeypatch.setattr(ranks, "_backend", lambda: "nccl")
    monkeypatch.setattr(ranks, "_host_group", None)
    monkeypatch.setattr(dist, "new_group", lambda backend=None, **kw: HOST if backend == "gloo" else None)
    monkeypatch.setattr(dist, "get_world_size", lambda group=None: 2)
    monkeypatch.setattr(dist, "get_rank", lambda group=None: 0)

    def all_reduce(t, op=dist.ReduceOp.SUM, group=None, async_op=False):
        calls.append(("all_reduce", group, t))
        if op == dist.ReduceOp.SUM:
            t.mul_(2)

    def all_gather(out, t, group=None, async_op=False):
        calls.append(("all_gather", group, t))
        for o in out:
            o.copy_(t)

    monkeypatch.setattr(dist, "all_reduce", all_reduce)
    monkeypatch.setattr(dist, "all_gather", all_gather)
    monkeypatch.setattr(dist, "barrier", lambda group=None, **kw: calls.append(("barrier", group, torch.zeros(0))))
    return calls


def _wrong(calls) -> list[str]:
    """Calls whose tensor is not where the group needs it: the host group takes host tensors, NCCL device ones."""
    out = []
    for name, group, t in calls:
        on_host = group == HOST
        if on_host == isinstance(t, Device) or (group is not None and not on_host):
            out.append(f"{name} in {'the host group' if on_host else 'the NCCL group'} with a tensor on "
                       f"{'the device' if isinstance(t, Device) else 'the host'}")
    return out


def test_host_values_are_reduced_in_a_gloo_group_beside_nccl(nccl):
    assert ranks.total({"a": 1.0, "b": 2.0}) == {"a": 2.0, "b": 4.0}
    assert ranks.mean({"a": 1.5}) == {"a": 1.5}
    assert ranks.maximum(3.0) == 3.0 and ranks.any_true(True) and not ranks.any_true(False)
    assert ranks.gather_counts(5) == [10, 0]  # rank 0's slot, doubled by the stand-in's sum
    assert ranks.any_text("") == ""
    ranks.barrier()
    assert len(nccl) == 8 and all(group == HOST for _, group, _ in nccl)
    assert not _wrong(nccl), _wrong(nccl)


def test_device_tensors_are_reduced_on_the_device_in_the_run_group(nccl):
    with _OnFake():
        counts = ranks.device_total(torch.tensor(3.0).as_subclass(Device))
        out = on_device({"text": torch.randn(4, 8), "image": torch.randn(4, 8), "scale": torch.tensor(10.0)})
        keep = torch.tensor([True, True, False, True]).as_subclass(Device)
        loss = metrics.contrastive_loss(out, keep)
    assert float(counts) == 6.0 and isinstance(loss, Device) and loss.device == FAKE
    assert {name for name, _, _ in nccl} == {"all_reduce", "all_gather"}
    assert not _wrong(nccl), _wrong(nccl)
