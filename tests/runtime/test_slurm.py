"""`graphspec run` as the tasks of a Slurm job step: reading the step (host lists, per-node counts, what is a
step and what is not), the rank variables it sets, the errors that name the fix, rank 0 alone writing the
build, and two tasks training exactly as `--nproc 2` does."""

from __future__ import annotations

import json
import os
import random
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from graphspec.cli import main
from graphspec.language.errors import EnvironmentProblem, Issue, SpecError
from graphspec.runtime import launch, slurm

RANK_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
             launch.SELF_STARTED)


def step_vars(rank: int = 0, world: int = 2, job: int = 4242, **more: str) -> dict[str, str]:
    """What srun gives each task of a step of `world` tasks on one node."""
    return {"SLURM_JOB_ID": str(job), "SLURM_STEP_ID": "0", "SLURM_PROCID": str(rank), "SLURM_NTASKS": str(world),
            "SLURM_LOCALID": str(rank), "SLURM_JOB_NODELIST": "localhost", "SLURM_NTASKS_PER_NODE": str(world),
            **more}


def path_without_scontrol(tmp: Path) -> str:
    """PATH as it is, less any folder holding an `scontrol`, plus `tmp` (empty unless a test puts one there)."""
    keep = [d for d in os.environ.get("PATH", "").split(os.pathsep) if d and not (Path(d) / "scontrol").exists()]
    return os.pathsep.join([str(tmp), *keep])


def outside_slurm(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if not k.startswith("SLURM_") and k not in (slurm.IGNORE, *RANK_VARS)}


@pytest.fixture
def in_step(tmp_path, monkeypatch):
    """in_step(rank=0, world=2, **more): this process as a task of a step (the rank variables it sets are
    undone after the test). The threads stay as they are (OMP_NUM_THREADS set), the working directory is
    tmp_path/work, and no `scontrol` is on PATH unless the test writes one into tmp_path/bin."""
    import torch

    saved = dict(os.environ)
    (tmp_path / "bin").mkdir()
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")

    def enter(rank: int = 0, world: int = 2, **more: str) -> None:
        os.environ.clear()
        os.environ.update(outside_slurm(saved))
        os.environ.update({**step_vars(rank, world), **more}, OMP_NUM_THREADS=str(torch.get_num_threads()),
                          PATH=path_without_scontrol(tmp_path / "bin"))

    yield enter
    os.environ.clear()
    os.environ.update(saved)


# --- reading the step ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("nodes, hosts", [
    ("node01", ["node01"]),
    ("node[01-03,07]", ["node01", "node02", "node03", "node07"]),
    ("node[01-03,07],gpu-a[1-2]-x", ["node01", "node02", "node03", "node07", "gpu-a1-x", "gpu-a2-x"]),
    ("n[8-10]", ["n8", "n9", "n10"]),  # the first number's width: none
    ("n[008-010]", ["n008", "n009", "n010"]),
    ("x[5]", ["x5"]),
    ("login1.cluster.org,login2.cluster.org", ["login1.cluster.org", "login2.cluster.org"]),
    ("c-1.rack[2-3].site", ["c-1.rack2.site", "c-1.rack3.site"]),
    ("rack[1-2]-n[1-2]", ["rack1-n1", "rack1-n2", "rack2-n1", "rack2-n2"]),
    ("a[1,3],b,c[09-10]", ["a1", "a3", "b", "c09", "c10"]),
])
def test_host_lists_expand_as_scontrol_shows_them(nodes, hosts):
    assert slurm.hostnames(nodes) == hosts


@pytest.mark.parametrize("nodes", ["", "node[1-3", "node1-3]", "node[3-1]", "node[a-b]", "a,,b", "n[[1]]", "n[]"])
def test_what_is_not_a_host_list_is_refused(nodes):
    with pytest.raises(ValueError):
        slurm.hostnames(nodes)


@pytest.mark.parametrize("text, counts", [("2", [2]), ("2(x3),1", [2, 2, 2, 1]), ("1(x2)", [1, 1]),
                                          ("4,2(x2)", [4, 2, 2])])
