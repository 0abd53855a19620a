"""Periodic checkpoints and exact resume: a run killed with SIGKILL and resumed follows the uninterrupted
loss trajectory; only the newest checkpoints are kept; half-written ones and changed frozen weights are refused."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from graphspec.cli import main
from graphspec.runtime.resume import checksums

STEPS, EVERY = 60, 20


def _spec_data() -> dict:
    """The tiny spec, long enough to be killed midway, checkpointing every 20 steps; the text tower frozen
    (so that frozen weights are recorded) and dropout on (so that the random state matters)."""
    from tests.runtime.conftest import train_spec_data

    spec = train_spec_data()
    spec["nodes"]["text_tower"]["freeze"] = True
    spec["nodes"]["fusion"]["dropout"] = 0.1
    spec["data"]["val"] = None
    spec["data"]["workers"] = 2  # signals and kills reach a run whose batches come from worker processes
    spec["train"].update(steps=STEPS, log_every=1, val_every=None, checkpoint_every=EVERY, keep_checkpoints=2)
    return spec


@pytest.fixture
def spec_file(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(_spec_data()))
    return path


def _losses(run_dir) -> dict[int, float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if r.get("split", "train") == "train"]
    assert steps == sorted(set(steps)), "every step logged once, in order"
    return {r["step"]: r["loss"] for r in records if r.get("split", "train") == "train"}


def _start(spec_file, run_dir):
    from graphspec.studies.execute import fresh_env

    return subprocess.Popen([sys.executable, "-m", "graphspec.cli", "run", str(spec_file), "--run-dir",
                             str(run_dir), "--build-dir", str(run_dir.parent / "build-killed")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=fresh_env())


def _kill_after_first_checkpoint(process, run_dir, seconds=240):
    deadline = time.monotonic() + seconds
    while not (run_dir / "checkpoints" / f"step-{EVERY:08d}").is_dir():
        assert process.poll() is None, "the run ended before its first checkpoint"
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (run_dir / "summary.json").exists(), "killed midway, not after the end"


@pytest.fixture(scope="module")
def module_spec(tmp_path_factory):
    path = tmp_path_factory.mktemp("spec") / "spec.yaml"
    path.write_text(yaml.safe_dump(_spec_data()))
    return path


@pytest.fixture(scope="module")
def whole(module_spec, tmp_path_factory):
    """The uninterrupted run every stopped and resumed one is compared with, step by step."""
    run_dir = tmp_path_factory.mktemp("whole") / "run"
    assert main(["run", str(module_spec), "--run-dir", str(run_dir), "--build-dir", str(run_dir.parent / "b")]) == 0
    return run_dir


@pytest.fixture(scope="module")
def killed(module_spec, tmp_path_factory):
    """A run killed with SIGKILL after its first checkpoint; each test takes a copy."""
    run_dir = tmp_path_factory.mktemp("killed") / "run"
    _kill_after_first_checkpoint(_start(module_spec, run_dir), run_dir)
    return run_dir


def _copy(run_dir, tmp_path):
    shutil.copytree(run_dir, tmp_path / "run", symlinks=True)
    return tmp_path / "run"


@pytest.mark.integration
def test_a_killed_run_resumes_on_the_uninterrupted_trajectory_never_from_a_half_written_checkpoint(
        killed, whole, tmp_path):
    run_dir = _copy(killed, tmp_path)
    newest = sorted((run_dir / "checkpoints").glob("step-*"))[-1]
    fake = run_dir / "checkpoints" / "step-99999999.partial"  # newer, but cut off while being written
    shutil.copytree(newest, fake)
    (fake / "state.json").write_bytes(b"cut off")
    assert main(["run", "--resume", str(run_dir)]) == 0  # reading the cut-off state.json would have failed
    a, b = _losses(whole), _losses(run_dir)
    assert sorted(b) == list(range(1, STEPS + 1)) and not fake.exists()
    # Logged to 5 decimals; the killed part ran in a process of its own, where float sums may round otherwise
    # (seen once in 120 steps after other tests ran ZeRO-3 in this process: 3.18791 against 3.18790).
    assert b == pytest.approx(a, rel=0, abs=1.5e-5)
    assert [p.name for p in sorted((run_dir / "checkpoints").iterdir())] == \
        [f"step-{s:08d}" for s in (STEPS - 2 * EVERY, STEPS - EVERY)]  # keep_checkpoints: 2
    assert json.loads((run_dir / "summary.json").read_text())["steps"] == STEPS


def test_changed_frozen_weights_are_refused_naming_the_tower(killed, tmp_path, capsys):
    run_dir = _copy(killed, tmp_path)
    for ckpt in (run_dir / "checkpoints").glob("step-*"):  # as if the tower's source had changed since
        record = json.loads((ckpt / "frozen.json").read_text())
        record["text_tower"]["sha256"] = "0" * 64
        (ckpt / "frozen.json").write_text(json.dumps(record))
        (ckpt / "checksums.json").write_text(json.dumps(checksums(ckpt)))
    assert main(["run", "--resume", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert "frozen.json" in err and "the frozen weights of text_tower differ from those the run trained with" in err


@pytest.mark.parametrize("damage", ["cut", "altered", "missing", "cut-state", "altered-state"])
def test_a_damaged_checkpoint_file_is_named_before_anything_loads(damage, killed, tmp_path, capsys):
    run_dir = _copy(killed, tmp_path)
    newest = sorted((run_dir / "checkpoints").glob("step-*"))[-1]
    victim = newest / "state.json" if damage.endswith("-state") else next(newest.glob("engine/*model_states.pt"))
    damage = damage.removesuffix("-state")
    data = victim.read_bytes()
    if damage == "cut":
        victim.write_bytes(data[: len(data) // 2])
    elif damage == "altered":
        victim.write_bytes(data[:-8] + b"\x00" * 8)
    else:
        victim.unlink()
    assert main(["run", "--resume", str(run_dir)]) == 2
    err = capsys.readouterr().err
    expected = {"cut": "this file was cut short", "altered": "this file was altered after the checkpoint was written",
                "missing": "a file of this checkpoint is missing"}[damage]
    assert f"{victim}: {expected}" in err and "Traceback" not in err


def test_resume_without_checkpoints_says_how_to_get_them(train_spec, tmp_path, capsys):
    train_spec["train"].update(steps=2, val_every=None, schedule={"warmup": 0})
    train_spec["data"]["val"] = None
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(train_spec))
    assert main(["run", str(tmp_path / "spec.yaml"), "--run-dir", str(tmp_path / "run")]) == 0
    assert main(["run", "--resume", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "no complete training checkpoint to resume from" in err and "train.checkpoint_every" in err


def test_resume_of_a_folder_that_is_no_run_is_refused(tmp_path, capsys):
    assert main(["run", "--resume", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err


def _short(spec_file, stage: int = 0, steps: int = 6, every: int = 2, keep: int = 2) -> list[str]:
    """--set arguments for a few steps with a checkpoint every `every` (none at the last step)."""
    return [str(spec_file), "--set", f"distributed.zero_stage={stage}", "--set", f"train.steps={steps}", "--set",
            f"train.checkpoint_every={every}", "--set", f"train.keep_checkpoints={keep}", "--set", "data.workers=0"]


def test_a_run_written_into_its_own_build_directory_resumes_too(spec_file, tmp_path):
    """--run-dir equal to --build-dir: the build is not copied into itself, and --resume still finds it."""
    same = tmp_path / "same"
    assert main(["run", *_short(spec_file), "--run-dir", str(same), "--build-dir", str(same)]) == 0
    assert not (same / "build").exists()
    shutil.rmtree(same / "checkpoints" / "step-00000004")  # as if killed between the two checkpoints
    assert main(["run", "--resume", str(same)]) == 0
    assert sorted(_losses(same)) == list(range(1, 7))


class Payload:
    """What a hostile run folder would hold: unpickling it runs a command."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("stage, files", [(0, "*.pt"), (3, "*.pt"), (1, "*optim_states.pt"),
                                          (2, "*optim_states.pt")])
