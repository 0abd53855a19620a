"""`graphspec export`: a trained model as one self-contained folder with the layout of a Hugging Face Hub model
repository, which `graphspec.load_model` (and the `.pt2` program, torch alone) reads without the run. It reads
a run's final checkpoint, or a training checkpoint (`RUN/checkpoints/step-N`, ZeRO's partitions merged).

    README.md                 the model card: a metadata header, architecture, parameters, the towers' sources
                              and licences, training data, steps and final metrics
    model.safetensors         every weight, frozen towers' included, by the compiled model's names
    graphspec.json            export format, graphspec version, the resolved spec, inputs, label names, training
    preprocessor_config.json  how each input is prepared (image size, mean, std, interpolation, resize mode;
                              text length and tokenizer)
    tokenizer files           the tokenizer the weights were trained with
    towers/NODE/              each transformers tower's config (and image processor): it builds offline
    model.pt2                 the inference forward as a torch.export program (`Program`), batch size dynamic

Frozen weights are not in a checkpoint: they come from their source, as when training started, and are
checked against the hash the run recorded of them; weights that changed since are refused. The folder is
written beside its destination and renamed into place, so a failed export leaves nothing that looks whole.
"""

from __future__ import annotations

import json
import shutil
from importlib import metadata
from pathlib import Path

import torch

from graphspec.compiler.folders import EXPORT_FORMAT, TRAINING_FOLDER, WEIGHTS
from graphspec.compiler.folders import EXPORT_MANIFEST as MANIFEST
from graphspec.compiler.folders import EXPORT_PROGRAM as PROGRAM
from graphspec.language.errors import EnvironmentProblem, Issue, Loc
from graphspec.language.version import __version__

from .evaluate import CheckpointError, find_checkpoint, load_checkpoint, read_state
from .inference import head_labels, kind, named_outputs
from .model_folder import weights_header
from .resume import frozen_digests


def export_model(target: str | Path, out: str | Path, program: bool = True) -> Path:
    """Export a run's final checkpoint (a run directory or its checkpoint/), or one of its training
    checkpoints (RUN/checkpoints/step-N: ZeRO's shards merged into whole fp32 weights). `program=False` leaves
    out `model.pt2` (torch.export takes seconds; load_model and predict do not read it)."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise EnvironmentProblem([Issue((), "the export folder exists and is not empty", "choose another -o, or "
                                        "remove it", loc=Loc(str(out)))], title="cannot export")
    path = Path(target)
    if path.parent.name == TRAINING_FOLDER and (path / "engine").is_dir():
        spec, model, state, plan, tokenizer = from_training_checkpoint(path)
        run_dir = path.parent.parent
    else:
        try:
            ckpt = find_checkpoint(path)
        except CheckpointError as e:
            raise CheckpointError([Issue((), "neither a run with a final checkpoint, nor a checkpoint, nor a training "
                                        "checkpoint (RUN/checkpoints/step-N)", "give one of those",
                                        loc=Loc(str(path)))], title="nothing to export") from e
        spec, model = load_checkpoint(ckpt)
        state = read_state(ckpt)
        plan = json.loads((ckpt / "freeze.json").read_text()) if (ckpt / "freeze.json").is_file() else {"frozen": []}
        tokenizer = ckpt / "tokenizer"
        path, run_dir = ckpt, ckpt.parent
    verified = _check_frozen(model, set(plan["frozen"]), state, path)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        _write(tmp, tokenizer, spec, model, state, plan, verified, program, architecture(run_dir, spec, model))
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise EnvironmentProblem([Issue((), f"the export could not be written ({e.strerror or e})",
                                        "free disk space or choose another -o", loc=Loc(str(out)))],
                                 title="cannot export") from None
    if out.exists():
        out.rmdir()
    tmp.rename(out)
    return out


def from_training_checkpoint(step_dir: Path):
    """(spec, model, state, freeze plan, tokenizer) of a training checkpoint: the run's build, its trainable
    weights from DeepSpeed's files (read under the allow-list; ZeRO 1-3 partitions merged by DeepSpeed's
    zero_to_fp32 into fp32), frozen weights from their source."""
    from graphspec.compiler import build_weights, read_build

    from .resume import UnsafeFile, unsafe_refusal, verify, weights_only
    from .text import load_tokenizer, text_node

    verify(step_dir)  # every file as written, before any is read
    state = json.loads((step_dir / "state.json").read_text())
    build = read_build(step_dir.parent.parent / "build")
    model, plan = build_weights(build.spec, build.plan), build.plan
    engine = step_dir / "engine"
    try:
        with weights_only():
            if any(engine.glob("*zero_pp_rank_*_optim_states.pt")):
                from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

                weights = get_fp32_state_dict_from_zero_checkpoint(str(step_dir), tag="engine",
                                                                   exclude_frozen_parameters=True)
            else:  # no ZeRO: the module's own weights
                weights = torch.load(engine / "mp_rank_00_model_states.pt", map_location="cpu")["module"]
    except UnsafeFile as e:  # a payload in a pickle: refused before it runs, as a resume refuses it
        raise unsafe_refusal(e) from None
    except Exception as e:  # noqa: BLE001 - DeepSpeed's reader raises what it meets; the file is named
        raise CheckpointError([Issue((), f"DeepSpeed's files could not be merged: {type(e).__name__}: "
                                    f"{str(e).splitlines()[0][:200]}", "export the run's final checkpoint",
                                    loc=Loc(str(engine)))], title="cannot export this") from None
    params = dict(model.named_parameters())
    trainable = {n for n in params if n not in plan.frozen}
    got = {n for n in weights if n in params}
    if got != trainable:
        raise CheckpointError([Issue((), f"the checkpoint's weights do not match its build: missing "
                                    f"{sorted(trainable - got)[:5]}", loc=Loc(str(engine)))],
                             title="cannot export this")
    with torch.no_grad():
        for name in trainable:
            params[name].copy_(weights[name].float())
    text = build.spec.roles().text
    vocab = model.get_submodule(text_node(build.spec, text)[0]).vocab_size

    def no_texts():
        raise CheckpointError([Issue((), "the run's build holds no tokenizer", "export the final checkpoint",
                                    loc=Loc(str(build.dir)))], title="cannot export this")

    tokenizer = load_tokenizer(build.spec, text, vocab, build.dir, no_texts)
    return build.spec, model.eval(), {**state, "val": {}}, build.plan.to_json(), tokenizer


def _check_frozen(model, frozen: set[str], state: dict, ckpt: Path) -> dict[str, str]:
    """{node: "verified" | "not recorded"}: the frozen weights built from their sources against the run's hash."""
    if not frozen:
        return {}
    found = frozen_digests(model, frozen)
    recorded = state.get("frozen_sha256")
    if recorded is None:  # written before final checkpoints recorded the hash
        return {node: "not recorded" for node in found}
    changed = sorted(n for n in found if recorded.get(n) != found[n])
    if changed:
        raise CheckpointError([Issue((), f"the frozen weights of {', '.join(changed)} built from their source "
                                    "differ from those the run trained with", "point the source back at the "
                                    "weights the run used", loc=Loc(str(ckpt / "state.json")))],
                             title="cannot export this")
    return {node: "verified" for node in found}


