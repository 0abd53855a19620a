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
from .schema import ENCODER_KINDS, FUSION_KINDS, Spec
from .schema.base import NAME_PATTERN

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
    micro = t.micro_batch_size or max(1, t.batch_size // d.world_size)
    if t.batch_size % (micro * d.world_size):
        yield Issue(("train", "batch_size"),
                    f"batch_size {t.batch_size} is not micro_batch_size {micro} x accumulation x world_size {d.world_size}",
                    f"make batch_size a multiple of {micro * d.world_size}, e.g. {micro * d.world_size * max(1, round(t.batch_size / (micro * d.world_size)))}")


def size_overrides_need_random_init(spec: Spec) -> Iterator[Issue]:
    for name, node in spec.nodes.items():
        if node.kind in ENCODER_KINDS + ("one_tower",) and node.size is not None and node.init == "pretrained" \
                and not getattr(node, "weights", None):
            yield Issue(("nodes", name, "size"), "size overrides change the weights' shapes, so they cannot load pretrained weights",
                        "set `init: random`, remove `size`, or (timm) name a `weights` file of that size")


def encoders_name_a_source(spec: Spec) -> Iterator[Issue]:
    for name, node in spec.nodes.items():
        if node.kind == "one_tower" and node.backbone == "vision":
            if not node.source:
                yield Issue(("nodes", name, "source"), "a vision one_tower needs a timm ViT name as its source",
                            "set `source:` e.g. deit_tiny_patch16_224")
            if node.model_type:
                yield Issue(("nodes", name, "model_type"), "`model_type` is for a text backbone",
                            "remove it; `source` names the timm model")
            continue
        if node.kind not in ("hf_text", "hf_vision", "one_tower"):
            continue
        if node.init == "pretrained" and not node.source:
            yield Issue(("nodes", name, "source"), "a pretrained encoder needs a source",
                        "set `source:` to a hub id or a local directory")
        if node.init == "random" and not (node.source or node.model_type):
            yield Issue(("nodes", name), "a random encoder needs a config: a `source` or a `model_type`",
                        "set `model_type:` (e.g. 'bert') to build it offline")


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
        if node.kind in FUSION_KINDS and node.width is not None and node.width % node.heads:
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


def objectives_exist(spec: Spec) -> Iterator[Issue]:
    if spec.heads and not spec.objectives:
        yield Issue(("objectives",), "no objectives: nothing would train the heads",
                    "add e.g. `objectives: {itm: {weight: 1.0}}`", severity="warning")


SPEC_RULES: list[Callable[[Spec], Iterator[Issue]]] = [
    names_are_distinct_identifiers,
    batch_sizes_divide,
    size_overrides_need_random_init,
    encoders_name_a_source,
    offload_matches_zero_stage,
    warmup_fits_in_steps,
    heads_divide_widths,
    tie_needs_a_text_encoder,
    objectives_exist,
]


def check_spec(spec: Spec) -> list[Issue]:
    return [issue for rule in SPEC_RULES for issue in rule(spec)]
