"""The input-pipeline benchmark: what feeding the model from image files costs, and what the pipeline saves.

    python benchmarks/data.py [--small 300] [--factor 10] [--steps 16] [--json FILE]

It builds its own data first (photographs, from scikit-image when it is installed, else matplotlib's sample
photograph and Pillow-drawn scenes, each randomly cropped, turned and tinted, saved as 640x480 JPEGs, COCO's
usual size): a caption table in the ViLT layout at two sizes, `--factor` apart, and the small one as webdataset
shards. Then, in one run, each in a process of its own:

1. decoding rate: images/s of training batches (224 pixels, micro batch 32) out of the loader alone, per
   worker count;
2. training the quickstart model on 224-pixel images at micro batch 32, under each split of the cores between
   the model's threads and decoding workers, with the ceiling that the work itself sets; the vision tower
   takes 28-pixel patches there (the quickstart's 8x8 grid, so decoding weighs as much as it can in this
   model), and once with the quickstart's own 8-pixel patches (784 an image: the model dominates);
3. peak resident memory of the same fixed number of steps, and the time to the first step, against table size;
4. images decoded per rank with 1 and 2 ranks (each rank decodes its own rows);
5. the webdataset read rate (samples/s read from the shards and decoded).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "white", "grey"]


def photographs() -> list:
    """Base photographs as PIL images: scikit-image's when installed, else matplotlib's and drawn scenes."""
    from PIL import Image, ImageDraw

    found = []
    try:
        from skimage import data

        for name in ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field"):
            found.append(Image.fromarray(getattr(data, name)()).convert("RGB"))
    except ImportError:
        import matplotlib

        sample = Path(matplotlib.__file__).parent / "mpl-data" / "sample_data" / "grace_hopper.jpg"
        found.append(Image.open(sample).convert("RGB"))
    rng = random.Random(0)
    for k in range(6):  # drawn scenes: gradients, shapes and noise, so JPEG has texture to code
        image = Image.linear_gradient("L").resize((800, 600)).convert("RGB")
        draw = ImageDraw.Draw(image)
        for _ in range(40):
            x, y = rng.randrange(800), rng.randrange(600)
            draw.ellipse([x, y, x + rng.randrange(20, 200), y + rng.randrange(20, 200)],
                         fill=tuple(rng.randrange(256) for _ in range(3)))
        noise = Image.effect_noise((800, 600), 40).convert("RGB")
        found.append(Image.blend(image, noise, 0.25))
    return found


def jpegs(n: int, seed: int = 0):
    """n distinct 640x480 JPEGs (quality 90) with a caption each."""
    from PIL import Image

    bases = photographs()
    rng = random.Random(seed)
    for i in range(n):
        base = bases[i % len(bases)]
        w, h = base.size
        cw, ch = rng.randint(w // 2, w), rng.randint(h // 2, h)
        x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
        image = base.crop((x, y, x + cw, y + ch)).rotate(rng.uniform(-15, 15)).resize((640, 480))
        tint = Image.new("RGB", (640, 480), tuple(rng.randrange(256) for _ in range(3)))
        image = Image.blend(image, tint, rng.uniform(0, 0.3))
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=90)
        colour = COLOURS[i % len(COLOURS)]
        yield buf.getvalue(), [f"a {colour} photograph number {i}", f"picture {i}, tinted {colour}"]


def write_table(path: Path, n: int) -> int:
    """A coco_caption_karpathy_train table in ViLT's layout; its size in bytes."""
    import pyarrow as pa

    rows = list(jpegs(n))
    table = pa.table({"image": [r[0] for r in rows], "caption": [r[1] for r in rows],
                      "image_id": [f"{i}.jpg" for i in range(n)], "split": ["train"] * n})
    path.mkdir(parents=True, exist_ok=True)
    with pa.OSFile(str(path / "coco_caption_karpathy_train.arrow"), "wb") as sink, \
            pa.RecordBatchFileWriter(sink, table.schema) as writer:
        writer.write_table(table)
    (path / "coco_caption_karpathy_restval.arrow").write_bytes(b"")  # replaced below: an empty restval table
    empty = table.slice(0, 0)
    with pa.OSFile(str(path / "coco_caption_karpathy_restval.arrow"), "wb") as sink, \
            pa.RecordBatchFileWriter(sink, table.schema) as writer:
        writer.write_table(empty)
    return (path / "coco_caption_karpathy_train.arrow").stat().st_size


