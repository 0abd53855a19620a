"""The emitted GraphModule: readable code, real forward/backward, shapes that match the compile-time ones."""

from __future__ import annotations

import shutil

import torch

import graphspec
from graphspec.compiler import build_model, compile_spec, write_build


def _batch(spec, batch: int = 3) -> dict:
    torch.manual_seed(0)
    text, image = spec.inputs["text"], spec.inputs["image"]
    mask = torch.ones(batch, text.max_length, dtype=torch.long)
    mask[0, text.max_length // 2:] = 0  # one padded text
    return {"text_ids": torch.randint(0, 64, (batch, text.max_length)), "text_mask": mask,
            "image": torch.randn(batch, 3, image.size, image.size)}


def test_generated_code_reads_like_the_spec(tiny, write_spec):
    code = compile_spec(graphspec.load(write_spec(tiny))).module.code
    assert "def forward(self, text_ids, text_mask, image, mlm_labels = None, image_rows = None):" in code
    assert "text_tower = self.text_tower(text_ids, text_mask)" in code
    assert "select_rows(vision_tower_seq, image_rows)" in code  # the tower's port, spread to the rows
    assert "fusion = self.fusion(text_tower_seq, vision_tower_seq_rows)" in code
    assert "pooled = self.pooled(fusion_text, fusion_image)" in code
    assert "self.heads.mlm(fusion_text, labels = mlm_labels)" in code
    assert "return {'mlm': mlm, 'itm': itm}" in code or "return {'itm': itm, 'mlm': mlm}" in code


def test_forward_backward_with_real_weights(tiny, write_spec):
    spec = graphspec.load(write_spec(tiny))
    model, _ = build_model(spec)
    out = model(**_batch(spec))
    assert out["itm"].shape == (3, 2)
    assert out["mlm"].shape == (3, 12, 64)
    (out["itm"].sum() + out["mlm"].sum()).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_mlm_decodes_only_labelled_positions(tiny, write_spec):
    spec = graphspec.load(write_spec(tiny))
    model, _ = build_model(spec)
    labels = torch.full((3, 12), -100)
    labels[0, 1], labels[2, 4], labels[2, 5] = 3, 4, 5
    out = model(**_batch(spec), mlm_labels=labels)
    assert out["mlm"].shape == (3, 64)  # (N labelled, vocab)
    full = model(**_batch(spec))["mlm"]
    model.eval()
    assert torch.allclose(model(**_batch(spec), mlm_labels=labels)["mlm"], model(**_batch(spec))["mlm"][labels != -100],
                          atol=1e-5)
    assert full.shape == (3, 12, 64)


def test_compile_time_shapes_match_the_real_forward(tiny, write_spec):
    spec = graphspec.load(write_spec(tiny))
    shapes = compile_spec(spec).summary["shapes"]
    model, _ = build_model(spec)
    seen = {}
    hooks = [getattr(model, n).register_forward_hook(lambda m, i, o, n=n: seen.setdefault(n, o))
             for n in ("text_tower", "vision_tower", "fusion", "pooled")]
    model(**_batch(spec))
    for h in hooks:
        h.remove()
    assert shapes["vision_tower"] == f"seq (B, {seen['vision_tower']['seq'][0].shape[1]}, 32)" == "seq (B, 17, 32)"
    assert shapes["fusion"] == "text (B, 12, 32), image (B, 17, 32)"
    assert tuple(seen["pooled"]["pooled"].shape) == (3, 64) and shapes["pooled"] == "pooled (B, 64)"


def test_random_init_is_seeded_by_the_spec(tiny, write_spec):
    spec = graphspec.load(write_spec(tiny))
    a, _ = build_model(spec)
    b, _ = build_model(spec)
    c, _ = build_model(graphspec.override(spec, {"train.seed": 1}))
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["fusion.layers.0.text.cross.q.weight"], sc["fusion.layers.0.text.cross.q.weight"])


def test_build_directory_holds_every_artifact(tiny, write_spec, tmp_path):
    compiled = compile_spec(graphspec.load(write_spec(tiny)))
    write_build(compiled, tmp_path / "build")
    names = {p.name for p in (tmp_path / "build").iterdir()}
    assert {"manifest.json", "spec.resolved.json", "ds_config.json", "param_groups.json", "freeze.json",
            "summary.json", "summary.txt", "model.py", "graph.mmd", "graph.dot"} <= names
    assert not any(n.endswith(".tmp") for n in names)
    mermaid = (tmp_path / "build" / "graph.mmd").read_text()
    assert "fusion -->|text| pooled" in mermaid and "text_tower -.->|vocab| mlm" in mermaid
    summary = (tmp_path / "build" / "summary.txt").read_text()
    assert "fusion" in summary and "zero_0" in summary
    pictures = {"graph.svg", "graph.png"} & names
    assert pictures == ({"graph.svg", "graph.png"} if shutil.which("dot") else set())
    if pictures:
        assert (tmp_path / "build" / "graph.svg").read_text().lstrip().startswith("<?xml")
