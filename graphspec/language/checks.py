"""Cross-field rules of the spec language: small named functions, one rule each.

Each takes a validated `Spec` and yields `Issue`s naming the field at fault.
References between nodes and everything about shapes are the compiler's
(compiler/rules.py); these need nothing but the spec.
"""

from __future__ import annotations

import keyword
import re
from typing import Callable, Iterator

from .errors import Issue
from .errors import suggest
from .schema import TASKS, Fusion, Spec
from .schema.nodes import OneTower
from .schema.base import NAME_PATTERN
from .schema.tasks import FAMILY_ALIASES, FAMILY_TASK, resolve_family

# Names a node cannot take: they are attributes of torch.nn.Module or of the emitted model.
RESERVED = {"heads", "forward", "training", "parameters", "modules", "state_dict", "graph", "code", "to", "type"}


def names_are_distinct_identifiers(spec: Spec) -> Iterator[Issue]:
    seen: dict[str, str] = {}
    for section in ("inputs", "nodes", "heads"):
        for name in getattr(spec, section):
            if not re.fullmatch(NAME_PATTERN, name):
                yield Issue((section, name), f"'{name}' is not a valid name: references could not name it",
                            "use letters, digits and '_', starting with a letter")
            elif keyword.iskeyword(name) or name in RESERVED:
                yield Issue((section, name), f"'{name}' is a reserved name", f"rename it, e.g. '{name}_'")
            if name in seen:
                yield Issue((section, name), f"the name '{name}' is already used in {seen[name]}",
                            "inputs, nodes and heads share one namespace: rename one")
            seen.setdefault(name, section)


def batch_sizes_divide(spec: Spec) -> Iterator[Issue]:
    t, d = spec.train, spec.distributed
    micro, _ = spec.batch_plan()
    if t.batch_size % (micro * d.world_size):
        yield Issue(("train", "batch_size"),
                    f"batch_size {t.batch_size} is not micro_batch_size {micro} x accumulation x world_size {d.world_size}",
                    f"make batch_size a multiple of {micro * d.world_size}, e.g. {micro * d.world_size * max(1, round(t.batch_size / (micro * d.world_size)))}")


def size_overrides_need_random_init(spec: Spec) -> Iterator[Issue]:
    for name, node in spec.nodes.items():
        if getattr(node, "size", None) is not None and getattr(node, "init", None) == "pretrained" \
                and not getattr(node, "weights", None):
            yield Issue(("nodes", name, "size"), "size overrides change the weights' shapes, so they cannot load pretrained weights",
                        "set `init: random`, remove `size`, or (timm) name a `weights` file of that size")


def encoders_name_a_source(spec: Spec) -> Iterator[Issue]:
    for name, node in spec.nodes.items():
        if isinstance(node, OneTower):
            yield from _one_tower_options(name, node)
            if node.backbone == "vision" and node.library != "transformers":
                if not node.source:
                    yield Issue(("nodes", name, "source"), "a vision one_tower needs a timm ViT name as its source",
                                "set `source:` e.g. deit_tiny_patch16_224, or `library: transformers` with a "
                                "`model_type`")
                if node.model_type:
                    yield Issue(("nodes", name, "model_type"), "`model_type` is for a transformers backbone",
                                "remove it (`source` names the timm model), or set `library: transformers`")
                continue
        if "model_type" not in type(node).model_fields:  # not a transformers tower (its config comes from them)
            continue
        if node.init == "pretrained" and not node.source:
            yield Issue(("nodes", name, "source"), "a pretrained encoder needs a source",
                        "set `source:` to a hub id or a local directory")
        if node.init == "random" and not (node.source or node.model_type):
            yield Issue(("nodes", name), "a random encoder needs a config: a `source` or a `model_type`",
                        "set `model_type:` (e.g. 'bert') to build it offline")


def _one_tower_options(name: str, node: OneTower) -> Iterator[Issue]:
    """Options of a one tower that only mean something with some backbones."""
    where = ("nodes", name)
    if node.backbone == "text" and node.library == "timm":
        yield Issue(where + ("library",), "timm has vision models only", "remove `library`, or use transformers")
    if node.backbone == "text" and not node.final_norm:
        yield Issue(where + ("final_norm",), "a text backbone (post-LN: BERT, ELECTRA) has no final LayerNorm to drop",
                    "remove `final_norm`")
    if node.image_cls and node.embeddings == "own" and node.backbone == "vision":
        yield Issue(where + ("image_cls",), "a vision backbone embeds images with its own [CLS]: `image_cls` is "
                    "for new patch embeddings", "remove `image_cls`, or set `embeddings: new`")
    if node.position_image_size and node.position_image_size % node.patch_size:
        yield Issue(where + ("position_image_size",), f"{node.position_image_size}-pixel images do not split into "
                    f"{node.patch_size}-pixel patches", f"use a multiple of {node.patch_size}")
    if node.weights and node.library == "transformers":
        yield Issue(where + ("weights",), "`weights` is a timm weights file", "name the model folder in `source`")


