"""Experiment 2 exactly: each of the Renaissance platform's one-tower configurations (specs/paper/exp2/) has the
platform's parameters, part by part, and the fused stack computes what the platform's computes.

The reference here is built independently of graphspec's builders: transformers' own classes, put together the
way the platform's OneTowerEncoder does (only the hub model's encoder layers; new ELECTRA-style text embeddings
and a ViT-style image embedding at the backbone's embedding width; a type embedding; projections where the
widths differ; two dense + tanh poolers; ITM Linear(2H, 2); an untied MLM head). transformers 5 has no
ViTEncoder: a vision backbone's encoder is rebuilt from its layer class, as transformers 4 had it (a list of
layers; the model's final LayerNorm is not in it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from transformers import AutoConfig, AutoModel, BertConfig, ViTConfig
from transformers.models.bert.modeling_bert import BertPooler, BertPredictionHeadTransform
from transformers.models.deit.modeling_deit import DeiTLayer
from transformers.models.vit.modeling_vit import ViTEmbeddings, ViTLayer

import graphspec
from graphspec.compiler import build_model, compile_spec
from graphspec.language.errors import SpecError

SPECS = Path(__file__).resolve().parents[2] / "specs"
EXP2 = SPECS / "paper" / "exp2"

# The hub architectures the platform's configs name (their config.json's size fields), its text length and
# the parameter totals of its one-tower pretraining models (the issue that asked for this, counted from the
# platform's own classes): total, layers, text emb, patch conv, [CLS] + pos, type + proj, poolers, ITM, MLM.
_SMALL = {"hidden_size": 384, "num_attention_heads": 6, "intermediate_size": 1536}
_BASE = {"hidden_size": 768, "num_attention_heads": 12, "intermediate_size": 3072}
PLATFORM = {
    "electra_small": (("electra", {"embedding_size": 128, "hidden_size": 256, "num_attention_heads": 4,
                                   "intermediate_size": 1024}), 40,
                      (21_622_460, 9_477_120, 3_912_192, 98_432, 25_344, 66_304, 131_584, 1_026, 7_910_458)),
    "electra_base": (("electra", {"embedding_size": 768, **_BASE}), 40,
                     (134_519_612, 85_054_464, 23_473_152, 590_592, 152_064, 1_536, 1_181_184, 3_074, 24_063_546)),
    "bert_base": (("bert", _BASE), 40,
                  (134_519_612, 85_054_464, 23_473_152, 590_592, 152_064, 1_536, 1_181_184, 3_074, 24_063_546)),
    "vit_base": (("vit", _BASE), 40,
                 (134_519_612, 85_054_464, 23_473_152, 590_592, 152_064, 1_536, 1_181_184, 3_074, 24_063_546)),
    "deit_small": (("deit", _SMALL), 40,
                   (45_599_036, 21_293_568, 11_736_576, 295_296, 76_032, 768, 295_680, 1_538, 11_899_578)),
    "dino_s16": (("vit", _SMALL), 50,
                 (45_602_876, 21_293_568, 11_740_416, 295_296, 76_032, 768, 295_680, 1_538, 11_899_578)),
    # ELECTRA-base's config with hidden 448, 12 layers, 4 heads, FFN 4 x 448; its embedding width 768 stays
    "random": (("electra", {"embedding_size": 768, "hidden_size": 448, "num_attention_heads": 4,
                            "intermediate_size": 1792}), 40,
               (68_188_156, 28_971_264, 23_473_152, 590_592, 152_064, 690_560, 402_304, 1_794, 13_906_426)),
}
VOCAB, IMAGE, PATCH = 30522, 224, 16


class PlatformTextEmbeddings(nn.Module):
    """The platform's text embeddings (ELECTRA's, without token types): word + position, LayerNorm, dropout."""

    def __init__(self, vocab: int, positions: int, width: int, dropout: float = 0.1):
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab, width, padding_idx=0)
        self.position_embeddings = nn.Embedding(positions, width)
        self.LayerNorm = nn.LayerNorm(width, eps=1e-12)
        self.dropout = nn.Dropout(dropout)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.word_embeddings(ids) + self.position_embeddings(torch.arange(ids.shape[1]))
        return self.dropout(self.LayerNorm(x))


class PlatformOneTower(nn.Module):
    def __init__(self, model_type: str, fields: dict, text_length: int, vocab: int = VOCAB, image: int = IMAGE,
                 patch: int = PATCH):
        super().__init__()
        cfg: Any = AutoConfig.for_model(model_type, **fields)
        if model_type in ("vit", "deit"):  # transformers 4's ViTEncoder: the layers alone
            layer = ViTLayer if model_type == "vit" else DeiTLayer
            self.encoder = nn.ModuleList([layer(cfg) for _ in range(cfg.num_hidden_layers)])
        else:
            self.encoder = AutoModel.from_config(cfg).encoder
        hidden = cfg.hidden_size
        width = getattr(cfg, "embedding_size", hidden)
        self.text_embeddings = PlatformTextEmbeddings(vocab, text_length, width)
        self.image_embeddings = ViTEmbeddings(ViTConfig(image_size=image, patch_size=patch, hidden_size=width))
        self.token_type_embeddings = nn.Embedding(2, width)
        self.project = width != hidden
        if self.project:
            self.text_embedding_projection = nn.Linear(width, hidden)
            self.image_embedding_projection = nn.Linear(width, hidden)
        pooler = BertConfig(hidden_size=hidden)
        self.text_pooler, self.image_pooler = BertPooler(pooler), BertPooler(pooler)
        self.itm_score = nn.Linear(2 * hidden, 2)
        # the platform's MLMHead: BERT's transform, a decoder without bias, one vocabulary-sized bias
        self.mlm_score = nn.ModuleDict({"transform": BertPredictionHeadTransform(BertConfig(hidden_size=hidden)),
                                        "decoder": nn.Linear(hidden, vocab, bias=False)})
        self.mlm_bias = nn.Parameter(torch.zeros(vocab))

    def parts(self) -> tuple[int, ...]:
        def n(*mods) -> int:
            seen = {id(p): p.numel() for m in mods for p in (m.parameters() if isinstance(m, nn.Module) else [m])}
            return sum(seen.values())

        im = self.image_embeddings
        projections = [self.text_embedding_projection, self.image_embedding_projection] if self.project else []
        counted = (n(self.encoder), n(self.text_embeddings), n(im.patch_embeddings),
                   n(im.cls_token, im.position_embeddings), n(self.token_type_embeddings, *projections),
                   n(self.text_pooler, self.image_pooler), n(self.itm_score), n(self.mlm_score, self.mlm_bias))
        return (n(self),) + counted

    def forward(self, ids: torch.Tensor, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The platform's OneTowerEncoder.infer, to the fused text and image features: no attention mask."""
        text = self.text_embeddings(ids) + self.token_type_embeddings(torch.zeros_like(ids))
        image = self.image_embeddings(pixels)
        image = image + self.token_type_embeddings(torch.ones(image.shape[:2], dtype=torch.long))
        if self.project:
            text, image = self.text_embedding_projection(text), self.image_embedding_projection(image)
        x = torch.cat([text, image], dim=1)
        if isinstance(self.encoder, nn.ModuleList):
            for layer in self.encoder:
                x = layer(x)
        else:
            x = self.encoder(x)[0]
        return x[:, :text.shape[1]], x[:, text.shape[1]:]


