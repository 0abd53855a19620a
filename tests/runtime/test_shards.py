"""webdataset: shards (img2dataset's layout) as a stream for captions pretraining: every sample read once per
epoch, a run killed mid-shard resumes on the uninterrupted trajectory, bad members are counted or named."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time

import pytest
import yaml
from PIL import Image

from graphspec.cli import main
from graphspec.runtime.data.records import ReadStats
from graphspec.runtime.data.shards import ShardStream

COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (50, 90, 230), "white": (240, 240, 240)}


def _jpeg(rgb) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (24, 16), rgb).save(buf, format="JPEG")
    return buf.getvalue()


def write_shards(folder, shards: int = 4, per_shard: int = 12, bad: dict | None = None) -> str:
    """shards of KEY.jpg + KEY.txt (every third with KEY.json instead of .txt); `bad`: {(shard, k): what}."""
    folder.mkdir(parents=True, exist_ok=True)
    names = list(COLOURS)
    for s in range(shards):
        with tarfile.open(folder / f"{s:05d}.tar", "w") as tar:
            for k in range(per_shard):
                key = f"{s:05d}{k:04d}"
                colour = names[(s * per_shard + k) % len(names)]
                members = {"jpg": _jpeg(COLOURS[colour])}
                caption = f"a {colour} picture number {k}"
                if k % 3:
                    members["txt"] = caption.encode()
                else:
                    members["json"] = json.dumps({"caption": caption, "key": key}).encode()
                what = (bad or {}).get((s, k))
                if what == "no image":
                    del members["jpg"]
                elif what == "corrupt":
                    members["jpg"] = b"not a jpeg"
                for ext, data in members.items():
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return f"{folder}/{{00000..{shards - 1:05d}}}.tar"


def test_a_rank_reads_its_shards_in_order_and_resumes_from_a_position(tmp_path):
    pattern = write_shards(tmp_path / "shards")
    one = ShardStream(pattern, ("data", "train"), 0, 0, 1, False, ReadStats())
    first, after = one.take(0, 20)
    assert len({s.key for s in first}) == 20 and after.epoch == 0
    again = ShardStream(pattern, ("data", "train"), 0, 0, 1, False, ReadStats())
    again.start(20, after)  # as a resumed run does: open that shard at that sample
    rest, _ = again.take(20, 10)
    whole, _ = ShardStream(pattern, ("data", "train"), 0, 0, 1, False, ReadStats()).take(0, 30)
    assert [s.key for s in first + rest] == [s.key for s in whole]
    epoch, _ = one.take(20, 28)  # the rest of the first epoch: every sample once
    assert sorted(s.key for s in first + epoch) == sorted(f"{s:05d}{k:04d}" for s in range(4) for k in range(12))
    halves = [ShardStream(pattern, ("data", "train"), 0, r, 2, False, ReadStats()).order(0) for r in (0, 1)]
    assert sorted(halves[0] + halves[1]) == sorted(one.order(0)) and not set(halves[0]) & set(halves[1])


def test_bad_members_and_a_cut_tar_are_counted_or_named(tmp_path):
    pattern = write_shards(tmp_path / "shards", bad={(0, 2): "no image"})
    with open(tmp_path / "shards" / "00003.tar", "r+b") as f:  # cut the last shard in the middle of a member
        f.truncate(os.path.getsize(tmp_path / "shards" / "00003.tar") // 2)
    from graphspec.language.errors import SpecError

    stats = ReadStats()
    stream = ShardStream(pattern, ("data", "train"), 0, 0, 1, True, stats)
    stream.take(0, 48)
    assert stats.reasons["missing member"] == 1 and stats.reasons["truncated shard"] == 1
    assert "00000.tar: sample '000000002' has no image" in " ".join(stats.messages)
    strict = ShardStream(pattern, ("data", "train"), 0, 0, 1, False, ReadStats())
    with pytest.raises(SpecError) as info:
        strict.take(0, 48)
    assert "has no image" in info.value.format() or "cannot read past" in info.value.format()


@pytest.fixture
def spec_file(train_spec, tmp_path):
    pattern = write_shards(tmp_path / "shards")
    train_spec["data"] = {"train": {"source": f"webdataset:{pattern}", "skip_bad": True}, "workers": 2}
    train_spec["train"].update(steps=24, log_every=1, val_every=None, checkpoint_every=5, keep_checkpoints=2)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(train_spec))
    return path


def _losses(run_dir) -> dict[int, float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if "split" not in r}


@pytest.mark.integration
def test_a_stream_run_killed_mid_shard_resumes_on_the_uninterrupted_trajectory(spec_file, tmp_path):
    """Also: the stream read by 2 worker processes and by the training process itself (0 workers) gives the
    same batches, so the same losses."""
    from graphspec.studies.execute import fresh_env

    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert main(["run", str(spec_file), "--run-dir", str(whole), "--build-dir", str(tmp_path / "b1")]) == 0
    summary = json.loads((whole / "summary.json").read_text())
    assert summary["data"]["train_reads"]["stream_read"] == 24 * 8  # every sample of 4 epochs, read once
    assert main(["run", str(spec_file), "--set", "data.workers=0", "--run-dir", str(tmp_path / "w0"), "--build-dir",
                 str(tmp_path / "b0")]) == 0
    assert _losses(tmp_path / "w0") == _losses(whole) and len(_losses(whole)) == 24
    process = subprocess.Popen([sys.executable, "-m", "graphspec.cli", "run", str(spec_file), "--run-dir",
                                str(killed), "--build-dir", str(tmp_path / "b2")], env=fresh_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not (killed / "checkpoints" / f"step-{5:08d}").is_dir() or len(_losses(killed)) < 7:
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)  # at step 7: 56 samples in, the second epoch's first shard
    process.wait()
    state = json.loads((killed / "checkpoints" / f"step-{5:08d}" / "state.json").read_text())
    assert state["reading"]["position"] == [0, 3, 4]  # 40 samples: shard 4 of the first epoch, 4 read
    assert main(["run", "--resume", str(killed)]) == 0
    assert _losses(killed) == pytest.approx(_losses(whole), rel=0, abs=1.5e-5)


def test_streams_are_for_captions_only(spec_file, capsys):
    spec = yaml.safe_load(spec_file.read_text())
    spec["data"]["train"]["samples"] = 10
    spec_file.write_text(yaml.safe_dump(spec))
    assert main(["validate", str(spec_file)]) == 2
    assert "data.train.samples: a webdataset stream takes no `samples`" in capsys.readouterr().err


def test_a_member_over_the_limit_is_a_bad_sample_never_read(tmp_path, monkeypatch):
    """A member whose header declares more than MAX_MEMBER (256 MiB; 2 KB here) is skipped over, not read:
    a bad sample named by shard and key, counted with skip_bad."""
    from graphspec.language.errors import SpecError
    from graphspec.runtime.data import shards

    pattern = write_shards(tmp_path / "shards", shards=1, per_shard=3)
    with tarfile.open(tmp_path / "shards" / "00000.tar", "a") as tar:
        data = b"\xff" * 5000
        info = tarfile.TarInfo("000000099.jpg")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
        info = tarfile.TarInfo("000000099.txt")
        info.size = 5
        tar.addfile(info, io.BytesIO(b"large"))
    monkeypatch.setattr(shards, "MAX_MEMBER", 2048)
    stats = ReadStats()
    samples, _ = ShardStream(pattern, ("data", "train"), 0, 0, 1, True, stats).take(0, 4)
    assert stats.reasons["member too large"] >= 1, stats.reasons
    assert "sample '000000099' has a member over 2,048 bytes: jpg (5,000 bytes) (not read)" in " ".join(stats.messages)
    with pytest.raises(SpecError, match="000000099"):
        ShardStream(pattern, ("data", "train"), 0, 0, 1, False, ReadStats()).take(0, 4)
