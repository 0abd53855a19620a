"""Data parallelism: 2 ranks over gloo follow the loss trajectory of 1 rank with the same global batch (ZeRO 0
to 3), end with the same weights, checkpoint collectively and resume; a launch that cannot match its
build, or a bad hostfile, is refused clearly."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from safetensors.torch import load_file

from graphspec.cli import main
from graphspec.runtime.tasks import REGISTRY
from graphspec.runtime.text import load_tokenizer

from tests.runtime.conftest import RANKS_EVERY as EVERY
from tests.runtime.conftest import RANKS_STEPS as STEPS
from tests.runtime.conftest import ranks_spec_data as _spec_data

# A logged loss has 5 decimals (metrics.jsonl); two ranks sum their halves in another order than one rank sums
# the whole: equal to the logged precision, rounding included (measured: within 1e-5 at every step, ZeRO 0-3).
TOLERANCE = 1.5e-5


@pytest.fixture
def spec_file(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(_spec_data()))
    return path


@pytest.fixture(scope="module")
def one_rank(tmp_path_factory):
    """(spec file, run directory) of the trajectory every 2-rank run is compared with: one rank, ZeRO 0."""
    base = tmp_path_factory.mktemp("one-rank")
    (base / "spec.yaml").write_text(yaml.safe_dump(_spec_data()))
    assert main(["run", str(base / "spec.yaml"), "--run-dir", str(base / "run"), "--build-dir", str(base / "b")]) == 0
    return base / "spec.yaml", base / "run"


def _ranks(args: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    from graphspec.studies.execute import fresh_env

    return subprocess.run([sys.executable, "-m", "graphspec.cli", "run", *args], capture_output=True, text=True,
                          env={**fresh_env(), **(env or {})}, timeout=300)


PRETEND_NCCL = """
import os, sys
if os.environ.get("RANK") is not None and os.environ.get("GRAPHSPEC_COLLECTIVES_LOG"):
    import torch.distributed as dist
    from graphspec.runtime import ranks

    ranks._backend = lambda: "nccl"  # graphspec's view of the run's group; gloo underneath
    log = open(f"{os.environ['GRAPHSPEC_COLLECTIVES_LOG']}.{os.environ['RANK']}", "w")

    def wrap(name, at):
        real = getattr(dist, name)

        def call(*args, **kwargs):
            frame = sys._getframe(1)
            caller = frame.f_code.co_filename
            if "/runtime/" in caller and "/site-packages/" not in caller:  # graphspec's, not DeepSpeed's
                group = kwargs.get("group")
                tensor = args[at] if len(args) > at else None
                where = "host" if group is not None and group is ranks._host_group else "run"
                device = tensor.device.type if tensor is not None else "-"
                log.write(f"{os.path.basename(caller)}:{frame.f_code.co_name} {name} {where} {device}\\n")
                log.flush()
            return real(*args, **kwargs)

        setattr(dist, name, call)

    for name, at in (("all_reduce", 0), ("all_gather", 1), ("barrier", 99), ("broadcast", 0)):
        wrap(name, at)
"""
DEVICE_COLLECTIVES = ("ranks.py:device_total", "metrics.py:")  # device tensors: the run's group


def _collectives_under_nccl(log) -> tuple[list[str], list[str]]:
    """(every collective graphspec issued on either rank, those in the wrong group): host values in the host
    group on the CPU, device tensors in the run's group."""
    lines = [line for path in sorted(log.parent.glob(log.name + ".*")) for line in path.read_text().splitlines()]
    wrong = []
    for line in lines:
        where, _, group, device = line.split()
        on_device = where.startswith(DEVICE_COLLECTIVES)
        if (group == "run") != on_device or (not on_device and device not in ("cpu", "-")):
            wrong.append(line)
    return lines, wrong


def _losses(run_dir) -> list[dict]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: r[k] for k in ("step", "loss", "itm", "mlm", "itc")} for r in records if r.get("split", "train") == "train"]