@pytest.mark.parametrize("config", sorted(PLATFORM))
def test_each_configuration_has_the_platforms_parameters_part_by_part(config):
    (model_type, fields), text_length, expected = PLATFORM[config]
    with torch.device("meta"):
        reference = PlatformOneTower(model_type, fields, text_length).parts()
    assert reference == expected  # the independent build gives the platform's counts

    params = compile_spec(graphspec.load(EXP2 / f"{config}.yaml")).summary["params"]
    joint = params["joint"]["parts"]
    ours = (params["total"]["total"], joint["layers"], joint["text embeddings"], joint["patch conv"],
            joint["[CLS] + positions"], joint["type + projections"], params["pooled"]["total"],
            params["heads.itm"]["total"], params["heads.mlm"]["total"])
    assert ours == expected
    assert sum(joint.values()) == params["joint"]["total"]  # nothing of the backbone's own is left over


def _copy_into_reference(ours: nn.Module, reference: PlatformOneTower) -> None:
    """graphspec's one tower's weights under the platform's names."""
    names = {"text_embed.tokens": "text_embeddings.word_embeddings", "text_embed.pos": "text_embeddings.position_embeddings",
             "text_embed.norm": "text_embeddings.LayerNorm", "image_embed.proj": "image_embeddings.patch_embeddings.projection",
             "image_embed.cls": "image_embeddings.cls_token", "image_embed.pos": "image_embeddings.position_embeddings",
             "type_embed": "token_type_embeddings", "text_project": "text_embedding_projection",
             "image_project": "image_embedding_projection", "backbone.model.encoder": "encoder",
             "backbone.model.layers": "encoder"}
    state = {}
    for name, tensor in ours.state_dict().items():
        prefix = next(p for p in names if name == p or name.startswith(p + "."))
        state[names[prefix] + name[len(prefix):]] = tensor
    missing, unexpected = reference.load_state_dict(state, strict=False)
    assert not unexpected and all(k.startswith(("text_pooler", "image_pooler", "itm_score", "mlm_"))
                                  for k in missing), (missing, unexpected)


