"""graphspec.language.checks: each spec rule, triggered once, with its message; the shipped quickstart passes them all."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

import graphspec
from graphspec import Spec, SpecError
from graphspec.language.reading import spec_warnings
from graphspec.language.checks import SPEC_RULES, check_spec

REPO = Path(__file__).resolve().parents[2]


def _set(data: dict, dotted: str, value) -> None:
    *parents, last = dotted.split(".")
    for part in parents:
        data = data.setdefault(part, {})
    if value is None:
        data.pop(last, None)
    else:
        data[last] = value


# (rule, changes to the small spec, path of the issue, message, hint)
ONE_TOWER = {"kind": "one_tower", "inputs": {"text": "text", "image": "image"}, "backbone": "text",
             "model_type": "bert", "init": "random"}

CASES = [
    ("batch_sizes_divide", {"train.batch_size": 8, "train.micro_batch_size": 3},
     ("train", "batch_size"), "batch_size 8 is not micro_batch_size 3 x accumulation x world_size 1",
     "make batch_size a multiple of 3, e.g. 9"),
    ("batch_sizes_divide", {"train.batch_size": 9, "distributed.world_size": 2},
     ("train", "batch_size"), "batch_size 9 is not micro_batch_size 4 x accumulation x world_size 2",
     "make batch_size a multiple of 8, e.g. 8"),
    ("size_overrides_need_random_init", {"nodes.vision_tower.init": "pretrained"},
     ("nodes", "vision_tower", "size"),
     "size overrides change the weights' shapes, so they cannot load pretrained weights",
     "set `init: random`, remove `size`, or (timm) name a `weights` file of that size"),
    ("encoders_name_a_source", {"nodes.text_tower.init": "pretrained", "nodes.text_tower.size": None,
                                "nodes.text_tower.model_type": None},
     ("nodes", "text_tower", "source"), "a pretrained encoder needs a source",
     "set `source:` to a hub id or a local directory"),
    ("encoders_name_a_source", {"nodes.text_tower.model_type": None},
     ("nodes", "text_tower"), "a random encoder needs a config: a `source` or a `model_type`",
     "set `model_type:` (e.g. 'bert') to build it offline"),
    ("offload_matches_zero_stage", {"distributed.offload_param": "cpu", "distributed.zero_stage": 2},
     ("distributed", "offload_param"),
     "offload_param needs ZeRO stage 3 (stage is 2); DeepSpeed would silently ignore it",
     "set `distributed.zero_stage: 3`, or `offload_param: none`"),
    ("offload_matches_zero_stage", {"distributed.offload_optimizer": "cpu", "distributed.zero_stage": 0},
     ("distributed", "offload_optimizer"), "offload_optimizer needs ZeRO stage 1, 2 or 3",
     "set `distributed.zero_stage: 2`"),
    ("offload_matches_zero_stage", {"distributed.offload_optimizer": "cpu", "distributed.zero_stage": 2,
                                    "train.optimizer.name": "sgd"},
     ("train", "optimizer", "name"), "an offloaded optimizer must be Adam or AdamW (DeepSpeedCPUAdam), not sgd",
     "use `adamw`, or `offload_optimizer: none`"),
    ("warmup_fits_in_steps", {"train.schedule.warmup": 20},
     ("train", "schedule", "warmup"), "warm-up of 20 steps is not shorter than train.steps 20",
     "use a fraction (e.g. 0.1) or fewer steps"),
    ("heads_divide_widths", {"nodes.fusion.width": 100, "nodes.fusion.heads": 3},
     ("nodes", "fusion", "heads"), "3 heads do not divide width 100", "use a divisor of 100, e.g. 4"),
    ("heads_divide_widths", {"nodes.text_tower.size.heads": 3},
     ("nodes", "text_tower", "size", "heads"), "3 heads do not divide hidden 32", "pick heads that divide hidden"),
    ("names_are_distinct_identifiers", {"nodes.forward": {"kind": "projection", "input": "pooled", "width": 8}},
     ("nodes", "forward"), "'forward' is a reserved name", "rename it, e.g. 'forward_'"),
    ("names_are_distinct_identifiers", {"heads.class": {"kind": "itm", "input": "pooled"}},
     ("heads", "class"), "'class' is a reserved name", "rename it, e.g. 'class_'"),
    ("names_are_distinct_identifiers", {"nodes.text": {"kind": "projection", "input": "pooled", "width": 8}},
     ("nodes", "text"), "the name 'text' is already used in inputs",
     "inputs, nodes and heads share one namespace: rename one"),
    ("names_are_distinct_identifiers", {"heads.pooled": {"kind": "itm", "input": "pooled"}},
     ("heads", "pooled"), "the name 'pooled' is already used in nodes",
     "inputs, nodes and heads share one namespace: rename one"),
    ("names_are_distinct_identifiers", {"nodes.my-proj": {"kind": "projection", "input": "pooled", "width": 8}},
     ("nodes", "my-proj"), "'my-proj' is not a valid name: references could not name it",
     "use letters, digits and '_', starting with a letter"),
    ("tie_needs_a_text_encoder", {"heads.mlm.tie": True, "heads.mlm.vocab_from": None, "heads.mlm.vocab_size": 64},
     ("heads", "mlm", "tie"),
     "tie shares the decoder with a text encoder's token embeddings, but the head names none",
     "set `vocab_from:` to the text encoder"),
    ("encoders_name_a_source", {"nodes.joint": {"kind": "one_tower", "inputs": {"text": "text", "image": "image"},
                                                "backbone": "vision", "init": "random"}},
     ("nodes", "joint", "source"), "a vision one_tower needs a timm ViT name as its source",
     "set `source:` e.g. deit_tiny_patch16_224, or `library: transformers` with a `model_type`"),
    ("encoders_name_a_source", {"nodes.joint": {**ONE_TOWER, "final_norm": False}},
     ("nodes", "joint", "final_norm"), "a text backbone (post-LN: BERT, ELECTRA) has no final LayerNorm to drop",
     "remove `final_norm`"),
    ("encoders_name_a_source", {"nodes.joint": {**ONE_TOWER, "library": "timm"}},
     ("nodes", "joint", "library"), "timm has vision models only", "remove `library`, or use transformers"),
    ("encoders_name_a_source", {"nodes.joint": {**ONE_TOWER, "backbone": "vision", "model_type": None,
                                                "source": "vit_tiny_patch16_224", "image_cls": True}},
     ("nodes", "joint", "image_cls"), "a vision backbone embeds images with its own [CLS]: `image_cls` is for new "
     "patch embeddings", "remove `image_cls`, or set `embeddings: new`"),
    ("encoders_name_a_source", {"nodes.joint": {**ONE_TOWER, "backbone": "vision", "library": "transformers",
                                                "model_type": "vit", "weights": "vit.safetensors"}},
     ("nodes", "joint", "weights"), "`weights` is a timm weights file", "name the model folder in `source`"),
    ("skipping_needs_no_accumulation", {"train.nonfinite": {"action": "skip"}, "train.micro_batch_size": 4},
     ("train", "nonfinite", "action"), "skipping a step needs gradient accumulation 1, and this spec accumulates "
     "2 micro batches: the ones already added to a step cannot be taken back from ZeRO's gradient partitions",
     "set train.micro_batch_size to 8, or `action: stop`"),
    ("task_feeds_one_input_each", {"inputs.caption": {"modality": "text"}},
     ("inputs",), "the captions task needs exactly one text and one image input",
     "this spec has text inputs ['text', 'caption'] and image inputs ['image']"),
    ("task_feeds_one_input_each", {"data.train.task": "refexp", "heads": {"ref": {"kind": "ref", "inputs": {
        "image": "fusion.image", "text": "pooled", "boxes": "image"}}}, "objectives": {"ref": {}}},
     ("inputs",), "the refexp task needs exactly one text, image and one boxes input",
     "this spec has text inputs ['text'] and image inputs ['image'] and boxes inputs []"),
    ("task_trains_its_objectives", {"heads.ve": {"kind": "classify", "input": "pooled", "classes": 3},
                                    "objectives.ve": {"kind": "classify"}},
     ("objectives", "ve"), "the captions task trains mlm, itm and itc objectives, not 'classify'",
     "remove it, or train it with its own task (data.train.task)"),
    ("task_trains_its_objectives", {"objectives": {}},
     ("objectives",), "there is no objective to train", "add `objectives: {itm: {weight: 1.0}}` (and/or mlm, itc)"),
    ("task_trains_its_objectives", {"data.train.task": "snli_ve", "data.val": {"task": "snli_ve", "split": "val"},
                                    "objectives": {"ve": {"kind": "classify"}}},
     ("objectives",), "the snli_ve task trains one classify head with one classify objective; this spec has heads "
     "[] and objectives ['ve']", "add e.g. `objectives: {classify: {kind: classify}}`"),
    ("task_trains_its_objectives", {"data.train.task": "snli_ve", "data.val": {"task": "snli_ve", "split": "val"},
                                    "heads.ve": {"kind": "classify", "input": "pooled", "classes": 3},
                                    "objectives": {"ve": {"kind": "classify"}, "itm": {}}},
     ("objectives",), "the snli_ve task trains one classify head with one classify objective; this spec has heads "
     "['ve'] and objectives ['ve'] (and ['itm'])", "remove ['itm']: a snli_ve run trains only its classify head"),
    ("data_fits_the_task", {"data.val": {"task": "nlvr2", "split": "val"}},
     ("data", "val", "task"), "validation reads the nlvr2 task, training the captions task",
     "set `task: captions` (a run validates the task it trains)"),
    ("data_fits_the_task", {"data.train": {"source": "arrow:data", "family": ["coco", "snli"]}},
     ("data", "train", "family", 1), "the snli tables hold snli_ve examples, not captions",
     "name a captions family: coco_caption_karpathy, f30k_caption_karpathy, vg, sbu, conceptual_caption"),
    ("data_fits_the_task", {"data.train": {"source": "arrow:data", "family": "cocoo"}},
     ("data", "train", "family"), "unknown Arrow table family 'cocoo'", "did you mean 'coco'?"),
    ("data_fits_the_task", {"data.train": {"source": "arrow:data", "family": ["snli", "nlvr2"], "task": "snli_ve"},
                            "heads.ve": {"kind": "classify", "input": "pooled", "classes": 3},
                            "objectives": {"ve": {"kind": "classify"}}, "data.val": None},
     ("data", "train", "family"), "the snli_ve task reads one table family, not 2",
     "name one family; several are for captions pretraining (e.g. [coco, vg])"),
    ("data_fits_the_task", {"data.train": {"source": "jsonl:x.jsonl", "task": "retrieval"},
                            "heads": {"itc": {"kind": "itc", "inputs": {"text": "text_tower", "image": "vision_tower"}}},
                            "objectives": {"itc": {}}, "data.val": None},
     ("data", "train", "source"), "the retrieval task reads builtin:shapes only, not jsonl files",
     "use `source: builtin:shapes`"),
]


def _spec(spec_data: dict, changes: dict) -> Spec:
    for dotted, value in changes.items():
        _set(spec_data, dotted, value)
    return Spec.model_validate(spec_data)


def test_every_rule_has_a_case():
    assert {rule.__name__ for rule in SPEC_RULES} - {"heads_are_trained"} == {c[0] for c in CASES}


@pytest.mark.parametrize("rule, changes, path, message, hint", CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_rule_reports_the_field_and_the_fix(spec_data, rule, changes, path, message, hint):
    spec = _spec(spec_data, changes)
    [issue] = [i for i in check_spec(spec) if i.severity == "error"]  # exactly this rule fires
    assert (issue.path, issue.message, issue.hint, issue.severity) == (path, message, hint, "error")
    [fn] = [r for r in SPEC_RULES if r.__name__ == rule]
    assert list(fn(spec)) == [issue]


def test_rule_errors_reach_the_user_located(load_error, spec_text, line_of):
    text = spec_text.replace("  schedule: {warmup: 2}", "  schedule: {warmup: 20}")
    error = load_error(text)
    [issue] = error.issues
    assert issue.message == "warm-up of 20 steps is not shorter than train.steps 20"
    assert str(issue.loc) == f"spec.yaml:{line_of(text, 'warmup: 20')}:14"
    assert "fix: use a fraction (e.g. 0.1) or fewer steps" in str(error)


def test_all_rule_errors_are_reported_together(spec_data):
    changes = {"train.schedule.warmup": 20, "nodes.fusion.width": 100, "nodes.fusion.heads": 3,
               "distributed.offload_param": "cpu"}
    for dotted, value in changes.items():
        _set(spec_data, dotted, value)
    with pytest.raises(SpecError) as info:
        graphspec.loads(yaml.safe_dump(spec_data))
    assert {i.dotted for i in info.value.issues} == {"train.schedule.warmup", "nodes.fusion.heads",
                                                     "distributed.offload_param"}


def test_a_warmup_fraction_is_not_a_number_of_steps(spec_data):
    assert check_spec(_spec(spec_data, {"train.schedule.warmup": 0.99, "train.steps": 1})) == []


def test_heads_without_objectives_are_refused_at_load(spec_text, line_of):
    """A run would have nothing to train: validate says so (it used to warn and let `run` fail)."""
    text = spec_text[: spec_text.index("objectives:")] + spec_text[spec_text.index("train:"):]
    with pytest.raises(SpecError) as info:
        graphspec.loads(text)
    [issue] = info.value.issues
    assert (issue.path, issue.message) == (("objectives",), "there is no objective to train")
    assert not spec_warnings(graphspec.loads(spec_text))


def test_a_head_no_objective_trains_is_a_warning(spec_data):
    spec = _spec(spec_data, {"heads.spare": {"kind": "itm", "input": "pooled"}})
    [issue] = check_spec(spec)
    assert (issue.path, issue.severity) == (("heads", "spare"), "warning")
    assert issue.message == "no objective trains 'spare': it would be computed for nothing"


def test_the_quickstart_spec_passes_every_rule():
    spec = graphspec.load(REPO / "specs" / "quickstart.yaml")
    assert check_spec(spec) == []