def test_a_payload_planted_in_every_pickle_file_never_runs(stage, files, spec_file, tmp_path, capsys):
    """Every pickle-format file of a checkpoint replaced by one that runs a command when unpickled, and the
    file list updated to match (a deliberate attacker): resume refuses the first file it reads, naming it.
    Under ZeRO 1 and 2 only the optimizer states are replaced, so the refused file is the one DeepSpeed reads
    after the model states (the loss scaler and fragment addresses live there)."""
    import torch

    run_dir, marker = tmp_path / "run", tmp_path / "pwned"
    assert main(["run", *_short(spec_file, stage, steps=4), "--run-dir", str(run_dir), "--build-dir",
                 str(tmp_path / "b")]) == 0
    planted = []
    for ckpt in (run_dir / "checkpoints").glob("step-*"):
        for pickled in ckpt.rglob(files):
            torch.save({"module": Payload(marker), "optimizer_state_dict": Payload(marker)}, pickled)
            planted.append(pickled)
        (ckpt / "checksums.json").write_text(json.dumps(checksums(ckpt)))
    assert len(planted) == (1 if stage in (0, 1, 2) else 2)  # model states, and ZeRO's optimizer states
    assert main(["run", "--resume", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert "holds objects graphspec does not load" in err and ".pt:" in err and "Traceback" not in err
    assert stage in (0, 3) or f"{planted[0]}:" in err  # the optimizer file itself was refused
    assert "posix.system" in err or "os.system" in err  # what it would have called
    assert not marker.exists()
    step = next((run_dir / "checkpoints").glob("step-*"))  # an export reads the same files the same way
    assert main(["export", str(step), "-o", str(tmp_path / "export")]) == 2
    err = capsys.readouterr().err
    assert "holds objects graphspec does not load" in err and "Traceback" not in err
    assert not marker.exists() and not (tmp_path / "export").exists()


def _metrics_step(run_dir) -> int:
    path = run_dir / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.is_file() else []
    return json.loads(lines[-1])["step"] if lines else 0


@pytest.mark.integration
def test_one_ctrl_c_checkpoints_and_exits_resumable_then_resume_follows_the_trajectory(module_spec, whole, tmp_path):
    """A single Ctrl-C (SIGINT) between two periodic checkpoints: the step finishes, a checkpoint of it is
    written, exit 75; the resumed run logs the uninterrupted one's losses. (SIGTERM takes the same path; it is
    tested on two ranks, where it is forwarded to them.)"""
    stopped = tmp_path / "stopped"
    process = _start(module_spec, stopped)
    deadline = time.monotonic() + 240
    while _metrics_step(stopped) < EVERY + 5:  # between two periodic checkpoints
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=120) == 75
    written = sorted(p.name for p in (stopped / "checkpoints").glob("step-*"))
    assert len(written) == 2 and written[0] == f"step-{EVERY:08d}" and written[1] > f"step-{EVERY + 4:08d}"
    assert not (stopped / "summary.json").exists()  # not done: a study would run it again
    assert main(["run", "--resume", str(stopped)]) == 0
    assert _losses(stopped) == pytest.approx(_losses(whole), rel=0, abs=1.5e-5)


@pytest.mark.integration
def test_stop_at_pauses_at_a_step_and_resume_follows_the_uninterrupted_trajectory(module_spec, whole, tmp_path):
    """A study's rungs: `--stop-at` ends the run after a step that is no periodic checkpoint, under the full run's
    schedule; resuming to a second stop and then to the end logs the uninterrupted run's losses."""
    run_dir = tmp_path / "rungs"
    args = ["run", str(module_spec), "--run-dir", str(run_dir), "--build-dir", str(tmp_path / "b")]
    assert main([*args, "--stop-at", str(EVERY + 5)]) == 0
    stopped = json.loads((run_dir / "stopped.json").read_text())
    assert stopped["stopped_at"] == EVERY + 5 and stopped["steps"] == STEPS and not (run_dir / "summary.json").exists()
    assert Path(stopped["checkpoint"]).name == f"step-{EVERY + 5:08d}" and _metrics_step(run_dir) == EVERY + 5
    assert main(["run", "--resume", str(run_dir), "--stop-at", str(2 * EVERY + 3)]) == 0
    assert json.loads((run_dir / "stopped.json").read_text())["stopped_at"] == 2 * EVERY + 3
    assert main(["run", "--resume", str(run_dir)]) == 0
    assert _losses(run_dir) == pytest.approx(_losses(whole), rel=0, abs=1.5e-5)
    assert json.loads((run_dir / "summary.json").read_text())["steps"] == STEPS


def test_stop_at_validates_at_its_step_and_refuses_a_step_already_passed(spec_file, tmp_path, capsys):
    from tests.runtime.conftest import train_spec_data

    spec = train_spec_data()
    spec["train"].update(steps=8, val_every=None, checkpoint_every=None)
    (tmp_path / "val.yaml").write_text(yaml.safe_dump(spec))
    run_dir = tmp_path / "run"
    assert main(["run", str(tmp_path / "val.yaml"), "--run-dir", str(run_dir), "--build-dir", str(tmp_path / "b"),
                 "--stop-at", "3"]) == 0
    stopped = json.loads((run_dir / "stopped.json").read_text())
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert stopped["val"] and [r["step"] for r in records if r.get("split") == "val"] == [3]
    assert main(["run", "--resume", str(run_dir), "--stop-at", "2"]) == 2
    assert "the run is already at step 3" in capsys.readouterr().err


def test_a_full_disk_keeps_the_previous_checkpoint_and_says_so(spec_file, tmp_path, capsys, monkeypatch):
    import errno

    import torch

    real_save = torch.save
    calls = {"n": 0}

    def full_disk_once(obj, f, *a, **k):
        if "step-00000004" in str(f) and calls["n"] == 0:
            calls["n"] += 1
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", full_disk_once)
    run_dir = tmp_path / "run"
    assert main(["run", *_short(spec_file, steps=5, keep=3), "--run-dir", str(run_dir), "--build-dir",
                 str(tmp_path / "b")]) == 0
    err = capsys.readouterr().err
    assert "warning: the checkpoint of step 4 could not be written (No space left on device); the " \
           f"previous one, {run_dir / 'checkpoints' / 'step-00000002'}, is intact" in err
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == ["step-00000002"]  # no partial left
    from graphspec.runtime.resume import verify

    verify(run_dir / "checkpoints" / "step-00000002")  # intact: every file as written


@pytest.mark.integration
@pytest.mark.parametrize("signals, code", [((signal.SIGUSR1,), 75), ((signal.SIGINT, signal.SIGINT), 130)])
def test_sigusr1_stops_gracefully_and_ctrl_c_twice_stops_now(signals, code, spec_file, tmp_path):
    run_dir = tmp_path / "run"
    process = _start(spec_file, run_dir)
    deadline = time.monotonic() + 240
    while _metrics_step(run_dir) < 5:
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    for sig in signals:
        process.send_signal(sig)
        time.sleep(0.01)
    assert process.wait(timeout=120) == code
    written = list((run_dir / "checkpoints").glob("step-*")) if (run_dir / "checkpoints").is_dir() else []
    if code == 75:  # a checkpoint of the step the signal arrived in, before the first periodic one
        assert len(written) == 1 and 5 <= int(written[0].name.split("-")[1]) < EVERY
    else:
        assert not [p for p in written if not p.name.endswith(".partial")]


@pytest.mark.parametrize("stage", [1, 2])
def test_zero_1_and_2_checkpoints_resume_through_the_allow_list(stage, spec_file, tmp_path):
    """Their optimizer files hold DeepSpeed objects (a loss scaler, fragment addresses): weights_only loads them."""
    run_dir = tmp_path / "run"
    args = [*_short(spec_file, stage, steps=4), "--set", "train.precision=bf16"]
    assert main(["run", *args, "--run-dir", str(run_dir), "--build-dir", str(tmp_path / "b")]) == 0
    whole = _losses(run_dir)
    (run_dir / "summary.json").unlink()
    assert main(["run", "--resume", str(run_dir)]) == 0  # from step 2: the last two steps again
    again = _losses(run_dir)
    assert sorted(again) == [1, 2, 3, 4]
    assert [again[s] for s in (3, 4)] == pytest.approx([whole[s] for s in (3, 4)], rel=0, abs=1.5e-5)


def test_a_training_checkpoint_of_format_1_is_refused_naming_its_format(tmp_path):
    """graphspec 0.1 pickled its random states in state.pt: that folder is refused, never unpickled."""
    from graphspec.runtime.resume import ResumeError, _read_state

    folder = tmp_path / "step-00000010"
    folder.mkdir()
    (folder / "state.pt").write_bytes(b"not read")
    with pytest.raises(ResumeError) as e:
        _read_state(folder)
    assert "a training checkpoint of format 1" in e.value.format() and str(folder) in e.value.format()


def test_a_gpus_random_state_is_checkpointed_and_restored(spec_file, tmp_path, monkeypatch, capsys):
    """On a GPU, dropout draws from the device's generator: a checkpoint keeps each rank's, and a resume
    restores it (here torch.cuda is a stand-in that hands out and takes back a state); a GPU checkpoint resumed
    on a machine without one is refused rather than silently continued on other draws."""
    import torch
    from safetensors.torch import load_file

    from graphspec.runtime import resume

    class Cuda:
        state, restored = torch.arange(16, dtype=torch.uint8), []

        def is_initialized(self) -> bool:
            return True

        def get_rng_state(self) -> torch.Tensor:
            return self.state.clone()

        def set_rng_state(self, state: torch.Tensor) -> None:
            self.restored.append(state)

    cuda = Cuda()
    monkeypatch.setattr(resume, "_cuda", lambda: cuda)
    run_dir = tmp_path / "run"
    assert main(["run", *_short(spec_file, steps=4), "--run-dir", str(run_dir), "--build-dir",
                 str(tmp_path / "b")]) == 0
    saved = load_file(str(run_dir / "checkpoints" / "step-00000002" / "rng.safetensors"))
    assert torch.equal(saved["cuda"], cuda.state)
    (run_dir / "summary.json").unlink()
    monkeypatch.setattr(resume, "_cuda", lambda: None)
    assert main(["run", "--resume", str(run_dir)]) == 2  # no GPU here to continue its draws on
    assert "this checkpoint was written on a GPU, and this machine has none" in capsys.readouterr().err
    monkeypatch.setattr(resume, "_cuda", lambda: cuda)
    assert main(["run", "--resume", str(run_dir)]) == 0
    assert len(cuda.restored) == 1 and torch.equal(cuda.restored[0], cuda.state)