@pytest.mark.parametrize("backbone", ["text", "vision"])
def test_the_fused_stack_computes_what_the_platforms_does(backbone, tiny, write_spec):
    """ELECTRA (post-LN, embedding width 32 projected to 48) and ViT (pre-LN, its final LayerNorm dropped), small,
    with the platform's options: same weights, same outputs, padding attended to."""
    if backbone == "text":
        model_type, fields = "electra", {"embedding_size": 32, "hidden_size": 48, "num_attention_heads": 4,
                                         "intermediate_size": 96, "num_hidden_layers": 2}
        size = {"hidden": 48, "layers": 2, "heads": 4, "mlp_ratio": 2, "embedding_size": 32}
    else:
        model_type, fields = "vit", {"hidden_size": 48, "num_attention_heads": 4, "intermediate_size": 96,
                                     "num_hidden_layers": 2}
        size = {"hidden": 48, "layers": 2, "heads": 4, "mlp_ratio": 2}
    tiny["inputs"]["image"]["size"] = 32
    tiny["nodes"] = {
        "joint": {"kind": "one_tower", "inputs": {"text": "text", "image": "image"}, "backbone": backbone,
                  "model_type": model_type, "init": "random", "size": size, "embeddings": "new", "image_cls": True,
                  "embedding_init": "torch", "attention_mask": "none", "patch_size": 8, "vocab_size": 64,
                  "max_text_positions": 12, **({"library": "transformers", "final_norm": False}
                                               if backbone == "vision" else {})},
        "pooled": {"kind": "cls_pool", "inputs": ["joint.text", "joint.image"]}}
    tiny["heads"] = {"itm": {"kind": "itm", "input": "pooled"}}
    tiny["objectives"] = {"itm": {"weight": 1.0}}
    model, _ = build_model(graphspec.load(write_spec(tiny)))
    ours: Any = model.get_submodule("joint")
    reference = PlatformOneTower(model_type, fields, 12, vocab=64, image=32, patch=8)
    _copy_into_reference(ours, reference)
    ours.eval(), reference.eval()

    torch.manual_seed(0)
    ids = torch.randint(1, 64, (3, 12))
    mask = torch.ones(3, 12, dtype=torch.long)
    ids[0, 7:], mask[0, 7:] = 0, 0  # padding, which the platform attends to
    pixels = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        out = ours(ids, mask, pixels)
        text, image = reference(ids, pixels)
    assert out["text"][0].shape == text.shape and out["image"][0].shape == image.shape == (3, 17, 48)
    assert torch.allclose(out["text"][0], text, atol=1e-5) and torch.allclose(out["image"][0], image, atol=1e-5)
    with torch.no_grad():  # and the mask matters: masking the padding gives other outputs
        ours.mask_padding = True
        assert not torch.allclose(ours(ids, mask, pixels)["text"][0], text, atol=1e-3)


def test_the_platforms_init_of_the_new_embeddings(tiny, write_spec):
    """embedding_init: torch keeps what the platform leaves: [CLS] and positions N(0, 1), the Conv2d at PyTorch's
    default (uniform, bias not zero), a padding row drawn like the rest; bert: all at the field's 0.02."""
    def joint(init: str) -> Any:
        tiny["nodes"]["joint"] = {"kind": "one_tower", "inputs": {"text": "text", "image": "image"},
                                  "backbone": "text", "model_type": "bert", "init": "random",
                                  "size": {"hidden": 64, "layers": 1, "heads": 4}, "embeddings": "new",
                                  "image_cls": True, "embedding_init": init, "patch_size": 8}
        tiny["nodes"]["pooled"] = {"kind": "cls_pool", "inputs": ["joint.text", "joint.image"]}
        tiny["heads"] = {"itm": {"kind": "itm", "input": "pooled"}}
        tiny["objectives"] = {"itm": {"weight": 1.0}}
        return build_model(graphspec.load(write_spec(tiny)))[0].get_submodule("joint")

    torch_init, bert_init = joint("torch"), joint("bert")
    assert 0.8 < torch_init.image_embed.pos.std() < 1.2 and bert_init.image_embed.pos.std() < 0.03
    assert 0.5 < torch_init.image_embed.cls.std() < 1.6 and bert_init.image_embed.cls.std() < 0.05
    assert torch_init.image_embed.proj.bias.abs().sum() > 0 and bert_init.image_embed.proj.bias.abs().sum() == 0
    assert 0.015 < torch_init.text_embed.tokens.weight[0].std() < 0.025  # the padding row, not zeroed
    assert torch_init.text_embed.tokens.padding_idx == 0 and bert_init.text_embed.tokens.padding_idx is None
    assert 0.015 < torch_init.type_embed.weight.std() < 0.025  # the rest: init_weights' N(0, 0.02), as bert