def architecture(run_dir: Path, spec, model) -> str:
    """The compile report the run's build folder holds (RUN/build/summary.txt); for a checkpoint kept apart
    from its run, the parameters per node of the model itself."""
    report = run_dir / "build" / "summary.txt"
    if report.is_file():
        return report.read_text().rstrip()
    lines = [f"{'node':<24}{'parameters':>14}"]
    for prefix in [*spec.nodes, *(f"heads.{h}" for h in spec.heads)]:
        lines.append(f"{prefix:<24}{sum(p.numel() for p in model.get_submodule(prefix).parameters()):>14,}")
    return "\n".join(lines)


def _write(tmp: Path, tokenizer, spec, model, state: dict, plan: dict, verified: dict, program: bool,
           summary: str) -> None:
    """`tokenizer`: a checkpoint's tokenizer folder, or a tokenizer; `summary`: the architecture report."""
    from safetensors.torch import save_model

    save_model(model, str(tmp / WEIGHTS), metadata={"format": "pt", "graphspec": __version__})
    (tmp / WEIGHTS).chmod(0o644)  # safetensors writes it private; the folder is for sharing
    if isinstance(tokenizer, Path):
        for f in tokenizer.iterdir() if tokenizer.is_dir() else []:
            shutil.copy2(f, tmp / f.name)
    else:
        tokenizer.save_pretrained(str(tmp))
    towers = _save_towers(spec, model, tmp / "towers")
    labels = head_labels(spec, state)
    inputs = _preprocessing(spec, model)
    (tmp / "preprocessor_config.json").write_text(json.dumps(inputs, indent=2) + "\n")
    params = {"total": sum(p.numel() for p in model.parameters()),
              "frozen_in_training": sum(p.numel() for n, p in model.named_parameters() if n in set(plan["frozen"]))}
    manifest = {"format_version": EXPORT_FORMAT, "graphspec": __version__, "torch": torch.__version__,
                "tensors": weights_header(tmp / WEIGHTS),  # what load_model checks the file against
                "spec": spec.model_dump(mode="json", exclude={"extends"}), "freeze": plan, "labels": labels,
                "inputs": inputs, "parameters": params, "towers": towers, "frozen_weights": verified,
                "training": {"step": state.get("step"), "val": state.get("val", {}),
                             "vocabulary": {k: v for k, v in state.items() if k == "answers"}}}
    manifest["program"] = write_program(spec, model, tmp / PROGRAM) if program else {
        "written": False, "why": "left out on request (graphspec export --no-program)"}
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    (tmp / "README.md").write_text(model_card(spec, manifest, summary))