def test_tasks_per_node(text, counts):
    assert slurm.tasks_per_node(text) == counts


def test_a_task_count_that_is_not_one_is_refused():
    with pytest.raises(ValueError, match="'2x3' is not a count"):
        slurm.tasks_per_node("2x3")


def _step(env: dict[str, str]) -> slurm.Step:
    step = slurm.current(env)
    assert step is not None
    return step


def test_a_task_of_a_step_is_read():
    step = _step(step_vars(rank=5, world=7, job=99, SLURM_STEP_ID="3", SLURM_LOCALID="1",
                                   SLURM_STEP_TASKS_PER_NODE="2(x3),1", SLURM_NODEID="2",
                                   SLURM_STEP_NODELIST="n[3-6]", SLURM_RESTART_COUNT="1"))
    assert step == slurm.Step(job=99, step=3, restart=1, rank=5, world=7, local_rank=1, local_world=2,
                              nodes="n[3-6]")  # the step's own nodes, not the job's
    assert step.name == "slurm-99-3" and step.attempt == "99.3.1"


def test_the_local_task_count_is_this_nodes():
    last = step_vars(world=7, SLURM_STEP_TASKS_PER_NODE="2(x3),1", SLURM_NODEID="3")
    assert _step(last).local_world == 1
    assert _step({**step_vars(world=4), "SLURM_NTASKS_PER_NODE": "4"}).local_world == 4
    job_only = {k: v for k, v in step_vars(world=4).items() if k != "SLURM_NTASKS_PER_NODE"}
    assert _step({**job_only, "SLURM_TASKS_PER_NODE": "3,1"}).local_world == 3


@pytest.mark.parametrize("env", [
    {},
    {"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4", "SLURM_JOB_NODELIST": "n[1-2]", "SLURM_PROCID": "0"},  # salloc shell
    step_vars(SLURM_STEP_ID="extern"),  # a step of Slurm's own (the batch script has none at all)
    step_vars(world=1),  # one task: a shell on one machine, where --nproc launches
    step_vars(GRAPHSPEC_IGNORE_SLURM="1"),
], ids=["no-slurm", "salloc-shell", "extern-step", "one-task", "opted-out"])
def test_what_is_not_a_step_of_ranks(env):
    assert slurm.current(env) is None


def test_a_step_missing_its_variables_is_named():
    env = {k: v for k, v in step_vars().items() if k not in ("SLURM_PROCID", "SLURM_JOB_NODELIST")}
    with pytest.raises(EnvironmentProblem) as e:
        slurm.current({**env, "SLURM_LOCALID": "x"})
    text = e.value.format()
    assert "SLURM_PROCID is missing" in text and "SLURM_LOCALID is 'x'" in text
    assert "none of SLURM_STEP_NODELIST, SLURM_JOB_NODELIST, SLURM_NODELIST is" in text
    assert "GRAPHSPEC_IGNORE_SLURM=1" in text


def test_the_port_comes_from_the_job():
    ports = {slurm.port(job, 0) for job in range(100000, 140000, 7)}
    assert min(ports) >= 15000 and max(ports) < 32768  # unprivileged, below Linux's own ephemeral ports
    assert slurm.port(123456, 0) == slurm.port(123456, 0) == 15000 + 123456 % 17000
    assert len({slurm.port(123456, s) for s in range(3)}) == 3  # the job's next step does not wait on this one


def test_a_task_becomes_its_rank(in_step):
    in_step(rank=1, SLURM_JOB_NODELIST="node[07-08]")
    os.environ[launch.SELF_STARTED] = "1"  # a single-process run earlier in this process
    assert not launch.launched()
    assert slurm.join(None, None) == slurm.current()
    assert {k: os.environ[k] for k in RANK_VARS[:-1]} == {
        "RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "node07",
        "MASTER_PORT": str(slurm.port(4242, 0))}
    assert launch.launched()  # what the run's code asks: no launcher starts anything under it