def test_a_hierarchical_backbone_is_refused_with_the_reason(tiny, write_spec):
    spec = graphspec.load(EXP2 / "electra_small.yaml")
    data = spec.model_dump(exclude_none=True, by_alias=True)
    data["nodes"]["joint"].update(backbone="vision", library="transformers", model_type="swin",
                                  source="microsoft/swin-small-patch4-window7-224")
    data["nodes"]["joint"].pop("tokenizer", None)
    with pytest.raises(SpecError) as e:
        compile_spec(graphspec.load(write_spec(data)))
    issue = e.value.issues[0]
    assert issue.path == ("nodes", "joint", "source")
    assert "stages (2, 2, 18, 2 layers) change width" in issue.message and "2-D grid" in issue.message


def test_the_study_runs_each_configuration_as_its_file_gives_it():
    from graphspec.studies.plan import plan_study

    study = plan_study(SPECS / "studies" / "exp2.yaml", compile_check=False)
    pretrain = {r.variant.removeprefix("exp2-electra-small-").replace("-", "_"): r.spec
                for r in study.runs if r.stage == "pretrain"}
    assert set(pretrain) == set(PLATFORM)
    for config, spec in pretrain.items():
        ours = spec.model_dump(exclude={"name", "data"})
        assert ours == graphspec.load(EXP2 / f"{config}.yaml").model_dump(exclude={"name", "data"}), config


def _platform_positions(pos: torch.Tensor, grid: int, h: int, w: int) -> torch.Tensor:
    """The platform's ViTEmbeddings.interpolate_pos_encoding (DINO's): [CLS] kept, the rest bicubic at a scale of
    (new grid + 0.1) / old grid."""
    cls, patches = pos[:, :1], pos[:, 1:].reshape(1, grid, grid, -1).permute(0, 3, 1, 2)
    patches = nn.functional.interpolate(patches, scale_factor=((h + 0.1) / grid, (w + 0.1) / grid), mode="bicubic",
                                        align_corners=False)
    return torch.cat([cls, patches.permute(0, 2, 3, 1).reshape(1, h * w, -1)], dim=1)


def test_a_fine_tune_at_other_sizes_starts_from_the_pretraining_checkpoint(tiny, write_spec, tmp_path):
    """As the platform fine-tunes: images larger than pretraining's, positions resampled from those learned at
    pretraining's size; text longer, its positions the checkpoint's first rows and new ones after."""
    from safetensors.torch import save_file

    from graphspec.compiler.init_from import load_into

    def spec(image: int, positions: int, **more):
        tiny["inputs"]["image"]["size"] = image
        tiny["nodes"] = {
            "joint": {"kind": "one_tower", "inputs": {"text": "text", "image": "image"}, "backbone": "text",
                      "model_type": "bert", "init": "random", "size": {"hidden": 32, "layers": 1, "heads": 2},
                      "embeddings": "new", "image_cls": True, "patch_size": 8, "vocab_size": 64,
                      "max_text_positions": positions, **more},
            "pooled": {"kind": "cls_pool", "inputs": ["joint.text", "joint.image"]}}
        tiny["heads"] = {"itm": {"kind": "itm", "input": "pooled"}}
        tiny["objectives"] = {"itm": {"weight": 1.0}}
        return graphspec.load(write_spec(tiny, f"spec{image}.yaml"))

    pretrained, _ = build_model(spec(32, 12))
    save_file({k: v.contiguous() for k, v in pretrained.state_dict().items()}, str(tmp_path / "model.safetensors"))
    tiny["inputs"]["text"]["max_length"] = 16
    fine = spec(48, 16, position_image_size=32)
    compiled = compile_spec(fine.model_copy(update={"init_from": str(tmp_path)}))
    assert any("take the checkpoint's first rows" in w.message and "12 -> 16 rows" in w.message
               for w in compiled.warnings)
    model, _ = build_model(fine)
    fresh = model.get_parameter("joint.text_embed.pos.weight")[12:].clone()
    load_into(model, str(tmp_path))
    ours: Any = model.get_submodule("joint")
    theirs: Any = pretrained.get_submodule("joint")
    assert torch.equal(ours.text_embed.pos.weight[:12], theirs.text_embed.pos.weight)
    assert torch.equal(ours.text_embed.pos.weight[12:], fresh)
    assert torch.equal(ours.image_embed.pos, theirs.image_embed.pos)  # learned for 4 x 4 patches, kept so
    expected = _platform_positions(theirs.image_embed.pos, 4, 6, 6)  # what 48-pixel images (6 x 6 patches) add
    assert torch.allclose(ours.image_embed.resampled(6, 6), expected, atol=1e-6)
    ours.eval()
    out = ours(torch.randint(1, 64, (2, 16)), torch.ones(2, 16, dtype=torch.long), torch.randn(2, 3, 48, 48))
    assert out["image"][0].shape == (2, 1 + 36, 32)