class Program(torch.nn.Module):
    """The inference forward that `model.pt2` holds: the model's input tensors in (text padded to its
    max_length), a flat dict of tensors out, named as `load_model`'s model names them (`named_outputs`): each
    head's raw tensor, `HEAD_probability`, `HEAD_prediction`, `text_embedding` / `image_embedding`; heads whose
    kind is not exported (MLM) left out. Export format 1 named an ITC head's outputs `HEAD_text` / `HEAD_image`."""

    def __init__(self, graph: torch.fx.GraphModule, spec):
        super().__init__()
        self.spec = spec
        dropped = [h for h, obj in spec.heads.items() if not (outputs := kind(obj).outputs) or not outputs.exported]
        # not `graph`: torch.export's program is a GraphModule, whose `graph` is its fx graph
        self.model = without_heads(graph, dropped)

    def forward(self, *inputs) -> dict:
        return named_outputs(self.spec, self.model(*inputs), exported_only=True)


def without_heads(gm: torch.fx.GraphModule, heads: list[str]) -> torch.fx.GraphModule:
    """`gm` without the calls of `heads` (and what only they read): an MLM decoder tied to the text tower's
    embeddings would otherwise hold one weight under two names, which torch.export's program cannot rebuild."""
    if not heads:
        return gm
    graph = torch.fx.Graph()
    env: dict = {}
    for node in gm.graph.nodes:
        if node.op == "call_module" and node.target in {f"heads.{h}" for h in heads}:
            continue
        if node.op == "output":
            graph.output({k: env[v] for k, v in node.args[0].items() if k not in heads})
            continue
        env[node] = graph.node_copy(node, lambda n: env[n])
    pruned = torch.fx.GraphModule(gm, graph, class_name=type(gm).__name__)
    pruned.graph.eliminate_dead_code()
    pruned.recompile()
    return pruned


def example_inputs(spec, batch: int = 2, vocab: int = 100) -> tuple[torch.Tensor, ...]:
    """Inputs of the program's shapes, in the model's argument order (graphspec.compiler.emit.input_names)."""
    gen = torch.Generator().manual_seed(0)
    out = []
    for name, inp in spec.inputs.items():
        if inp.modality == "text":
            out += [torch.randint(5, vocab, (batch, inp.max_length), generator=gen),
                    torch.ones(batch, inp.max_length, dtype=torch.long)]
        elif inp.modality == "image":
            out.append(torch.randn(batch, inp.channels, inp.size, inp.size, generator=gen))
        else:
            out += [torch.rand(batch, inp.max_candidates, 4, generator=gen),
                    torch.ones(batch, inp.max_candidates, dtype=torch.bool)]
    return tuple(out)


