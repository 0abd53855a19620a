"""Seeded mutations of the files a run reads beside its spec, each read at the layer it hits, and judged.

    python tests/fuzz_files.py --cases 3000 [--seed 0] [--families arrow,tar,jsonl,image,export]

Families: Arrow tables (bytes flipped anywhere, the image column's offsets and validity bitmap overwritten,
truncation at any length), tar shards (bytes flipped, a member's size field rewritten, truncation), JSONL
manifests (bytes flipped, invalid UTF-8, values of the wrong type, lines dropped or doubled), images (PNG,
JPEG, GIF bytes flipped or cut) and export folders (the manifest's JSON mutated, the weights' header flipped or
cut). A case passes when its reader returns (bad rows skipped and counted under skip_bad) or raises
graphspec's own error (BadData or a GraphspecError) whose message names the file; any other exception, a case
over TIME_LIMIT seconds, or a case that raised the process's resident memory more than 2 GiB above what it held
before the case fails. Prints one JSON line: {"cases", "failures": [...], "by_family", "peak_rss_mb" (the
process, bases and imports included), "case_peak_mb" (the most one case added), "seconds"}; exits 1 when
anything failed.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import resource
import shutil
import signal
import sys
import tarfile
import tempfile
import time
import traceback
from pathlib import Path

TIME_LIMIT = 20  # seconds per case
FAMILIES = ("arrow", "tar", "jsonl", "image", "export")


class Hang(Exception):
    pass


def _png(color, size=(24, 16), fmt="PNG") -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format=fmt)
    return buf.getvalue()


def _flip(data: bytes, rng: random.Random, at: tuple[int, int] | None = None) -> bytes:
    out = bytearray(data)
    lo, hi = at or (0, len(out))
    for _ in range(rng.choice((1, 2, 8, 32))):
        if hi > lo:
            out[rng.randrange(lo, hi)] = rng.randrange(256)
    return bytes(out)


def _cut(data: bytes, rng: random.Random) -> bytes:
    return data[: rng.randrange(len(data))]


# --------------------------------------------------------------------------- the bases


def arrow_base(folder: Path) -> Path:
    import pyarrow as pa

    colors = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    rows = [{"image": _png(colors[i % 3]) if i != 4 else None, "sentences": [["p", f"statement {i}"]],
             "labels": [i % 3]} for i in range(8)]
    table = pa.Table.from_pylist(rows)
    path = folder / "snli_train.arrow"
    with pa.OSFile(str(path), "wb") as sink, pa.RecordBatchFileWriter(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=4)
    return path


def _arrow_regions(path: Path) -> list[tuple[int, int]]:
    """Byte ranges of the image column's validity and offsets buffers in the file."""
    import pyarrow as pa

    source = pa.memory_map(str(path), "r")
    reader = pa.ipc.open_file(source)
    source.seek(0)
    base = source.read_buffer(1).address
    out = []
    for b in range(reader.num_record_batches):
        for buf in reader.get_batch(b).column("image").buffers()[:2]:
            if buf is not None:
                out.append((buf.address - base, buf.address - base + buf.size))
    return out


