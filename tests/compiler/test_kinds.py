"""The kind registry: every spec kind has a builder whose declared ports match its spec class, and every
registered builder builds a module that runs forward and backward without NaNs (parametrized over all)."""

from __future__ import annotations

import copy
import typing

import pytest
import torch
from pydantic import BaseModel

from graphspec.compiler import build_model
from graphspec.compiler.kinds import KINDS
from graphspec.language.schema import HEAD_CLASSES, NODE_CLASSES, Spec, kind_of
from tests.conftest import TINY

CLASSES = {kind_of(c): c for c in NODE_CLASSES + HEAD_CLASSES}
POOLED_TEXT = {"kind": "itm", "input": "pooled"}


def reference_fields(cls: type[BaseModel]) -> set[str]:
    """The ports a spec class can reference from: `input`, `vocab_from`, each field of an `inputs` object, or
    the positions of an `inputs` list."""
    out = {name for name in ("input", "vocab_from") if name in cls.model_fields}
    inputs = cls.model_fields.get("inputs")
    if inputs is not None:
        annotation = inputs.annotation
        if typing.get_origin(annotation) is list:
            most = next(m.max_length for m in inputs.metadata if hasattr(m, "max_length"))
            out |= {f"inputs.{i}" for i in range(most)}
        else:
            out |= {f"inputs.{k}" for k in annotation.model_fields}
    return out


def test_every_spec_kind_has_a_builder_and_every_builder_a_spec_kind():
    assert set(KINDS) == set(CLASSES)


def test_the_schema_encoder_kinds_are_the_builders_with_a_layer_stack():
    """`layer_N` ports: the spec language (encoder_kinds) and the builders (`layers=True`) agree on who has them."""
    from graphspec.language.schema import encoder_kinds

    assert set(encoder_kinds()) == {name for name, kind in KINDS.items() if kind.layers}


def test_every_task_row_has_a_registered_task_module_and_back():
    """A row without a module would pass `validate` and fail at `run`; a module without a row is unreachable."""
    from graphspec.runtime.tasks import REGISTRY
    from graphspec.language.schema import TASKS

    assert set(TASKS) == set(REGISTRY)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_declared_ports_match_the_spec_class(kind):
    k = KINDS[kind]
    assert set(k.reads) == reference_fields(CLASSES[kind]), kind
    if k.layers:  # `layer_N` ports join `seq`: a bare reference needs a main port
        assert k.main is not None
    if not callable(k.gives):
        if k.main is not None:
            assert k.main in k.gives
        elif len(k.gives) > 1:  # two streams, neither the main one: a reference must name its port
            assert kind in ("co_attention", "cross_attention")


# kind -> changes to the tiny spec that put that kind in the graph
CASES = {
    "hf_text": {}, "timm_vision": {}, "co_attention": {}, "cls_pool": {}, "itm": {}, "mlm": {},
    "hf_vision": {"nodes.vision_tower": {"kind": "hf_vision", "model_type": "vit", "init": "random",
                                         "input": "image", "size": {"hidden": 32, "layers": 2, "heads": 2,
                                                                    "patch_size": 8, "mlp_ratio": 2}}},
    "one_tower": {"nodes": {"joint": {"kind": "one_tower", "inputs": {"text": "text", "image": "image"},
                                      "backbone": "text", "model_type": "bert", "init": "random", "patch_size": 8,
                                      "size": {"hidden": 32, "layers": 2, "heads": 2, "mlp_ratio": 2,
                                               "vocab_size": 64, "max_positions": 16}},
                            "pooled": {"kind": "cls_pool", "inputs": ["joint.seq"]}},
                  "heads": {"itm": POOLED_TEXT, "mlm": {"kind": "mlm", "input": "joint.text", "vocab_from": "joint"}}},
    "projection": {"nodes.proj": {"kind": "projection", "input": "pooled", "width": 16},
                   "heads.itm": {"kind": "itm", "input": "proj"}},
    "cross_attention": {"nodes.fusion.kind": "cross_attention"},
    "merged_attention": {"nodes.fusion.kind": "merged_attention"},
    "mean_pool": {"nodes.pooled": {"kind": "mean_pool", "input": "fusion.text"}},
    "itc": {"heads.itc": {"kind": "itc", "inputs": {"text": "text_tower", "image": "vision_tower"}, "dim": 16}},
    "classify": {"heads.ve": {"kind": "classify", "input": "pooled", "classes": 3, "hidden": 16}},
    "pair_classify": {"heads.nlvr2": {"kind": "pair_classify", "input": "pooled"}},
    "vqa": {"heads.vqa": {"kind": "vqa", "input": "pooled", "answers": 7}},
    "ref": {"inputs.regions": {"modality": "boxes", "max_candidates": 5},
            "heads.ref": {"kind": "ref", "inputs": {"image": "fusion.image", "text": "pooled", "boxes": "regions"},
                          "heads": 2}},
}


def test_every_registered_kind_has_a_forward_case():
    assert set(CASES) == set(KINDS)


def _spec(changes: dict) -> Spec:
    data = copy.deepcopy(TINY)
    data["objectives"] = {}  # architecture only: the task rules are the loader's, not the builders'
    for dotted, value in changes.items():
        *parents, last = dotted.split(".")
        cur = data
        for part in parents:
            cur = cur[part]
        cur[last] = value
    return Spec.model_validate(data)