def write_program(spec, model, path: Path) -> dict:
    """`model.pt2`: the inference forward through torch.export, batch size dynamic; loadable with torch alone
    (`torch.export.load(path).module()`). An architecture torch.export cannot trace leaves the rest of the
    export as it is and says why."""
    import time

    program = Program(model.eval(), spec)
    inputs = example_inputs(spec, vocab=min(100, _vocab(model)))
    batch = torch.export.Dim("batch", min=1, max=4096)
    start = time.perf_counter()
    try:
        exported = torch.export.export(program, inputs, dynamic_shapes=(tuple({0: batch} for _ in inputs),))
        torch.export.save(exported, str(path))
    except Exception as e:  # noqa: BLE001 - torch.export's failures have no common type; the reason is kept
        path.unlink(missing_ok=True)
        return {"written": False, "why": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
    return {"written": True, "file": path.name, "inputs": [list(t.shape[1:]) for t in inputs],
            "outputs": sorted(program(*inputs)), "export_s": round(time.perf_counter() - start, 1)}


def _vocab(model) -> int:
    sizes = [m.num_embeddings for m in model.modules() if isinstance(m, torch.nn.Embedding)]
    return max(sizes) if sizes else 100


def _hf_model(module: torch.nn.Module):
    from transformers import PreTrainedModel

    return next((m for m in module.modules() if isinstance(m, PreTrainedModel)), None)


def _save_towers(spec, model, root: Path) -> dict[str, dict]:
    """Each library tower's source, init and licence; transformers towers' configs written under `root`."""
    out = {}
    for name, node in spec.nodes.items():
        library = kind(node).library(node)
        if library is None:
            continue
        module = model.get_submodule(name)
        source = getattr(node, "source", None) or getattr(node, "model_type", None)
        row = {"kind": node.kind, "source": source, "weights": getattr(node, "weights", None), "init": node.init,
               "licence": _licence(node, module)}
        hf = _hf_model(module) if library == "transformers" else None
        if hf is not None and getattr(node, "source", None):
            (root / name).mkdir(parents=True, exist_ok=True)
            hf.config.to_json_file(str(root / name / "config.json"))
            if kind(node).image_processor:
                _save_image_processor(node, root / name)
        out[name] = row
    return out


def _save_image_processor(node, folder: Path) -> None:
    from transformers import AutoImageProcessor

    from graphspec.compiler.backbones import local_source

    try:
        AutoImageProcessor.from_pretrained(local_source(node.source, ()), local_files_only=True,
                                           trust_remote_code=False).save_pretrained(
            str(folder))
    except (OSError, ValueError):
        pass  # a tower without a processor of its own is prepared with ViT's defaults, at load as in training


def _licence(node, module) -> str:
    """What this machine knows of a tower's licence: a packaged source's distribution metadata, timm's
    pretrained config, a hub config's card; else where to look."""
    if node.init == "random":
        return "none (trained from random init)"
    source = getattr(node, "weights", None) or getattr(node, "source", None) or ""
    if source.startswith("package:"):
        dist = source.split(":", 1)[1].split("/")[0]
        try:
            meta = metadata.metadata(dist)
            named = meta.get("License-Expression") or meta.get("License")
            if named and named.upper() != "UNKNOWN":
                return named
        except metadata.PackageNotFoundError:
            pass
    cfg = getattr(getattr(module, "model", None), "pretrained_cfg", None) or {}
    if cfg.get("license"):
        return cfg["license"]
    return f"see the model card of {source}" if source else "unknown"


def _preprocessing(spec, model) -> dict:
    from graphspec.compiler.preprocess import image_transform

    out = {}
    for name, inp in spec.inputs.items():
        if inp.modality == "image":
            tf = image_transform(spec, name, model)
            out[name] = {"modality": "image", "size": inp.size, "channels": inp.channels, "resize": "squash",
                         **getattr(tf, "config", {}), "transform": tf.signature}
        elif inp.modality == "text":
            out[name] = {"modality": "text", "max_length": inp.max_length, "tokenizer": ".",
                         "tensors": list(inp.tensors(name))}
        else:
            out[name] = {"modality": inp.modality, "tensors": list(inp.tensors(name))}
    return out


def model_card(spec, manifest: dict, summary: str) -> str:
    towers = manifest["towers"]
    bases = sorted({t["source"] for t in towers.values() if t["source"] and t["init"] == "pretrained"})
    header = ["---", "library_name: graphspec", "tags:", "- graphspec", "- vision-language",
              *(["base_model:"] + [f"- {b}" for b in bases] if bases else []), "---", ""]
    training = manifest["training"]
    val = training.get("val") or {}
    data = spec.data.train
    lines = [f"# {spec.name}", "",
             f"A vision-language encoder trained with graphspec {manifest['graphspec']} for {training['step']} steps "
             f"and exported with its tokenizer and image preprocessing.", "",
             "```python", "import graphspec", "", "model, processor = graphspec.load_model(\"PATH_OR_HUB_ID\")",
             "out = model(**processor(images=[\"photo.jpg\"], text=[\"a caption\"]))", "```", "",
             "## Architecture", "", "```", summary, "```", "",
             f"Parameters: {manifest['parameters']['total']:,}, of which "
             f"{manifest['parameters']['frozen_in_training']:,} were frozen in training.", "",
             "## Towers", "", "| node | kind | source | init | licence | frozen weights |", "|---|---|---|---|---|---|"]
    for name, t in towers.items():
        lines.append(f"| {name} | {t['kind']} | {t['weights'] or t['source'] or '-'} | {t['init']} | {t['licence']} | "
                     f"{manifest['frozen_weights'].get(name, '-')} |")
    lines += ["", "## Training", "",
              f"- data: {data.source} ({data.task}{f', {data.samples} samples' if data.samples else ''})",
              f"- steps {training['step']}, batch {spec.train.batch_size}, {spec.train.optimizer.name} lr "
              f"{spec.train.optimizer.lr}, precision {spec.train.precision}",
              f"- objectives: {', '.join(f'{k} (weight {o.weight})' for k, o in spec.objectives.items())}", ""]
    if val:
        lines += ["## Final validation metrics", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in val.items()]
        lines.append("")
    return "\n".join(header + lines)
