"""Run as one process of a launcher's ranks (or alone): builds DeepSpeed engines of a tiny spec at the ZeRO
stages given, takes one step on each, and prints one JSON line per engine: the bytes of tensors the process
holds beyond what it held before the model (the engine's parameters, gradients, fp32 partitions, optimizer
state, buffers and buckets, as tensor bytes, each storage once) beside `graphspec.cost.memory`'s prediction.

    python tests/cost/engine_bytes.py STAGES PRECISION FREEZE SPEC_YAML
"""

from __future__ import annotations

import gc
import json
import os
import sys
import tempfile
import warnings
from pathlib import Path

import torch


def tensor_bytes() -> int:
    """Bytes of every live tensor storage not on the meta device (gradients included), each storage once, among
    the objects made since main's gc.freeze(): those made before it (the libraries', the builds') would be alive
    at every scan and cancel in `measured`, and walking them cost about 3 s per engine (a scan and two
    collections; measured)."""
    seen: dict[int, int] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for o in gc.get_objects():
            if not isinstance(o, torch.Tensor):
                continue
            for t in (o, o.grad) if o.grad is not None else (o,):
                if t.device.type != "meta":
                    storage = t.untyped_storage()
                    seen[storage.data_ptr()] = max(seen.get(storage.data_ptr(), 0), storage.nbytes())
    return sum(seen.values())


def main(stages: str, precision: str, freeze: str, spec_file: str) -> None:
    import graphspec
    from graphspec.compiler import build_weights
    from graphspec.compiler.folders import read_build
    from graphspec.compiler.placement import frozen_dtype
    from graphspec.cost.memory import model_states
    from graphspec.runtime.engine import make_trainer
    from graphspec.runtime.tasks.captions import Captions
    from graphspec.runtime.text import load_tokenizer

    world = int(os.environ.get("WORLD_SIZE", "1"))
    sets = [f"train.precision={precision}", f"distributed.world_size={world}", f"train.batch_size={4 * world}"]
    sets += [f"nodes.{freeze}.freeze=true"] if freeze != "none" else []
    builds = []
    for stage in stages.split(","):  # every compile before the first engine: compile reads no process group
        spec = graphspec.load(spec_file, overrides=sets + [f"distributed.zero_stage={stage}"])
        out = Path(tempfile.mkdtemp()) / "build"
        graphspec.compile(spec, out=out)
        builds.append(read_build(out))
    gc.collect()
    gc.freeze()  # what exists now stays and is no engine's: scans and collections skip it (see tensor_bytes)
    for build in builds:
        spec = build.spec
        gc.collect()
        before = tensor_bytes()
        model = build_weights(spec, build.plan)
        trainer = make_trainer(spec, model, build.plan, build.groups, build.ds_config, build.placed)
        data = Captions.read(spec, spec.roles(), lambda img: torch.rand(3, 32, 32))
        tokenizer = load_tokenizer(spec, "text", 128, build.dir, lambda: ["a red circle left of a blue square"] * 4)
        task = Captions(spec, spec.roles(), data, tokenizer)
        batch = trainer.move(task.train_batch(4, 0))
        trainer.engine.backward(task.losses(trainer.forward(batch), batch)["loss"])
        trainer.engine.step()
        del batch, data, task
        gc.collect()
        measured = tensor_bytes() - before
        outside = {n for n, r in build.placed.items() if r["where"] == "outside"}
        predicted = model_states(build_weights(spec, build.plan, meta=True), set(build.plan.frozen), outside,
                                 precision, frozen_dtype(spec), build.ds_config["zero_optimization"], world).total
        row = json.dumps({"rank": int(os.environ.get("RANK", "0")), "stage": spec.distributed.zero_stage,
                          "world": world, "measured": measured, "predicted": predicted})
        sys.stdout.write(row + "\n")  # one write of the whole line: print's text and newline are two, and the
        sys.stdout.flush()  # other rank's line could land between them (seen once in a fresh clone's run)
        del trainer, model
        gc.collect()
    gc.freeze()  # the interpreter's teardown skips walking what the engines left


if __name__ == "__main__":
    main(*sys.argv[1:5])