def test_the_rendezvous_already_in_the_environment_wins(in_step):
    in_step()
    os.environ.update(MASTER_ADDR="10.0.0.5", MASTER_PORT="29999")
    slurm.join(None, None)
    assert (os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"]) == ("10.0.0.5", "29999")


def test_scontrol_names_the_first_host_where_it_answers(in_step, tmp_path):
    in_step(SLURM_JOB_NODELIST="weird[1-2]")
    scontrol = tmp_path / "bin" / "scontrol"
    scontrol.write_text(f"#!/bin/sh\necho \"$@\" > {tmp_path / 'asked'}\nprintf 'from-scontrol\\nother\\n'\n")
    scontrol.chmod(scontrol.stat().st_mode | stat.S_IEXEC)
    assert slurm.first_host("weird[1-2]") == "from-scontrol"
    assert (tmp_path / "asked").read_text().split() == ["show", "hostnames", "weird[1-2]"]
    scontrol.write_text("#!/bin/sh\necho 'slurm_load_partitions: Unable to contact slurm controller' >&2\nexit 1\n")
    assert slurm.first_host("weird[1-2]") == "weird1"  # our own reading when scontrol cannot answer


def test_a_task_uses_the_cpus_slurm_gave_it(in_step, monkeypatch):
    import torch

    in_step(world=4, SLURM_NTASKS_PER_NODE="4", SLURM_CPUS_PER_TASK="4")
    monkeypatch.setattr(slurm, "cores", lambda: 4)  # bound to its own 4 CPUs: not divided again by 4 tasks
    step = slurm.join(None, None)
    assert step is not None and step.cpus() == 4
    monkeypatch.setattr(slurm, "cores", lambda: 16)  # not bound: the node's CPUs, of which it was given 4
    assert step.cpus() == 4
    monkeypatch.setattr(slurm, "cores", lambda: 1)  # given 1 by srun, whatever the batch script asked for
    assert step.cpus() == 1
    os.environ.pop("SLURM_CPUS_PER_TASK")
    monkeypatch.setattr(slurm, "cores", lambda: 16)  # no --cpus-per-task, not bound: the node's share
    assert step.cpus() == 4
    set_to = []
    monkeypatch.setattr(torch, "set_num_threads", set_to.append)
    os.environ.pop("OMP_NUM_THREADS")
    launch.share_cores(step.cpus())
    assert set_to == [4]
    from graphspec.runtime.batches import default_workers

    os.environ["SLURM_CPUS_PER_TASK"] = "6"
    assert default_workers(accelerator=True) == 5  # the task's CPUs but one


# --- the command line inside a step ----------------------------------------------------------------------------


@pytest.fixture
def spec_file(tmp_path, tiny):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(tiny))
    return path


@pytest.fixture
def no_training(monkeypatch):
    """The runs `graphspec run` would start, recorded instead (and no launcher may start any): a test of an
    error fails at once, rather than wait for a second rank, where the error is not raised."""
    import graphspec.runtime.train as train

    calls = []
    monkeypatch.setattr(train, "run", lambda build, run_dir, **kw: calls.append((build, Path(run_dir), kw)) or {})
    monkeypatch.setattr(launch, "launch", lambda *a, **kw: pytest.fail("a launcher started inside a step"))
    return calls


@pytest.mark.parametrize("flag", ["--nproc", "--hostfile"])
def test_a_launcher_flag_inside_a_step_is_refused(in_step, spec_file, no_training, capsys, flag):
    in_step()
    assert main(["run", str(spec_file), flag, "2"]) == 2
    err = capsys.readouterr().err
    assert f"{flag} starts ranks, but this process is already one: task 0 of a Slurm job step of 2 tasks" in err
    assert f"fix: drop {flag} (`srun --ntasks N graphspec run ...` trains on N ranks), or set " \
           "GRAPHSPEC_IGNORE_SLURM=1" in err
    assert "Traceback" not in err


