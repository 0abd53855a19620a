"""A trained model leaves graphspec: `graphspec export` writes one folder; `graphspec.load_model` reads it (or a
hub id) in a process without DeepSpeed and gives what the training code computes; `graphspec predict` answers."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import cast

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from graphspec.cli import main
from graphspec.runtime.evaluate import find_checkpoint, load_checkpoint
from graphspec.runtime.export import export_model
from graphspec.runtime.train import run

CAPTIONS = ["a red circle left of a blue square", "a green triangle", "two yellow squares"]


def _trained(train_spec, compile_build, run_dir: Path, overrides=()) -> Path:
    train_spec["train"].update(steps=4, val_every=None, log_every=2)
    train_spec["data"]["val"]["samples"] = 8
    run(compile_build(train_spec, list(overrides)), run_dir, show_bar=False)
    return run_dir


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[Path]:
    """Three of scikit-image's photographs as PNG files."""
    from PIL import Image
    from skimage import data

    folder, out = tmp_path_factory.mktemp("photos"), []
    for name in ("astronaut", "coffee", "chelsea"):
        out.append(folder / f"{name}.png")
        Image.fromarray(getattr(data, name)()).save(out[-1])
    return out


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, Path]:
    """(run directory, export folder) of the tiny spec trained 4 steps, nothing frozen: shared by the tests that
    only read an export."""
    import graphspec
    from graphspec.compiler.folders import read_build
    from tests.runtime.conftest import train_spec_data

    base = tmp_path_factory.mktemp("exported")
    spec = train_spec_data()
    spec["train"].update(steps=4, val_every=None, log_every=2)
    spec["data"]["val"]["samples"] = 8
    (base / "spec.yaml").write_text(yaml.safe_dump(spec))
    graphspec.compile(graphspec.load(base / "spec.yaml"), out=base / "build")
    run(read_build(base / "build"), base / "run", show_bar=False)
    return base / "run", export_model(base / "run", base / "export")


CHILD = """
import json, sys
import torch
from safetensors.torch import save_file
import graphspec
model, processor = graphspec.load_model(sys.argv[1])
inputs = processor(images=json.loads(sys.argv[2]), text=json.loads(sys.argv[3]))
with torch.no_grad():
    out = model(**inputs)
save_file({**{k: v.contiguous() for k, v in inputs.items()}, "probability": out["itm_probability"].contiguous()},
          sys.argv[4])
print(json.dumps({"deepspeed": "deepspeed" in sys.modules, "keys": sorted(out)}))
"""