def offload_matches_zero_stage(spec: Spec) -> Iterator[Issue]:
    d = spec.distributed
    if d.offload_param != "none" and d.zero_stage != 3:
        yield Issue(("distributed", "offload_param"), f"offload_param needs ZeRO stage 3 (stage is {d.zero_stage}); DeepSpeed would silently ignore it",
                    "set `distributed.zero_stage: 3`, or `offload_param: none`")
    if d.offload_optimizer != "none" and d.zero_stage == 0:
        yield Issue(("distributed", "offload_optimizer"), "offload_optimizer needs ZeRO stage 1, 2 or 3",
                    "set `distributed.zero_stage: 2`")
    if d.offload_optimizer != "none" and spec.train.optimizer.name not in ("adam", "adamw"):
        yield Issue(("train", "optimizer", "name"), f"an offloaded optimizer must be Adam or AdamW (DeepSpeedCPUAdam), not {spec.train.optimizer.name}",
                    "use `adamw`, or `offload_optimizer: none`")


def warmup_fits_in_steps(spec: Spec) -> Iterator[Issue]:
    w = spec.train.schedule.warmup
    if w >= 1 and w >= spec.train.steps:
        yield Issue(("train", "schedule", "warmup"), f"warm-up of {int(w)} steps is not shorter than train.steps {spec.train.steps}",
                    "use a fraction (e.g. 0.1) or fewer steps")


def heads_divide_widths(spec: Spec) -> Iterator[Issue]:
    for name, node in spec.nodes.items():
        if isinstance(node, Fusion) and node.width is not None and node.width % node.heads:
            yield Issue(("nodes", name, "heads"), f"{node.heads} heads do not divide width {node.width}",
                        f"use a divisor of {node.width}, e.g. {next(h for h in (8, 4, 2, 1) if node.width % h == 0)}")
        size = getattr(node, "size", None)
        if size is not None and size.hidden and size.heads and size.hidden % size.heads:
            yield Issue(("nodes", name, "size", "heads"), f"{size.heads} heads do not divide hidden {size.hidden}",
                        "pick heads that divide hidden")


def tie_needs_a_text_encoder(spec: Spec) -> Iterator[Issue]:
    for name, head in spec.heads.items():
        if head.kind == "mlm" and head.tie and head.vocab_from is None:
            yield Issue(("heads", name, "tie"), "tie shares the decoder with a text encoder's token embeddings, "
                        "but the head names none", "set `vocab_from:` to the text encoder")


def skipping_needs_no_accumulation(spec: Spec) -> Iterator[Issue]:
    micro, accum = spec.batch_plan()
    if spec.train.exploding.action == "skip" and accum > 1:
        yield Issue(("train", "exploding", "action"), f"skipping a step needs gradient accumulation 1, and this "
                    f"spec accumulates {accum} micro batches", "use stop or warn, or raise micro_batch_size")
    if spec.train.nonfinite.action == "skip" and accum > 1:
        yield Issue(("train", "nonfinite", "action"), f"skipping a step needs gradient accumulation 1, and this "
                    f"spec accumulates {accum} micro batches: the ones already added to a step cannot be taken back "
                    "from ZeRO's gradient partitions", f"set train.micro_batch_size to "
                    f"{spec.train.batch_size // spec.distributed.world_size}, or `action: stop`")


def heads_are_trained(spec: Spec) -> Iterator[Issue]:
    trained = {spec.objective_head(n) for n in spec.objectives}
    for name in spec.heads:
        if spec.objectives and name not in trained:
            yield Issue(("heads", name), f"no objective trains '{name}': it would be computed for nothing",
                        "add an objective for it, or remove it", severity="warning")


def task_feeds_one_input_each(spec: Spec) -> Iterator[Issue]:
    task = TASKS[spec.data.train.task]
    by = {m: [n for n, i in spec.inputs.items() if i.modality == m] for m in task.inputs}
    wrong = [m for m, names in by.items() if len(names) != 1]
    if wrong:
        have = " and ".join(f"{m} inputs {by[m]}" for m in task.inputs)
        need = ", ".join(task.inputs[:-1]) + f" and one {task.inputs[-1]}" if len(task.inputs) > 1 else task.inputs[0]
        yield Issue(("inputs",), f"the {task.name} task needs exactly one {need} input", f"this spec has {have}")