def _inputs(spec: Spec, b: int = 4) -> dict:
    torch.manual_seed(0)
    out = {}
    for name, inp in spec.inputs.items():
        keys = inp.tensors(name)
        if inp.modality == "text":
            mask = torch.ones(b, inp.max_length, dtype=torch.long)
            mask[0, inp.max_length // 2:] = 0  # one padded row
            out[keys[0]], out[keys[1]] = torch.randint(5, 64, (b, inp.max_length)), mask
        elif inp.modality == "image":
            out[keys[0]] = torch.randn(b, inp.channels, inp.size, inp.size)
        else:
            out[keys[0]] = torch.rand(b, inp.max_candidates, 4)
            out[keys[1]] = torch.tensor([[True] * (inp.max_candidates - 1) + [False]] * b)
    return out


@pytest.mark.parametrize("kind", sorted(CASES))
def test_every_builder_runs_forward_and_backward(kind):
    spec = _spec(CASES[kind])
    model, _ = build_model(spec)
    named = [n for n, obj in {**spec.nodes, **{f"heads.{h}": o for h, o in spec.heads.items()}}.items()
             if obj.kind == kind]
    assert named, f"the case for {kind} does not use it"
    out = model(**_inputs(spec))
    tensors = [t for v in out.values() for t in (v.values() if isinstance(v, dict) else [v])]
    loss = sum(t.float().masked_fill(t.float() < -1e30, 0).sum() for t in tensors)
    loss.backward()
    for prefix in named:
        params = list(model.get_submodule(prefix).named_parameters())
        assert params or kind in ("mean_pool",), prefix
        for name, p in params:
            assert p.grad is not None and torch.isfinite(p.grad).all(), f"{prefix}.{name}"


@pytest.mark.parametrize("kind", sorted(CASES))
def test_distinct_images_with_their_rows_compute_what_every_rows_image_does(kind):
    """Pixels holding each image once plus `<image>_rows` give the outputs of the batch with every row's image."""
    spec = _spec(CASES[kind])
    model, _ = build_model(spec)
    model.eval()
    inputs = _inputs(spec)
    rows = torch.tensor([2, 0, 2, 1])
    spread, distinct = dict(inputs), dict(inputs)
    for name, inp in spec.inputs.items():
        if inp.modality == "image":
            (key,) = inp.tensors(name)
            distinct[key], spread[key] = inputs[key][:3], inputs[key][:3][rows]
            distinct[spec.rows_of(name)] = rows
    with torch.no_grad():
        want, got = model(**spread), model(**distinct)
    for head, value in want.items():
        for part, tensor in (value.items() if isinstance(value, dict) else [(None, value)]):
            other = got[head] if part is None else got[head][part]
            assert other.shape == tensor.shape and torch.allclose(other, tensor, atol=1e-5), (head, part)


def test_a_vision_tower_runs_once_per_distinct_image():
    spec = _spec({})
    model, _ = build_model(spec)
    seen = []
    model.vision_tower.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[0]))
    inputs = _inputs(spec)
    inputs["image"] = inputs["image"][:2]
    out = model(**inputs, image_rows=torch.tensor([0, 1, 1, 0]))
    assert seen == [2] and out["itm"].shape[0] == 4
    out["itm"].sum().backward()  # gradients of both rows reading an image reach the tower
    assert all(p.grad is not None for p in model.vision_tower.parameters())


def test_a_library_kinds_name_is_written_only_in_its_spec_class():
    """Every fact of an encoder kind lives in its registration (against its spec class): in graphspec/,
    compiler/ and runtime/ its name appears as a string of its own only in its class's `kind` field."""
    import ast
    from pathlib import Path

    import graphspec.compiler.builders  # noqa: F401  (registers the kinds)
    from graphspec.language.schema import nodes

    root = Path(__file__).resolve().parents[2]
    from graphspec.compiler.kinds import PIXELS, TOKENS

    names = {name for name, kind in KINDS.items() if TOKENS in kind.reads.values() or PIXELS in kind.reads.values()}
    assert {"hf_text", "hf_vision", "timm_vision", "one_tower"} <= names
    found = []
    for folder in ("graphspec", "compiler", "runtime"):
        for path in sorted((root / folder).rglob("*.py")):
            if any(p.is_symlink() for p in path.relative_to(root).parents if p != Path(".")):
                continue
            tree = ast.parse(path.read_text())
            allowed = set()
            if path == Path(nodes.__file__).resolve():  # the `kind: Literal["NAME"]` of each class
                for cls in (n for n in tree.body if isinstance(n, ast.ClassDef)):
                    for field in cls.body:
                        if isinstance(field, ast.AnnAssign) and getattr(field.target, "id", "") == "kind":
                            allowed |= {id(c) for c in ast.walk(field.annotation) if isinstance(c, ast.Constant)}
            found += [f"{path.relative_to(root)}:{c.lineno}: {c.value!r}" for c in ast.walk(tree)
                      if isinstance(c, ast.Constant) and c.value in names and id(c) not in allowed]
    assert not found, "\n".join(found)