def _in_fresh_process(target: str, photos, texts, out: Path, env: dict | None = None) -> dict:
    done = subprocess.run([sys.executable, "-c", CHILD, target, json.dumps([str(p) for p in photos]),
                           json.dumps(texts), str(out)], capture_output=True, text=True, env=env or dict(os.environ),
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _planted_hub_cache(folder: Path, hub: Path) -> None:
    """`folder` as the hub cache holds a downloaded repository `acme/tiny-vl`."""
    repo = hub / "models--acme--tiny-vl"
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(folder, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)


@pytest.mark.integration
@pytest.mark.parametrize("frozen", ["none", "vision_tower"])
def test_an_export_gives_the_training_codes_itm_probabilities(train_spec, compile_build, tmp_path, photos,
                                                             exported, frozen):
    """Nothing frozen: read by its hub id from the hub cache, offline, in a fresh process, which DeepSpeed never
    enters. The vision tower frozen (its weights rebuilt from their source and verified): in this process."""
    if frozen == "none":
        run_dir, folder = exported
        _planted_hub_cache(folder, tmp_path / "hub")
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub")}
        seen = _in_fresh_process("acme/tiny-vl", photos, CAPTIONS, tmp_path / "child.safetensors", env)
        assert not seen["deepspeed"]  # inference does not import DeepSpeed
        assert {"itm", "itm_probability", "itm_features", "mlm"} <= set(seen["keys"])
        got = load_file(str(tmp_path / "child.safetensors"))
    else:
        from graphspec.runtime.inference import load_model

        run_dir = _trained(train_spec, compile_build, tmp_path / "run", [f"nodes.{frozen}.freeze=true"])
        folder = export_model(run_dir, tmp_path / "export", program=False)
        assert not (tmp_path / "export.partial").exists()
        model, processor = load_model(folder)
        got = processor(images=photos, text=CAPTIONS)
        with torch.no_grad():
            got["probability"] = model(**got)["itm_probability"]
    names = {p.name for p in folder.iterdir()}
    assert {"README.md", "model.safetensors", "graphspec.json", "preprocessor_config.json",
            "tokenizer_config.json"} <= names
    _, model = load_checkpoint(find_checkpoint(run_dir))  # the training code's model (evaluate's)
    with torch.no_grad():
        want = model(**{k: v for k, v in got.items() if k != "probability"})["itm"].float().softmax(-1)[:, 1]
    assert torch.allclose(got["probability"], want, atol=1e-5), (got["probability"], want)
    weights = load_file(str(folder / "model.safetensors"))
    assert any(k.startswith("vision_tower.") for k in weights)  # frozen towers' weights are in the export too
    manifest = json.loads((folder / "graphspec.json").read_text())
    assert manifest["frozen_weights"] == ({"vision_tower": "verified"} if frozen != "none" else {})
    card = (folder / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: graphspec\n") and "## Towers" in card and "| vision_tower |" in card


def test_one_image_with_several_texts_passes_the_image_once(exported, photos):
    from graphspec.runtime.inference import load_model

    model, processor = load_model(exported[1])
    inputs = processor(images=photos[:1], text=CAPTIONS)
    assert inputs["image"].shape[0] == 1 and inputs["image_rows"].tolist() == [0, 0, 0]
    with torch.no_grad():
        assert model(**inputs)["itm_probability"].shape == (3,)


def test_the_processor_prepares_what_training_built_for_the_same_images_and_texts(exported, photos, tmp_path):
    """The same photographs and captions through the training code (a JSONL manifest read by the captions
    task, its image reader and transform, its tokenizer and padding) and through the export's processor: the
    same tensors, bit for bit. A processor with another tokenizer, normalisation, size or padding fails here."""
    from transformers import AutoTokenizer

    from graphspec.runtime.inference import load_model
    from graphspec.runtime.tasks import make_task
    from graphspec.runtime.tasks.caption_sources import PairPlan
    from graphspec.runtime.tasks.captions import Captions, encode
    from graphspec.language.schema import Spec

    run_dir, folder = exported
    manifest = tmp_path / "photos.jsonl"
    manifest.write_text("".join(json.dumps({"image": str(p), "text": t}) + "\n" for p, t in zip(photos, CAPTIONS)))
    ckpt = find_checkpoint(run_dir)
    data = json.loads((ckpt / "spec.resolved.json").read_text())
    data["data"]["val"] = {"source": f"jsonl:{manifest}", "task": "captions", "split": "val"}
    spec, (_, model) = Spec.model_validate(data), load_checkpoint(ckpt)
    task = cast(Captions, make_task(spec, model, lambda d: AutoTokenizer.from_pretrained(str(ckpt / "tokenizer")),
                                    "val"))
    plan = PairPlan([0, 1, 2], list(CAPTIONS), [1, 1, 1])
    used, pixels, _ = task._pixels(task.val_set, plan, range(3), False, ("data", "val"))
    training = encode(used, pixels, spec, task.roles, task.tokenizer, None)
    _, processor = load_model(folder)
    served = processor(images=photos, text=CAPTIONS)
    assert set(served) == {"text_ids", "text_mask", "image"}
    for key, value in served.items():
        assert value.dtype == training[key].dtype and torch.equal(value, training[key]), key


def test_predict_gives_what_load_model_gives(exported, photos, capsys):
    from graphspec.runtime.inference import load_model

    _, folder = exported
    assert main(["predict", str(folder), "--image", str(photos[1]), "--text", CAPTIONS[0], "--text", CAPTIONS[2],
                 "--json"]) == 0
    said = [r["itm"]["match_probability"] for r in json.loads(capsys.readouterr().out)]
    model, processor = load_model(folder)
    with torch.no_grad():
        want = model(**processor(images=[photos[1]], text=[CAPTIONS[0], CAPTIONS[2]]))["itm_probability"]
    assert said == [round(float(p), 6) for p in want]
    assert abs(said[0] - said[1]) > 1e-6  # two captions, two answers: not one value for every row


def test_predict_answers_on_scikit_image_photographs(exported, photos, capsys):
    _, folder = exported
    args = ["predict", str(folder), "--image", str(photos[0]), "--text", CAPTIONS[0], "--text", CAPTIONS[1]]
    capsys.readouterr()  # the training's output
    assert main(args + ["--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["text"] for r in rows] == CAPTIONS[:2] and all(r["image"] == str(photos[0]) for r in rows)
    assert all(0.0 <= r["itm"]["match_probability"] <= 1.0 for r in rows)
    assert main(args) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and "itm match probability 0." in lines[0] and CAPTIONS[0] in lines[0]
    assert main(["predict", str(folder), "--image", str(photos[0])]) == 3  # the model reads text too
    assert "give text=" in capsys.readouterr().err


def test_what_cannot_be_exported_is_refused_clearly(train_spec, compile_build, tmp_path, tiny_bert, capsys):
    node = train_spec["nodes"]["text_tower"]
    node.update(init="pretrained", source=str(tmp_path / "bert"), freeze=True)
    del node["model_type"], node["size"]
    run_dir = _trained(train_spec, compile_build, tmp_path / "run")
    weights = load_file(str(tmp_path / "bert" / "model.safetensors"))  # the frozen tower's source changes
    save_file({k: v + 0.01 if v.is_floating_point() else v for k, v in weights.items()},
              str(tmp_path / "bert" / "model.safetensors"), metadata={"format": "pt"})
    assert main(["export", str(run_dir), "-o", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "text_tower" in err and "differ" in err and not (tmp_path / "b").exists()
    assert main(["export", str(tmp_path / "bert"), "-o", str(tmp_path / "d")]) == 2
    assert "nothing to export" in capsys.readouterr().err
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "keep.txt").write_text("mine")
    assert main(["export", str(run_dir), "-o", str(tmp_path / "c")]) == 3
    assert (tmp_path / "c" / "keep.txt").read_text() == "mine"


PROGRAM = """
import sys
sys.modules["graphspec"] = None  # graphspec cannot be imported in this process
try:
    import graphspec
except ImportError:
    pass
else:
    raise SystemExit("graphspec was importable")
import torch
from safetensors.torch import load_file, save_file
program = torch.export.load(sys.argv[1]).module()
inputs = load_file(sys.argv[2])
with torch.no_grad():
    out = program(*[inputs[k] for k in sys.argv[3].split(",")])
save_file({k: v.contiguous() for k, v in out.items()}, sys.argv[4])
"""


@pytest.mark.integration
def test_the_pt2_program_runs_where_graphspec_cannot_be_imported(exported, tmp_path, photos):
    from graphspec.compiler.emit import input_names
    from graphspec.runtime.inference import load_model
    from graphspec.runtime.export import Program

    _, folder = exported
    manifest = json.loads((folder / "graphspec.json").read_text())
    assert manifest["program"]["written"], manifest["program"]
    model, processor = load_model(folder)
    spec = model.spec
    inputs = processor(images=photos, text=CAPTIONS)  # three rows: not the batch size it was traced with
    length = spec.inputs["text"].max_length  # the program takes text padded to max_length
    for key in ("text_ids", "text_mask"):
        inputs[key] = torch.nn.functional.pad(inputs[key], (0, length - inputs[key].shape[1]))
    names = input_names(spec)
    save_file({k: inputs[k].contiguous() for k in names}, str(tmp_path / "in.safetensors"))
    done = subprocess.run([sys.executable, "-c", PROGRAM, str(folder / "model.pt2"), str(tmp_path / "in.safetensors"),
                           ",".join(names), str(tmp_path / "out.safetensors")], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    got = load_file(str(tmp_path / "out.safetensors"))
    with torch.no_grad():
        want = Program(model.graph, spec)(*[inputs[k] for k in names])
    assert set(got) == set(want) == {"itm", "itm_probability"}
    for key in want:
        assert torch.allclose(got[key], want[key], atol=1e-5), key
    # another device: torch's pass moves the program's weights and every device it names; on `meta` here
    # (mixing meta and CPU tensors raises as CUDA and CPU do), on "cuda" on a GPU
    from torch.export.passes import move_to_device_pass

    moved = move_to_device_pass(torch.export.load(str(folder / "model.pt2")), "meta").module()
    out = moved(*[inputs[k].to("meta") for k in names])
    assert all(v.is_meta and v.shape == want[k].shape for k, v in out.items())


def test_load_model_puts_the_model_and_its_inputs_on_the_device_asked(exported, photos, monkeypatch):
    """`load_model(device=...)` on `meta`, a device other than the processor's CPU: every weight goes there,
    and the encoder moves the processor's tensors there itself. (Its forward cannot run on meta: transformers'
    BERT reads its mask's values.)"""
    from graphspec.runtime.inference import load_model

    _, folder = exported
    model, processor = load_model(folder, device="meta")
    assert all(p.is_meta for p in model.parameters()) and all(b.is_meta for b in model.buffers())
    seen = {}
    heads = {h: torch.zeros(2, 2, device="meta") for h in model.spec.heads}
    monkeypatch.setattr(model.graph, "forward", lambda **inputs: seen.update(inputs) or heads)
    out = model(**processor(images=photos[:2], text=CAPTIONS[:2]))
    assert seen and all(v.is_meta for v in seen.values()) and out["itm_probability"].is_meta


def test_the_processor_refuses_inputs_it_cannot_arrange(tiny):
    from graphspec.language.errors import EnvironmentProblem
    from graphspec.runtime.inference import Processor
    from graphspec.language.schema import Spec

    tiny["objectives"] = {}
    pairs = {**tiny, "heads": {"nlvr2": {"kind": "pair_classify", "input": "pooled"}}}
    boxes = {**tiny, "inputs": {**tiny["inputs"], "regions": {"modality": "boxes", "max_candidates": 4}}}
    for data, said in ((pairs, "two images per example"), (boxes, "also reads boxes")):
        with pytest.raises(EnvironmentProblem) as e:
            Processor(Spec.model_validate(data), None, {})(images=[], text=["a"])
        assert said in e.value.format()


@pytest.mark.integration
@pytest.mark.parametrize("zero,precision", [("0", "fp32"), ("2", "bf16"), ("3", "fp32")])
def test_a_training_checkpoint_exports_the_weights_it_holds(train_spec, compile_build, tmp_path, zero, precision):
    """Step 4 of a 6-step run (its ZeRO shards merged) exports what a 4-step run's final checkpoint does: the
    schedule is constant, so the first four steps are the same. In bf16 the training checkpoint holds the fp32
    master weights, the final checkpoint the bf16 weights the model computed with: they differ by bf16's
    rounding."""
    train_spec["nodes"]["vision_tower"]["freeze"] = True  # frozen weights come from their source, checked
    overrides = [f"distributed.zero_stage={zero}", "train.schedule.decay=constant", "train.schedule.warmup=0",
                 f"train.precision={precision}"]
    longer = _trained(train_spec, compile_build, tmp_path / "six", [*overrides, "train.steps=6",
                                                                    "train.checkpoint_every=4"])
    shorter = _trained(train_spec, compile_build, tmp_path / "four", [*overrides, "train.steps=4"])
    step = longer / "checkpoints" / "step-00000004"
    assert main(["export", str(step), "-o", str(tmp_path / "a"), "--no-program"]) == 0
    export_model(shorter, tmp_path / "b", program=False)
    a, b = (load_file(str(tmp_path / x / "model.safetensors")) for x in ("a", "b"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5, rtol=0 if precision == "fp32" else 2 ** -8), k
    manifest = json.loads((tmp_path / "a" / "graphspec.json").read_text())
    assert manifest["training"]["step"] == 4 and manifest["frozen_weights"] == {"vision_tower": "verified"}
    assert not manifest["program"]["written"] and not (tmp_path / "a" / "model.pt2").exists()
    assert (tmp_path / "a" / "tokenizer.json").is_file()


def test_an_export_of_format_1_still_loads_and_a_newer_one_is_refused_naming_its_version(exported, photos,
                                                                                      tmp_path):
    """Format 2 named the program's outputs as load_model names them; a format 1 folder (whose program named
    an ITC head's outputs HEAD_text / HEAD_image) loads as before, a format this graphspec does not know is
    refused with its number."""
    from graphspec.runtime.inference import load_model
    from graphspec.runtime.model_folder import ModelFolderError

    _, folder = exported
    model, processor = load_model(folder)
    with torch.no_grad():
        out = model(**processor(images=photos[:1], text=CAPTIONS[:1]))
    program = json.loads((folder / "graphspec.json").read_text())["program"]["outputs"]
    assert set(program) <= set(out)  # one naming: every output of the program is the model's, by that name
    for version, loads in ((1, True), (3, False)):
        copy = tmp_path / f"v{version}"
        shutil.copytree(folder, copy)
        manifest = json.loads((copy / "graphspec.json").read_text())
        (copy / "graphspec.json").write_text(json.dumps({**manifest, "format_version": version}))
        if loads:
            again, _ = load_model(copy)
            with torch.no_grad():
                assert torch.equal(again(**processor(images=photos[:1], text=CAPTIONS[:1]))["itm_probability"],
                                   out["itm_probability"])
        else:
            with pytest.raises(ModelFolderError, match="export format 3; this graphspec reads formats 1 to 2"):
                load_model(copy)


def _damaged(exported, tmp_path, name: str) -> Path:
    folder = tmp_path / name
    shutil.copytree(exported[1], folder)
    return folder


HOSTILE = {
    "manifest cut short": (lambda f: (f / "graphspec.json").write_text((f / "graphspec.json").read_text()[:200]),
                           "graphspec.json: cannot read it"),
    "manifest without a spec": (lambda f: (f / "graphspec.json").write_text(json.dumps(
        {k: v for k, v in json.loads((f / "graphspec.json").read_text()).items() if k != "spec"})),
        "graphspec.json: holds no spec"),
    "weights cut short": (lambda f: (f / "model.safetensors").write_bytes(
        (f / "model.safetensors").read_bytes()[:-1000]), "(cut short, or its header lies)"),
    "weights cut in the header": (lambda f: (f / "model.safetensors").write_bytes(
        (f / "model.safetensors").read_bytes()[:5000]), "model.safetensors: not a safetensors file"),
    "a spec far larger than its weights": (lambda f: (f / "graphspec.json").write_text(json.dumps(_grown(
        json.loads((f / "graphspec.json").read_text())))), "its spec does not describe the weights it ships"),
    "a tokenizer config asking for code": (lambda f: _plant_code(f / "tokenizer_config.json"),
                                           "tokenizer_config.json asks to run code that came with the model"),
    "a tower config asking for code": (lambda f: _plant_code(f / "towers" / "text_tower" / "config.json"),
                                       "config.json asks to run code that came with the model"),
}


def _grown(manifest: dict) -> dict:
    fusion = manifest["spec"]["nodes"]["fusion"]
    fusion.update(layers=40, width=4096, heads=32)
    manifest.pop("tensors")  # as a format 1 export: only the spec says what the model is
    return manifest


def _plant_code(config: Path) -> None:
    config.parent.mkdir(parents=True, exist_ok=True)
    data: dict = json.loads(config.read_text()) if config.is_file() else {"model_type": "bert"}
    data["auto_map"] = {"AutoModel": "planted.PlantedModel", "AutoConfig": "planted.PlantedConfig",
                        "AutoTokenizer": ["planted.PlantedTokenizer", None]}
    config.write_text(json.dumps(data))
    (config.parent / "planted.py").write_text("raise SystemExit('the planted module ran')\n")


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_damaged_or_hostile_export_folder_is_refused_naming_its_file(exported, photos, tmp_path, capsys, case):
    """Each ends in a located message (exit 2), before any weight is allocated or any library reads a config
    that asks for code; the planted module never runs (it would exit the test process)."""
    damage, said = HOSTILE[case]
    folder = _damaged(exported, tmp_path, "damaged")
    damage(folder)
    code = main(["predict", str(folder), "--image", str(photos[0]), "--text", "a red circle"])
    err = capsys.readouterr().err
    assert code == 2 and said in err and "Traceback" not in err, err


@pytest.mark.parametrize("make", ["missing", "text"])
def test_an_image_that_is_not_one_is_named(exported, tmp_path, capsys, make):
    image = tmp_path / "photo.jpg"
    if make == "text":
        image.write_text("not an image\n")
    code = main(["predict", str(exported[1]), "--image", str(image), "--text", "a red circle"])
    err = capsys.readouterr().err
    assert code == 2 and f"{image}: " in err and "Traceback" not in err, err


def test_a_hub_id_is_read_from_a_planted_hub_cache_and_checked_like_a_folder(exported, photos, tmp_path,
                                                                           monkeypatch, capsys):
    """A hub id resolves through the hub's cache (offline here: a cache folder planted as huggingface_hub lays
    one out); the repository it names is untrusted input like any folder: planted code in it is refused by
    name, nothing prompts, nothing runs."""
    import huggingface_hub.constants as hub

    cache = tmp_path / "hub"
    repo = cache / "models--someone--tiny-vl"
    revision = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(exported[1], repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    assert main(["predict", "someone/tiny-vl", "--image", str(photos[0]), "--text", "a red circle", "--json"]) == 0
    assert "match_probability" in capsys.readouterr().out
    _plant_code(repo / "snapshots" / revision / "tokenizer_config.json")
    assert main(["predict", "someone/tiny-vl", "--image", str(photos[0]), "--text", "a red circle"]) == 2
    err = capsys.readouterr().err
    assert "tokenizer_config.json asks to run code that came with the model" in err and "Traceback" not in err
    assert main(["predict", "someone/absent", "--image", str(photos[0]), "--text", "x"]) == 3
    assert "hub model 'someone/absent' is not available" in capsys.readouterr().err


def test_a_checkpoint_whose_weights_do_not_fit_is_refused_before_the_model_is_built(exported, tmp_path, capsys):
    """eval and export read a run's checkpoint: its weights' header is checked against the file and against
    the spec's trainable parameters on the meta device before any weight is allocated (here the checksum
    list is gone too, as in a checkpoint of graphspec 0.1, so nothing else would catch it)."""
    run = tmp_path / "run"
    shutil.copytree(exported[0], run)
    (run / "checkpoint" / "checksums.json").unlink()
    weights = run / "checkpoint" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    assert main(["eval", str(run)]) == 2
    err = capsys.readouterr().err
    assert f"{weights}: tensor" in err and "(cut short, or its header lies)" in err and "Traceback" not in err, err
    assert main(["export", str(run), "-o", str(tmp_path / "out"), "--no-program"]) == 2
    assert "cut short" in capsys.readouterr().err