def write_shards(path: Path, n: int, per_shard: int = 100) -> None:
    path.mkdir(parents=True, exist_ok=True)
    rows = list(jpegs(n, seed=1))
    for s in range(0, n, per_shard):
        with tarfile.open(path / f"{s // per_shard:05d}.tar", "w") as tar:
            for k, (data, captions) in enumerate(rows[s:s + per_shard]):
                for ext, payload in (("jpg", data), ("txt", captions[0].encode())):
                    info = tarfile.TarInfo(f"{s + k:09d}.{ext}")
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))


def spec_for(source: str, patch: int = 28, ranks: int = 1) -> dict:
    """The quickstart model on 224-pixel images, global batch 32. Patch 28: the vision tower sees the
    quickstart's 8x8 grid of patches, so the model costs what the quickstart's does and decoding is what 224
    pixels cost (decode-bound); patch 8, the quickstart's own, gives it 28x28 patches (compute-bound here)."""
    import yaml

    spec = yaml.safe_load((ROOT / "specs" / "quickstart.yaml").read_text())
    spec["name"] = "data-bench"
    spec["inputs"]["image"]["size"] = 224
    spec["nodes"]["vision_tower"]["size"]["patch_size"] = patch
    spec["data"] = {"train": {"source": source, "task": "captions"}}
    spec["train"].update(batch_size=32, micro_batch_size=32 // ranks, log_every=1, val_every=None,
                         checkpoint_every=None)
    return spec


def _run(spec: dict, folder: Path, steps: int, extra: list[str], ranks: int = 1, threads: int | None = None) -> dict:
    """`graphspec run` in a process of its own; its summary, with `steady_samples_per_s` (the median rate
    of the steps after the first two) and `data_wait_s` (the mean wait of those steps) added."""
    import yaml

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "spec.yaml").write_text(yaml.safe_dump(spec))
    command = [sys.executable, "-m", "graphspec.cli", "run", str(folder / "spec.yaml"), "--run-dir", str(folder / "run"),
               "--build-dir", str(folder / "build"), "--set", f"train.steps={steps}", *extra]
    if ranks > 1:
        command += ["--nproc", str(ranks)]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_PORT")}
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    done = subprocess.run(command, capture_output=True, text=True, env={**env, "HF_HUB_OFFLINE": "1"})
    if done.returncode:
        raise SystemExit(f"run failed ({done.returncode}):\n{done.stderr[-3000:]}")
    summary = json.loads((folder / "run" / "summary.json").read_text())
    logged = [json.loads(line) for line in (folder / "run" / "metrics.jsonl").read_text().splitlines()]
    steady = [r for r in logged if "samples_per_s" in r and r.get("step", 0) > 2]
    summary["steady_samples_per_s"] = statistics.median(r["samples_per_s"] for r in steady)
    summary["data_wait_s"] = statistics.mean(r["data_wait_s"] for r in steady)
    return summary


def loader_rate(source: str, workers: int, batches: int) -> float:
    """Images/s out of the loader alone (decode and transform; no model step), in a process of its own."""
    done = subprocess.run([sys.executable, __file__, "--loader-rate", source, str(workers), str(batches)],
                          capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if done.returncode:
        raise SystemExit(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])["images_per_s"]