def task_trains_its_objectives(spec: Spec) -> Iterator[Issue]:
    task = TASKS[spec.data.train.task]
    other = [n for n, o in spec.objectives.items() if o.kind not in task.objectives]
    if task.head is None:
        if other:
            kinds = ", ".join(task.objectives[:-1]) + f" and {task.objectives[-1]}"
            yield Issue(("objectives", other[0]), f"the {task.name} task trains {kinds} objectives, not "
                        f"'{spec.objectives[other[0]].kind}'", "remove it, or train it with its own task "
                        "(data.train.task)")
        elif not spec.objectives:
            yield Issue(("objectives",), "there is no objective to train",
                        "add `objectives: {itm: {weight: 1.0}}` (and/or mlm, itc)")
        return
    kind = task.head
    heads = [n for n, h in spec.heads.items() if h.kind == kind]
    objectives = [n for n, o in spec.objectives.items() if o.kind == kind]
    if len(heads) != 1 or len(objectives) != 1 or len(spec.objectives) != 1:
        yield Issue(("objectives",), f"the {task.name} task trains one {kind} head with one {kind} objective; "
                    f"this spec has heads {heads} and objectives {objectives}"
                    + (f" (and {other})" if other else ""),
                    f"add e.g. `objectives: {{{heads[0] if heads else kind}: {{kind: {kind}}}}}`" if not other
                    else f"remove {other}: a {task.name} run trains only its {kind} head")


def data_fits_the_task(spec: Spec) -> Iterator[Issue]:
    task = TASKS[spec.data.train.task]
    for key in ("train", "val"):
        source = getattr(spec.data, key)
        if source is None:
            continue
        where = ("data", key)
        if key == "val" and source.task != task.name:
            yield Issue(where + ("task",), f"validation reads the {source.task} task, training the {task.name} task",
                        f"set `task: {task.name}` (a run validates the task it trains)")
            continue
        kind = source.source.partition(":")[0]
        if kind == "webdataset":
            if not task.streams:
                yield Issue(where + ("source",), f"the {task.name} task reads no webdataset shards (captions "
                            "pretraining does)", "use arrow: or jsonl: files")
            for name in ("family", "samples"):
                if getattr(source, name) is not None:
                    yield Issue(where + (name,), f"a webdataset stream takes no `{name}`",
                                "remove it (shards are read whole, epoch after epoch)")
            continue
        if kind == "arrow" and not task.families or kind == "jsonl" and not task.fields:
            yield Issue(where + ("source",), f"the {task.name} task reads builtin:shapes only, not {kind} files",
                        "use `source: builtin:shapes`")
            continue
        families = source.family if isinstance(source.family, list) else [source.family]
        if kind != "arrow" or source.family is None:
            continue
        if len(families) > 1 and task.head is not None:
            yield Issue(where + ("family",), f"the {task.name} task reads one table family, not {len(families)}",
                        "name one family; several are for captions pretraining (e.g. [coco, vg])")
            continue
        for i, family in enumerate(families):
            at = where + ("family",) + ((i,) if isinstance(source.family, list) else ())
            full = resolve_family(family)
            if full not in FAMILY_TASK:
                yield Issue(at, f"unknown Arrow table family '{family}'",
                            suggest(family, list(FAMILY_TASK) + list(FAMILY_ALIASES)))
            elif FAMILY_TASK[full] != task.name:
                yield Issue(at, f"the {full} tables hold {FAMILY_TASK[full]} examples, not {task.name}",
                            f"name a {task.name} family: {', '.join(task.families)}")


SPEC_RULES: list[Callable[[Spec], Iterator[Issue]]] = [
    names_are_distinct_identifiers,
    batch_sizes_divide,
    size_overrides_need_random_init,
    encoders_name_a_source,
    offload_matches_zero_stage,
    warmup_fits_in_steps,
    heads_divide_widths,
    tie_needs_a_text_encoder,
    skipping_needs_no_accumulation,
    heads_are_trained,
    task_feeds_one_input_each,
    task_trains_its_objectives,
    data_fits_the_task,
]


def check_spec(spec: Spec) -> list[Issue]:
    return [issue for rule in SPEC_RULES for issue in rule(spec)]