def test_a_step_of_another_size_than_the_spec_is_refused(in_step, spec_file, no_training, capsys, line_of,
                                                           tmp_path):
    in_step(world=3, SLURM_NTASKS_PER_NODE="3")
    spec = yaml.safe_load(spec_file.read_text())
    spec["distributed"] = {"world_size": 2}
    spec_file.write_text(yaml.safe_dump(spec))
    assert main(["run", str(spec_file)]) == 2
    err = capsys.readouterr().err
    assert f"{spec_file}:{line_of(spec_file, 'world_size')}" in err
    assert "distributed.world_size: the spec asks for 2 processes, but this Slurm job step has 3 tasks" in err
    assert "fix: start 2 tasks (`srun --ntasks 2 ...`), or give `--set distributed.world_size=3`" in err
    assert "Traceback" not in err and not (tmp_path / "work" / "build").exists()  # refused before compiling
    in_step(rank=2, world=3, SLURM_NTASKS_PER_NODE="3")
    assert main(["run", str(spec_file)]) == 2
    assert capsys.readouterr().err == ""  # every task finds the same: rank 0 alone says it


def test_a_build_of_another_size_than_the_step_is_refused(in_step, spec_file, no_training, capsys, tmp_path):
    assert main(["compile", str(spec_file), "-o", str(tmp_path / "b")]) == 0
    in_step()
    assert main(["run", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "the spec asks for 1 processes, but this Slurm job step has 2 tasks" in err
    assert "or compile the spec again with `--set distributed.world_size=2`" in err and "Traceback" not in err


def test_tasks_that_cannot_see_their_gpu_are_refused(in_step, spec_file, no_training, capsys):
    in_step(DS_ACCELERATOR="cuda", CUDA_VISIBLE_DEVICES="3")
    assert main(["run", str(spec_file), "--set", "distributed.world_size=2"]) == 3
    err = capsys.readouterr().err
    assert "this node runs 2 tasks of the step, and task 0 sees 1 GPU(s) (CUDA_VISIBLE_DEVICES=3)" in err
    assert "--gpus-per-node=N (or --gres=gpu:N) rather than --gpus-per-task, or add --gpu-bind=none" in err


def test_rank_0_alone_writes_the_build_the_others_wait_for_it(in_step, spec_file, no_training, monkeypatch,
                                                               tmp_path, capsys):
    import graphspec.compiler as compiler

    work = tmp_path / "work"
    in_step(rank=1)
    monkeypatch.setattr(slurm, "WAIT_S", 0.5)
    build = work / "build" / "tiny"
    build.mkdir(parents=True)
    (build / slurm.MARK).write_text("4242.0.1 written\n")  # another attempt's: not this one's
    started = time.monotonic()
    assert main(["run", str(spec_file), "--set", "distributed.world_size=2"]) == 3
    assert time.monotonic() - started >= 0.5
    assert "rank 1: error: build/tiny: rank 0 did not write the build folder within 0.5 s" in capsys.readouterr().err
    assert not no_training and not (build / "manifest.json").exists()

    in_step(rank=0)
    assert main(["run", str(spec_file), "--set", "distributed.world_size=2"]) == 0
    assert (build / slurm.MARK).read_text() == "4242.0.0 written\n"
    (built, run_dir, kw), = no_training
    assert built.dir.resolve() == build and run_dir == Path("runs/tiny/slurm-4242-0") and not kw.get("resume")

    in_step(rank=1)
    monkeypatch.setattr(compiler, "compile_spec", lambda *a: pytest.fail("a task besides rank 0 compiled"))
    assert main(["run", str(spec_file), "--set", "distributed.world_size=2"]) == 0
    assert no_training[1][0].dir.resolve() == build and no_training[1][1] == run_dir  # the same run directory

    in_step(rank=0)  # rank 0 fails to compile: the others stop too, and leave the saying to it
    monkeypatch.setattr(compiler, "compile_spec", _broken)
    assert main(["run", str(spec_file), "--set", "distributed.world_size=2"]) == 2
    assert (build / slurm.MARK).read_text() == "4242.0.0 failed\n"
    capsys.readouterr()
    in_step(rank=1)
    assert main(["run", str(spec_file), "--set", "distributed.world_size=2"]) == 2
    assert capsys.readouterr().err == "" and len(no_training) == 2


def _broken(spec):
    raise SpecError([Issue(("nodes",), "broken on purpose")])


def test_each_task_resumes_as_its_rank(in_step, spec_file, no_training, tmp_path, capsys):
    assert main(["compile", str(spec_file), "-o", str(tmp_path / "run" / "build"), "--set",
                 "distributed.world_size=2"]) == 0
    in_step(rank=1)
    assert main(["run", str(tmp_path / "run"), "--resume"]) == 0
    (build, run_dir, kw), = no_training
    assert run_dir == tmp_path / "run" and kw["resume"] and os.environ["RANK"] == "1"
    in_step(world=3, SLURM_NTASKS_PER_NODE="3")
    assert main(["run", str(tmp_path / "run"), "--resume"]) == 2
    assert "the spec asks for 2 processes, but this Slurm job step has 3 tasks" in capsys.readouterr().err


# --- two tasks train as --nproc 2 does ----------------------------------------------------------------------


def _job_on_a_free_port() -> int:
    """A job id whose port (the step's rendezvous) nothing on this machine holds now."""
    for job in random.sample(range(100000, 999999), 100):
        with socket.socket() as s:
            try:
                s.bind(("", slurm.port(job, 0)))
            except OSError:
                continue
            return job
    raise AssertionError("no free port in the step's range")


def _losses(run_dir: Path) -> list[tuple]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [tuple(r[k] for k in ("step", "loss", "itm", "mlm", "itc")) for r in records
            if r.get("split", "train") == "train"]


@pytest.mark.integration
def test_two_tasks_of_a_step_train_as_nproc_2_does(two_ranks, tmp_path):
    """Two processes of `graphspec run SPEC` with a step's variables (no scontrol, the node list `localhost`),
    started together as srun starts them: each is one rank, none launches another; rank 0 writes the build,
    both use runs/NAME/slurm-JOB-STEP, and the losses are those of `--nproc 2` (the same two ranks' sums:
    equal to the last digit)."""
    from graphspec.studies.execute import fresh_env

    spec_file, reference = two_ranks
    job = _job_on_a_free_port()
    (tmp_path / "bin").mkdir()
    threads = os.environ.get("OMP_NUM_THREADS") or str(launch.threads_per_rank(2))  # as torchrun's ranks had
    base = {**outside_slurm(fresh_env()), "PATH": path_without_scontrol(tmp_path / "bin"), "OMP_NUM_THREADS": threads}
    tasks = []
    try:
        for rank in (0, 1):
            log = tmp_path / f"task{rank}.log"
            with log.open("w") as out:
                tasks.append((log, subprocess.Popen(
                    [sys.executable, "-m", "graphspec.cli", "run", str(spec_file), "--set",
                     "distributed.world_size=2", "--set", "distributed.zero_stage=0"], cwd=tmp_path, stdout=out,
                    stderr=subprocess.STDOUT, env={**base, **step_vars(rank, 2, job)})))
        codes = [p.wait(timeout=300) for _, p in tasks]
    finally:  # a task left waiting for the other (which failed) ends with the test
        for _, p in tasks:
            if p.poll() is None:
                p.kill()
    said = [log.read_text() for log, _ in tasks]
    assert codes == [0, 0], said[0][-3000:] + said[1][-3000:]
    assert not any("launching" in s for s in said)
    run_dir = tmp_path / "runs" / "tiny" / f"slurm-{job}-0"
    assert (tmp_path / "build" / "tiny" / slurm.MARK).read_text() == f"{job}.0.0 written\n"
    assert json.loads((run_dir / "summary.json").read_text())["ranks"] == 2
    assert _losses(run_dir) == _losses(reference) and len(_losses(run_dir)) == 24