def _close(a: list[dict], b: list[dict]) -> None:
    assert [r["step"] for r in a] == [r["step"] for r in b] == list(range(1, STEPS + 1))
    for x, y in zip(a, b):
        for key in ("loss", "itm", "mlm", "itc"):
            assert x[key] == pytest.approx(y[key], abs=TOLERANCE), (x["step"], key, x[key], y[key])


def _first_failure(err: str) -> str:
    """What a failed multi-rank run said: rank 0's own lines first (the rank that failed first is often not the
    last to write), then the end of everything."""
    own = [line for line in err.splitlines() if line.startswith("[rank0]") or "rank 0" in line]
    return "\n".join(own)[:3000] + "\n...\n" + err[-2000:]


def _stopped_by_sigterm(args: list[str], run_dir) -> None:
    """`graphspec run ARGS` with 2 ranks, sent SIGTERM once a few steps are logged: the signal reaches the user's
    `graphspec run`, which runs torchrun in-process and forwards it to the ranks; they finish the step, write
    one checkpoint together and exit 75."""
    from graphspec.studies.execute import fresh_env

    process = subprocess.Popen([sys.executable, "-m", "graphspec.cli", "run", *args], env=fresh_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not (run_dir / "metrics.jsonl").is_file() or len((run_dir / "metrics.jsonl").read_text().splitlines()) < 4:
        assert process.poll() is None and time.monotonic() < deadline, _first_failure(process.communicate()[1])
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 75, err[-3000:]
    assert "stopped on SIGTERM after step" in err and f"graphspec run --resume {run_dir}" in err
    assert "Traceback" not in err and "launching 2 ranks" in out


@pytest.mark.integration
@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_two_ranks_follow_the_one_rank_trajectory(one_rank, tmp_path, stage, request):
    """ZeRO 0-3 on two ranks against one rank at ZeRO 0. Stage 0 is launched from this process (which has
    trained in one process itself: the session's `two_ranks` run, which test_slurm shares), stage 2 through
    DeepSpeed's launcher (a hostfile of this machine), 1 and 3 through torchrun (--nproc). Stage 1 runs as if its
    group were NCCL (host values then go through a gloo group graphspec makes beside it), and every collective
    graphspec issues is checked against that rule. Stage
    3 is stopped by SIGTERM (a collective checkpoint: each rank's shards and random state), resumed on 2 ranks,
    and exported."""
    spec_file, one = one_rank
    two = tmp_path / "two"
    zero = f"distributed.zero_stage={stage}"
    (tmp_path / "hostfile").write_text("localhost slots=2\n")
    ranks = ["--hostfile", str(tmp_path / "hostfile")] if stage == 2 else ["--nproc", "2"]
    args = [str(spec_file), *ranks, "--set", zero, "--run-dir", str(two), "--build-dir", str(tmp_path / "b2")]
    if stage == 0:
        two = request.getfixturevalue("two_ranks")[1]
    elif stage == 3:
        _stopped_by_sigterm(args, two)
        newest = sorted((two / "checkpoints").glob("step-*"))[-1]
        stopped_at = int(newest.name.split("-")[1])
        assert 4 <= stopped_at < STEPS and not (two / "summary.json").exists()
        assert {"state.json", "state-1.json", "rng.safetensors", "rng-1.safetensors", "frozen.json",
                "checksums.json"} <= {p.name for p in newest.iterdir()}
        resumed = _ranks([str(two), "--resume"])
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert f"resuming at step {stopped_at + 1}" in resumed.stdout
    else:
        env = {}
        if stage == 1:  # graphspec believes its group is NCCL: host values go to a gloo group made beside it
            (tmp_path / "hook").mkdir()
            (tmp_path / "hook" / "sitecustomize.py").write_text(PRETEND_NCCL)
            env = {"PYTHONPATH": str(tmp_path / "hook"), "GRAPHSPEC_COLLECTIVES_LOG": str(tmp_path / "calls")}
        done = _ranks(args, env)
        assert done.returncode == 0, done.stderr[-3000:]
        assert "launching 2 ranks" in done.stdout and "4 x 1 x 2 ranks" in done.stdout
        assert ("deepspeed --hostfile" if stage == 2 else "torchrun --standalone") in done.stdout
        if stage == 1:
            calls, wrong = _collectives_under_nccl(tmp_path / "calls")
            assert not wrong, wrong
            assert any(" host cpu" in c for c in calls) and any(c.startswith("metrics.py") for c in calls)
    _close(_losses(one), _losses(two))
    summaries = [json.loads((d / "summary.json").read_text()) for d in (one, two)]
    assert summaries[1]["ranks"] == 2
    assert summaries[0]["params"] == summaries[1]["params"] and summaries[1]["params"]["trainable"] > 0
    a, b = (load_file(str(d / "checkpoint" / "model.safetensors")) for d in (one, two))
    assert a.keys() == b.keys()  # ZeRO-3's shards were gathered into whole weights
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-3
    if stage == 3:
        assert len(list((two / "checkpoints").glob("step-*"))) == 1  # keep_checkpoints
        _exported_matches_the_checkpoint(two, tmp_path / "export")


def _exported_matches_the_checkpoint(run_dir, out) -> None:
    """The run's export, loaded as a user loads it (load_model), gives the training code's ITM probabilities
    and ITC image embeddings (1e-5). (A fresh process, without DeepSpeed, is tested in test_export.py.)"""
    import numpy as np

    from graphspec.runtime.evaluate import find_checkpoint, load_checkpoint
    from graphspec.runtime.export import export_model
    from graphspec.runtime.inference import load_model

    model, processor = load_model(export_model(run_dir, out, program=False))
    rng = np.random.default_rng(0)
    inputs = processor(images=[rng.integers(0, 255, (40, 50, 3), dtype=np.uint8) for _ in range(3)],
                       text=["a red circle", "two blue squares left of a green triangle", "nothing"])
    _, reference = load_checkpoint(find_checkpoint(run_dir))
    with torch.no_grad():
        got, want = model(**inputs), reference(**inputs)
    assert torch.allclose(got["itm_probability"], want["itm"].float().softmax(-1)[:, 1], atol=1e-5)
    assert torch.allclose(got["image_embedding"], want["itc"]["image"], atol=1e-5)


def _as_rank(monkeypatch, rank: int, world: int) -> None:
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("WORLD_SIZE", str(world))


def _task(spec, build_dir, tokenizer=None):
    """The spec's task over random pixels, with a trained vocabulary unless a tokenizer is given."""
    roles = spec.roles()
    cls = REGISTRY[roles.task.name]
    data = cls.read(spec, roles, lambda px: torch.from_numpy(px.copy()).permute(2, 0, 1).float())
    return cls(spec, roles, data, tokenizer or load_tokenizer(spec, "text", 128, build_dir, data.texts))


def test_each_rank_trains_on_its_own_slice_of_the_global_batch(train_spec, compile_build, monkeypatch):
    """The trajectory test alone would pass if every rank trained on the whole batch; this one would not."""
    build = compile_build(train_spec)
    spec = build.spec
    task = _task(spec, build.dir)
    whole = task.train_batch(8, 5)
    assert whole.pop("_data") == {"decoded": 8, "replaced": 0, "decodes_saved": 0}
    parts = []
    for rank in (0, 1):
        _as_rank(monkeypatch, rank, 2)
        parts.append(task.train_batch(4, 5))
        # each rank reads only its own rows
        assert parts[-1].pop("_data") == {"decoded": 4, "replaced": 0, "decodes_saved": 0}
    for key, value in whole.items():
        assert torch.equal(torch.cat([p[key] for p in parts]), value), key
    from graphspec.runtime import ranks

    counts = [int((p["mlm_labels"] != -100).sum()) for p in parts]
    monkeypatch.setattr(ranks, "device_total", lambda t: torch.tensor(float(sum(counts))))  # the all-reduce
    weights = []
    for rank in (0, 1):
        _as_rank(monkeypatch, rank, 2)
        weights.append(float(task.mlm_weight(parts[rank]["mlm_labels"])))
    assert sum(weights) / 2 == pytest.approx(1.0)  # the mean over every masked token of the global batch
    assert weights[0] == pytest.approx(2 * counts[0] / sum(counts))

    train_spec.update(heads={"nli": {"kind": "classify", "input": "pooled", "classes": 3}},
                      objectives={"nli": {"kind": "classify"}}, data={"train": {"task": "snli_ve", "samples": 24}})
    build = compile_build(train_spec)
    _as_rank(monkeypatch, 0, 1)
    supervised = _task(build.spec, build.dir, task.tokenizer)
    whole = supervised.train_batch(6, 2)
    parts = []
    for rank in (0, 1):
        _as_rank(monkeypatch, rank, 2)
        parts.append(supervised.train_batch(3, 2))
    for key in ("label", "text_ids", "image"):
        assert torch.equal(torch.cat([p[key] for p in parts]), whole[key]), key
    assert [p["_data"]["decoded"] for p in parts] == [3, 3] and whole["_data"]["decoded"] == 6


def test_a_mistake_found_by_the_ranks_is_located_in_the_spec_file(spec_file, tmp_path, line_of):
    """Only the data can tell: the generator has 2183 train scenes, not 5000 (validate cannot know)."""
    spec_file.write_text(spec_file.read_text().replace("samples: 64", "samples: 5000"))
    done = _ranks([str(spec_file), "--nproc", "2", "--run-dir", str(tmp_path / "r"), "--build-dir",
                   str(tmp_path / "b")])
    assert done.returncode == 2
    # both ranks find it; torchrun stops the other once the first exits, so either may be the one that speaks
    assert re.search(rf"rank [01]: error: {re.escape(str(spec_file))}:{line_of(spec_file, 'samples: 5000')}:",
                     done.stderr), done.stderr[-2000:]
    assert "data.train.samples: asked for 5000 train scenes" in done.stderr
    assert "of 2 failed (exit code 2)" in done.stderr and "Traceback" not in done.stderr


def test_a_checkpoint_resumes_only_with_its_world_size(spec_file, tmp_path, capsys):
    run_dir = tmp_path / "one"
    assert main(["run", str(spec_file), "--run-dir", str(run_dir), "--build-dir", str(tmp_path / "b")]) == 0
    capsys.readouterr()
    assert main(["run", str(run_dir), "--resume", "--nproc", "2"]) == 2
    err = capsys.readouterr().err
    assert "compiled for 1 processes, the command line asks for 2" in err and "--nproc 1" in err


def test_a_build_for_one_rank_is_not_launched_on_two(spec_file, tmp_path, capsys):
    assert main(["compile", str(spec_file), "-o", str(tmp_path / "b")]) == 0
    assert main(["run", str(tmp_path / "b"), "--nproc", "2", "--run-dir", str(tmp_path / "r")]) == 2
    assert "run the spec file with --nproc 2" in capsys.readouterr().err


def test_bad_hostfiles_are_located(spec_file, tmp_path, capsys):
    hosts = tmp_path / "hostfile"
    hosts.write_text("# two workers\nworker-1 slots=2\nworker-2 slots=two\n")
    assert main(["run", str(spec_file), "--hostfile", str(hosts)]) == 2
    err = capsys.readouterr().err
    assert f"{hosts}:3" in err and "'worker-2 slots=two' is not `HOST slots=N`" in err
    assert main(["run", str(spec_file), "--hostfile", str(tmp_path / "missing")]) == 3
    assert "cannot read the hostfile" in capsys.readouterr().err


def test_other_machines_without_pdsh_are_a_clear_error(spec_file, tmp_path, capsys, monkeypatch):
    import shutil

    monkeypatch.setattr(shutil, "which", lambda name: None)
    hosts = tmp_path / "hostfile"
    hosts.write_text("worker-1 slots=1\nworker-2 slots=1\n")
    assert main(["run", str(spec_file), "--hostfile", str(hosts), "--run-dir", str(tmp_path / "r"),
                 "--build-dir", str(tmp_path / "b")]) == 3
    err = capsys.readouterr().err
    assert "starts ranks on other machines with pdsh, which this machine lacks" in err and str(hosts) in err


def test_nproc_and_hostfile_exclude_each_other(spec_file, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["run", str(spec_file), "--nproc", "2", "--hostfile", str(tmp_path / "h")])
    assert "not allowed with argument" in capsys.readouterr().err


def test_two_nodes_of_one_rank_each_train_and_checkpoint(spec_file, tmp_path):
    """Two torchrun processes with --nnodes 2 on this machine: RANK 1 with LOCAL_RANK 0, as on a second
    machine. Each node has its own frozen-output cache; rank 0 alone writes the run's files, both write their
    part of the checkpoints; the trajectory is one rank's."""
    from graphspec.runtime.launch import free_port
    from graphspec.studies.execute import fresh_env

    spec = yaml.safe_load(spec_file.read_text())
    spec["nodes"]["vision_tower"]["freeze"] = True
    spec["distributed"] = {"frozen": {"cache_outputs": True}}
    spec_file.write_text(yaml.safe_dump(spec))
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(["run", str(spec_file), "--run-dir", str(one), "--build-dir", str(tmp_path / "b1"), "--set",
                 f"distributed.frozen.cache_dir={tmp_path / 'cache-one'}"]) == 0
    assert main(["compile", str(spec_file), "-o", str(tmp_path / "b2"), "--set", "distributed.world_size=2"]) == 0
    port = free_port()
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", str(n),
                               "--nproc_per_node", "1", "--master_addr", "127.0.0.1", "--master_port", port,
                               "--module", "graphspec.cli", "run", str(tmp_path / "b2"), "--run-dir", str(two)],
                              env={**fresh_env(), "GRAPHSPEC_CACHE": str(tmp_path / f"cache-node{n}"),
                                   "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for n in (0, 1)]
    done = [(p.wait(timeout=300), p.communicate()) for p in nodes]
    assert [code for code, _ in done] == [0, 0], done[0][1][1][-2000:] + done[1][1][1][-2000:]
    _close(_losses(one), _losses(two))
    checkpoint = two / "checkpoints" / f"step-{STEPS - EVERY:08d}"
    assert {"state.json", "state-1.json", "rng.safetensors", "rng-1.safetensors"} <= {p.name for p in checkpoint.iterdir()}
    assert json.loads((two / "summary.json").read_text())["ranks"] == 2
    for n in (0, 1):  # each node computed and stored the vision outputs of its own rows in its own cache
        assert list((tmp_path / f"cache-node{n}").rglob("*.safetensors"))


def test_more_ranks_than_the_machine_has_gpus_is_a_clear_error(spec_file, tmp_path, monkeypatch, capsys):
    import torch

    monkeypatch.setenv("DS_ACCELERATOR", "cuda")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert main(["run", str(spec_file), "--nproc", "2", "--run-dir", str(tmp_path / "r"), "--build-dir",
                 str(tmp_path / "b")]) == 3
    err = capsys.readouterr().err
    assert "--nproc asks for 2 ranks on this machine, which shows 1 GPU (CUDA_VISIBLE_DEVICES=3)" in err
    assert "give --nproc 1, or spread the ranks over machines with --hostfile" in err and "Traceback" not in err
    hosts = tmp_path / "hostfile"
    hosts.write_text("localhost slots=2\n")
    assert main(["run", str(tmp_path / "b"), "--hostfile", str(hosts), "--run-dir", str(tmp_path / "r")]) == 3
    assert "the hostfile puts 2 ranks on this machine" in capsys.readouterr().err