def tar_base(folder: Path) -> Path:
    path = folder / "00000.tar"
    with tarfile.open(path, "w") as tar:
        for k in range(4):
            for ext, data in (("jpg", _png((40 * k, 0, 0), fmt="JPEG")), ("txt", f"caption {k}".encode())):
                info = tarfile.TarInfo(f"{k:09d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def jsonl_base(folder: Path) -> Path:
    (folder / "imgs").mkdir(exist_ok=True)
    for k in range(3):
        (folder / "imgs" / f"{k}.png").write_bytes(_png((80 * k, 0, 0)))
    lines = [{"image": f"imgs/{k % 3}.png", "text": f"hypothesis {k}", "label": k % 3} for k in range(5)]
    path = folder / "data.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def export_base(folder: Path) -> Path:
    """A tiny model trained one step and exported (no program): built once per run."""
    import yaml

    import graphspec
    from graphspec.compiler.folders import read_build
    from graphspec.runtime.export import export_model
    from graphspec.runtime.train import run
    from tests.runtime.conftest import train_spec_data

    spec = train_spec_data()
    spec["train"].update(steps=1, val_every=None, log_every=1, schedule={"warmup": 0})
    spec["data"] = {"train": {"samples": 16}}
    (folder / "spec.yaml").write_text(yaml.safe_dump(spec))
    graphspec.compile(graphspec.load(folder / "spec.yaml"), out=folder / "build")
    run(read_build(folder / "build"), folder / "run", show_bar=False)
    return export_model(folder / "run", folder / "exported", program=False)


# --------------------------------------------------------------------------- one case per family


def case_arrow(base: Path, work: Path, rng: random.Random) -> tuple[Path, object]:
    from graphspec.runtime.data.arrow import ReadStats, read_arrow

    data = base.read_bytes()
    how = rng.choice(("flip", "cut", "offsets", "validity", "offsets"))
    regions = _arrow_regions(base)
    if how == "flip":
        data = _flip(data, rng)
    elif how == "cut":
        data = _cut(data, rng)
    else:
        lo, hi = regions[rng.randrange(len(regions))] if how == "offsets" else regions[0]
        out = bytearray(data)
        at = rng.randrange(lo, max(lo + 1, hi - 3))
        value = rng.choice((-1, -5, 2**31 - 1, 2**30, 0, rng.randrange(-2**31, 2**31)))
        out[at:at + 4] = value.to_bytes(4, "little", signed=True)
        data = bytes(out)
    path = work / base.name
    path.write_bytes(data)

    def read():
        for strict in (False, True):
            for record in read_arrow(work, "snli", "train", skip_bad=not strict,
                                     stats=None if strict else ReadStats(), refs=True):
                for image in record.get("images", ()):
                    image.load(32)
            list(read_arrow(work, "snli", "train", skip_bad=True, stats=ReadStats(), decode_images=True))
    return path, read


def case_tar(base: Path, work: Path, rng: random.Random) -> tuple[Path, object]:
    from graphspec.runtime.data.records import ReadStats
    from graphspec.runtime.data.shards import ShardStream

    data = base.read_bytes()
    how = rng.choice(("flip", "cut", "size"))
    if how == "flip":
        data = _flip(data, rng)
    elif how == "cut":
        data = _cut(data, rng)
    else:
        out = bytearray(data)
        header = 512 * rng.randrange(len(data) // 512)
        out[header + 124: header + 136] = rng.choice((b"77777777777\0", b"00000001000\0", b"99999999999\0",
                                                       bytes(rng.randrange(256) for _ in range(12))))
        data = bytes(out)
    path = work / base.name
    path.write_bytes(data)

    def read():
        for skip in (True, False):
            stream = ShardStream(str(path), ("data", "train"), 0, 0, 1, skip, ReadStats())
            samples, _ = stream.take(0, 6)
            for sample in samples:
                sample.image.load(32)
    return path, read


def case_jsonl(base: Path, work: Path, rng: random.Random) -> tuple[Path, object]:
    from graphspec.runtime.data.jsonl import read_jsonl
    from graphspec.runtime.data.records import ReadStats
    from graphspec.runtime.tasks import jsonl_layout

    shutil.copytree(base.parent / "imgs", work / "imgs", dirs_exist_ok=True)
    lines = base.read_text().splitlines()
    how = rng.choice(("flip", "utf8", "type", "lines", "image"))
    if how == "flip":
        text = _flip(base.read_bytes(), rng)
    elif how == "utf8":
        k = rng.randrange(len(lines))
        text = "\n".join(lines).encode().replace(lines[k].encode(), lines[k].encode()[:10] + b"\xff\xfe" + b"\n", 1)
    elif how == "type":
        k = rng.randrange(len(lines))
        obj = json.loads(lines[k])
        obj[rng.choice(list(obj))] = rng.choice((7, None, [1, 2], {"a": 1}, "x" * 10_000, -1e308, True, ""))
        lines[k] = json.dumps(obj)
        text = ("\n".join(lines) + "\n").encode()
    elif how == "lines":
        rng.shuffle(lines)
        text = ("\n".join(lines[: rng.randrange(len(lines) + 1)] * rng.choice((1, 2))) + "\n").encode()
    else:
        image = work / "imgs" / f"{rng.randrange(3)}.png"
        image.write_bytes(_flip(image.read_bytes(), rng) if rng.random() < 0.5 else _cut(image.read_bytes(), rng))
        text = base.read_bytes()
    path = work / base.name
    path.write_bytes(text)

    def read():
        layout = jsonl_layout("snli_ve")
        for record in read_jsonl(path, layout, skip_bad=True, stats=ReadStats(), lazy=True):
            for image in record.get("images", ()):
                try:
                    image.load(32)
                except Exception as e:  # noqa: BLE001 - judged by the caller, as a BadData naming the image
                    if type(e).__name__ != "BadData" or "imgs" not in str(e):
                        raise
        list(read_jsonl(path, layout))
    return path, read


def case_image(base: Path, work: Path, rng: random.Random) -> tuple[Path, object]:
    from graphspec.runtime.data.images import FileImage

    formats = ("PNG", "JPEG", "GIF", "WEBP", "BMP")
    data = _png((rng.randrange(256), 0, 0), (rng.randrange(1, 64), rng.randrange(1, 64)), rng.choice(formats))
    data = _flip(data, rng) if rng.random() < 0.6 else _cut(data, rng)
    path = work / "image.bin"
    path.write_bytes(data)
    return path, lambda: FileImage(str(path), str(path)).load(rng.choice((None, 32)))


def case_export(base: Path, work: Path, rng: random.Random) -> tuple[Path, object]:
    from graphspec.runtime.inference import load_model

    folder = work / "exported"
    shutil.copytree(base, folder)
    how = rng.choice(("manifest", "manifest", "header", "cut", "json"))
    if how == "manifest":
        manifest = json.loads((folder / "graphspec.json").read_text())
        path_to = rng.choice((("spec", "nodes", "fusion", "layers"), ("spec", "nodes", "fusion", "width"),
                              ("spec", "inputs", "text", "max_length"), ("format_version",), ("spec",), ("tensors",),
                              ("labels",), ("spec", "heads")))
        node = manifest
        for part in path_to[:-1]:
            node = node[part]
        node[path_to[-1]] = rng.choice((None, 0, -3, 40, 4096, "x", [], {}, 1e9))
        (folder / "graphspec.json").write_text(json.dumps(manifest))
        target = folder / "graphspec.json"
    elif how == "json":
        target = folder / "graphspec.json"
        target.write_bytes(_flip(target.read_bytes(), rng) if rng.random() < 0.5 else _cut(target.read_bytes(), rng))
    else:
        target = folder / "model.safetensors"
        data = target.read_bytes()
        header = 8 + int.from_bytes(data[:8], "little")
        target.write_bytes(_flip(data, rng, (0, header)) if how == "header" else _cut(data, rng))
    return target, lambda: load_model(folder)


CASES = {"arrow": (arrow_base, case_arrow), "tar": (tar_base, case_tar), "jsonl": (jsonl_base, case_jsonl),
         "image": (lambda folder: folder, case_image), "export": (export_base, case_export)}


# --------------------------------------------------------------------------- the judge


def judge(path: Path, read) -> str | None:
    """None when the case ended as it should; else what went wrong."""
    from graphspec.language.errors import GraphspecError
    from graphspec.runtime.data.records import BadData

    signal.alarm(TIME_LIMIT)
    try:
        read()
        return None
    except Hang:
        return f"no answer in {TIME_LIMIT} s"
    except (BadData, GraphspecError) as e:
        text = e.format() if isinstance(e, GraphspecError) else e.message
        named = path.name in text or str(path.parent) in text
        return None if named else f"{type(e).__name__} without the file's name: {text[:300]}"
    except Exception:  # noqa: BLE001 - every other exception is a traceback a user would see
        return traceback.format_exc(limit=4)[-1200:]
    finally:
        signal.alarm(0)


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--cases", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--families", default=",".join(FAMILIES))
    args = parser.parse_args(argv)
    families = args.families.split(",")

    def alarm(*_):
        raise Hang()

    signal.signal(signal.SIGALRM, alarm)
    # the export family trains a model once, which would keep every freed page of this process (the run's
    # heap policy, runtime/malloc.py): the readers' memory is what is measured here
    os.environ["GRAPHSPEC_KEEP_FREED_MEMORY"] = "0"
    for name in ("MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE",
                 "GRAPHSPEC_SINGLE_PROCESS"):  # a process of its own: not a rank of whoever started it
        os.environ.pop(name, None)
    start, failures, counts = time.perf_counter(), [], {f: 0 for f in families}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        bases = {}
        for family in families:
            (root / "base" / family).mkdir(parents=True)
            bases[family] = CASES[family][0](root / "base" / family)
        case_peak = 0.0
        for n in range(args.cases):
            family = families[n % len(families)]
            rng = random.Random(f"{args.seed}:{n}")
            work = root / "case" / str(n)
            work.mkdir(parents=True)
            path, read = CASES[family][1](bases[family], work, rng)
            held, peak_before = _rss_mb(), _peak_mb()
            problem = judge(path, read)
            added = _peak_mb() - held if _peak_mb() > peak_before else 0.0  # this case's high-water mark
            case_peak = max(case_peak, added)
            if added > 2048 and not problem:
                problem = f"the case took {added:.0f} MB of resident memory over the {held:.0f} MB held before it"
            counts[family] += 1
            if problem:
                failures.append({"case": n, "family": family, "problem": problem})
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({"cases": args.cases, "failures": failures[:20], "failed": len(failures), "by_family": counts,
                      "peak_rss_mb": round(_peak_mb()), "case_peak_mb": round(case_peak),
                      "seconds": round(time.perf_counter() - start, 1)}))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