def _time_loader(source: str, workers: int, batches: int) -> None:
    """The body of `loader_rate`: the task the run would build, its micro batches drawn as training does."""
    import graphspec
    from graphspec.compiler import build_model
    from graphspec.runtime.batches import Batches
    from graphspec.runtime.tasks import make_task
    from graphspec.runtime.text import load_tokenizer, text_node

    spec = graphspec.loads(json.dumps(spec_for(source)), fmt="json")
    model, _ = build_model(spec)
    text = spec.roles().text
    vocab = model.get_submodule(text_node(spec, text)[0]).vocab_size
    with tempfile.TemporaryDirectory() as tmp:
        task = make_task(spec, model, lambda data: load_tokenizer(spec, text, vocab, Path(tmp), data.texts))
        loader = Batches(task, 32, 0, batches + 2, workers, 2, accelerator=False)
        loader.next(0)
        loader.next(1)  # the workers started and warm
        start = time.perf_counter()
        for i in range(2, batches + 2):
            loader.next(i)
        print(json.dumps({"images_per_s": 32 * batches / (time.perf_counter() - start)}))
        loader.close()


def shard_rate(pattern: str, samples: int) -> float:
    """Samples/s read from the shards and decoded at 224 pixels."""
    from graphspec.runtime.data.records import ReadStats
    from graphspec.runtime.data.shards import ShardStream

    ShardStream(pattern, ("data", "train"), 0, 0, 1, False, ReadStats()).take(0, 1)[0][0].image.load(224)  # imports
    stream = ShardStream(pattern, ("data", "train"), 0, 0, 1, False, ReadStats())
    start = time.perf_counter()
    taken, _ = stream.take(0, samples)
    for sample in taken:
        sample.image.load(224)
    return samples / (time.perf_counter() - start)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--small", type=int, default=300, help="images of the small table")
    p.add_argument("--factor", type=int, default=10, help="how many times larger the large table is")
    p.add_argument("--steps", type=int, default=16, help="training steps of each run")
    p.add_argument("--json", help="also write the figures here")
    p.add_argument("--loader-rate", nargs=3, help=argparse.SUPPRESS)  # SOURCE WORKERS BATCHES: one measurement
    args = p.parse_args()
    if args.loader_rate:
        _time_loader(args.loader_rate[0], int(args.loader_rate[1]), int(args.loader_rate[2]))
        return 0
    figures: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        sizes = {"small": args.small, "large": args.small * args.factor}
        table_bytes = {k: write_table(tmp / k, n) for k, n in sizes.items()}
        write_shards(tmp / "shards", args.small)
        print(f"data written in {time.perf_counter() - start:.0f} s: tables of {sizes['small']:,} and "
              f"{sizes['large']:,} 640x480 JPEGs ({table_bytes['small'] / 2**20:,.0f} and "
              f"{table_bytes['large'] / 2**20:,.0f} MB), {args.small} samples in shards", flush=True)
        small = f"arrow:{tmp / 'small'}"

        rates = {w: loader_rate(small, w, 6) for w in (0, 1, 2)}
        figures["loader_images_per_s"] = rates
        print("\n1. decoding rate (loader alone, 224 px, micro batch 32): "
              + ", ".join(f"{w} workers {r:,.0f} images/s ({r / rates[0]:.2f}x)" for w, r in rates.items()), flush=True)

        # How a rank's cores are best split between the model's threads and decoding workers.
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        splits = [(cores, 0), (1, 0), (cores, 1), (cores, 2), (1, 1), (1, 2)]
        runs = {s: _run(spec_for(small), tmp / f"split-{s[0]}-{s[1]}", args.steps, ["--set", f"data.workers={s[1]}"],
                        threads=s[0]) for s in splits}
        rate = {s: r["steady_samples_per_s"] for s, r in runs.items()}
        base = rate[(cores, 0)]
        figures["split"] = {f"{t} threads, {w} workers": {"samples_per_s": r["steady_samples_per_s"],
                                                          "data_wait_s": r["data_wait_s"]} for (t, w), r in runs.items()}
        print(f"\n2. training, quickstart model on 224-pixel images (patch 28), micro batch 32, {args.steps} steps:")
        for (threads, workers), r in runs.items():
            print(f"   {threads} model threads, {workers} workers: {r['steady_samples_per_s']:6.1f} samples/s "
                  f"({r['steady_samples_per_s'] / base:.2f}x), waited {r['data_wait_s']:.3f} s a step")
        # With no worker the step is decoding then computing; the 1-thread run gives the work in core-seconds,
        # and no split of the cores can beat that work spread evenly over all of them.
        wait = runs[(cores, 0)]["data_wait_s"]
        ceiling = cores * rate[(1, 0)] / base
        figures["workers_2_vs_0"] = rate[(cores, 2)] / base
        figures["ceiling"] = ceiling
        print(f"   decoding is {100 * wait * base / 32:.0f}% of the step without workers; {cores} workers give "
              f"{rate[(cores, 2)] / base:.2f}x; the ceiling on {cores} cores (the 1-thread run's work spread over "
              f"every core) is {ceiling:.2f}x", flush=True)

        compute = {w: _run(spec_for(small, patch=8), tmp / f"compute-w{w}", args.steps, ["--set", f"data.workers={w}"])
                   for w in (0, 2)}
        figures["compute_bound"] = {w: r["steady_samples_per_s"] for w, r in compute.items()}
        print(f"   with the quickstart's own patch 8 (784 patches an image: the model dominates), 0 workers "
              f"{compute[0]['steady_samples_per_s']:.1f} samples/s (waited {compute[0]['data_wait_s']:.3f} s), "
              f"2 workers {compute[2]['steady_samples_per_s']:.1f} "
              f"({compute[2]['steady_samples_per_s'] / compute[0]['steady_samples_per_s']:.2f}x)", flush=True)

        memory = {k: _run(spec_for(f"arrow:{tmp / k}"), tmp / f"mem-{k}", args.steps, ["--set", "data.workers=0"])
                  for k in sizes}
        grow_table = (table_bytes["large"] - table_bytes["small"]) / 2**20
        grow_rss = memory["large"]["peak_rss_mb"] - memory["small"]["peak_rss_mb"]
        figures["memory"] = {k: {"peak_rss_mb": r["peak_rss_mb"], "first_step_s": r["first_step_s"],
                                 "table_mb": table_bytes[k] / 2**20}
                             for k, r in memory.items()}
        print(f"\n3. table {table_bytes['small'] / 2**20:,.0f} -> {table_bytes['large'] / 2**20:,.0f} MB (+{grow_table:,.0f}):"
              f" peak RSS {memory['small']['peak_rss_mb']:,.0f} -> {memory['large']['peak_rss_mb']:,.0f} MB "
              f"({grow_rss:+,.0f} MB, {100 * grow_rss / grow_table:+.1f}% of the table's growth; no workers: the "
              f"training process reads every image); time to the first step {memory['small']['first_step_s']:.1f}"
              f" -> {memory['large']['first_step_s']:.1f} s "
              f"({memory['large']['first_step_s'] / memory['small']['first_step_s']:.2f}x)", flush=True)

        per_rank = {n: _run(spec_for(small, ranks=n), tmp / f"ranks-{n}", 4, ["--set", "data.workers=0"], ranks=n)
                    for n in (1, 2)}
        decoded = {n: r["data"]["train_reads"]["images_decoded_per_rank"] for n, r in per_rank.items()}
        figures["decoded_per_rank"] = decoded
        print(f"\n4. images decoded per rank over 4 steps of 32: 1 rank {decoded[1]}, 2 ranks {decoded[2]}", flush=True)

        rate = shard_rate(f"{tmp / 'shards'}/*.tar", min(args.small, 200))
        figures["webdataset_samples_per_s"] = rate
        print(f"\n5. webdataset: {rate:,.0f} samples/s read from the shards and decoded at 224 px (one process)")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
