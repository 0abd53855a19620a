"""A trained encoder outside graphspec's training: `load_model` reads a folder that `graphspec export` wrote
(or a Hugging Face Hub model repository holding one) and gives the model with outputs named for people, and a
processor that turns images and strings into the model's inputs exactly as training did.

    model, processor = graphspec.load_model("exported/quickstart")
    out = model(**processor(images=["photo.jpg"], text=["a red circle left of a blue square"]))
    out["itm_probability"]

Nothing here imports DeepSpeed. The model is rebuilt from the exported spec with every tower initialised at
random (an exported transformers tower's config is in `towers/NODE/`, so no hub access is needed) and then
given every exported weight, frozen towers' included; a missing or unexpected weight is an error.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

import torch
from torch import nn

from graphspec.compiler.folders import EXPORT_MANIFEST as MANIFEST
from graphspec.compiler.kinds import KINDS, Kind
from graphspec.language.errors import EnvironmentProblem, Issue, Loc, SpecError
from graphspec.language.schema import Spec
from graphspec.language.schema.heads import PairClassifyHead

from .model_folder import ModelFolderError, check_folder, check_model_fits



def kind(node) -> Kind:
    """A node's or head's registered kind (graphspec.compiler.kinds)."""
    import graphspec.compiler.builders  # noqa: F401  (registers the built-in kinds)

    return KINDS[node.kind if not isinstance(node, dict) else node["kind"]]


def named_outputs(spec: Spec, raw: dict, exported_only: bool = False) -> dict:
    """The heads' outputs named for people (HeadOutputs of each head's kind), as `load_model`'s model and the
    `.pt2` program both give them: each head's raw tensor under its name, and e.g. `{head}_probability`,
    `{head}_prediction`, `text_embedding` / `image_embedding`."""
    out: dict = {}
    for head, obj in spec.heads.items():
        outputs = kind(obj).outputs
        if outputs is None or (exported_only and not outputs.exported):
            continue
        if not isinstance(raw[head], dict):
            out[head] = raw[head]
        out.update(outputs.named(head, raw[head]))
    return out


def standalone_spec(spec: Spec, folder: Path) -> Spec:
    """The exported spec as the folder alone builds it: towers at random init (their weights come from the
    folder), a transformers tower's config from `towers/NODE/`, no `init_from`."""
    data = spec.model_dump(mode="json", exclude={"extends"})
    data["init_from"] = None
    for name, node in data["nodes"].items():
        if "init" in node:
            node["init"] = "random"
        if node.get("weights"):
            node["weights"] = None
        if kind(node).library(spec.nodes[name]) == "transformers" and node.get("source"):
            node["source"] = str(folder / "towers" / name)
            node["size"], node["dropout"] = None, None  # applied already in the saved config
    return Spec.model_validate(data)


def resolve(target: str | Path) -> Path:
    """An export folder, or a hub model id whose repository holds one (from the local cache when
    HF_HUB_OFFLINE=1)."""
    path = Path(target)
    if path.is_dir():
        if not (path / MANIFEST).is_file():
            raise EnvironmentProblem([Issue((), f"not a graphspec export: no {MANIFEST}", "give the folder "
                                            "`graphspec export` wrote", loc=Loc(str(path)))],
                                     title="cannot load this model")
        return path
    text = str(target)
    if text.count("/") != 1 or path.exists():
        raise EnvironmentProblem([Issue((), "neither a folder nor a hub model id (OWNER/NAME)",
                                        "give the folder `graphspec export` wrote, or a hub id",
                                        loc=Loc(text))], title="cannot load this model")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        folder = Path(snapshot_download(repo_id=text))
    except (LocalEntryNotFoundError, HFValidationError, OSError) as e:
        raise EnvironmentProblem([Issue((), f"hub model '{text}' is not available: {str(e)[:200]}",
                                        "download it once with network access (it is then read from the hub "
                                        "cache), or give a local export folder", loc=Loc(text))],
                                 title="cannot load this model") from None
    return resolve(folder)


class Processor:
    """Images (files, PIL images or uint8 arrays H x W x 3) and strings -> the model's input tensors, prepared as
    in training: the tower's own transform (the whole image squashed to the input size), the training
    tokenizer, text cut at the input's max_length and padded to the longest."""

    def __init__(self, spec: Spec, tokenizer, transforms: dict):
        self.spec, self.tokenizer, self.transforms = spec, tokenizer, transforms
        kinds = {i.modality for i in spec.inputs.values()}
        self.unsupported = sorted(kinds - {"text", "image"})
        self.pairs = [h for h, obj in spec.heads.items() if isinstance(obj, PairClassifyHead)]

    def __call__(self, images=None, text=None) -> dict[str, torch.Tensor]:
        if self.unsupported:
            raise EnvironmentProblem([Issue(("inputs",), f"the processor prepares text and images; this model also "
                                            f"reads {', '.join(self.unsupported)}", "build those tensors yourself "
                                            "(see the export's graphspec.json for their shapes)")],
                                     title="cannot prepare these inputs")
        if self.pairs:
            raise EnvironmentProblem([Issue(("heads", self.pairs[0]), "this head reads two images per example "
                                            "(rows 2k and 2k+1), which the processor does not arrange",
                                            "build the rows yourself: each example's two images with its text twice")],
                                     title="cannot prepare these inputs")
        images = _many(images)
        texts = [text] if isinstance(text, str) else list(text or [])
        n = max(len(images), len(texts))
        if (images and len(images) not in (1, n)) or (texts and len(texts) not in (1, n)):
            raise EnvironmentProblem([Issue((), f"{len(images)} images and {len(texts)} texts: give as many of "
                                            "each, or one of either (it is paired with every one of the other)")],
                                     title="cannot pair these inputs")
        out: dict[str, torch.Tensor] = {}
        for name, inp in self.spec.inputs.items():
            if inp.modality == "image":
                if not images:
                    raise EnvironmentProblem([Issue(("inputs", name), "this model reads an image", "give images=")],
                                             title="missing input")
                out[name] = torch.stack([self.transforms[name](_pixels(image, inp.size)) for image in images])
                if len(images) == 1 and n > 1:  # one image for every text: its tower runs once
                    out[self.spec.rows_of(name)] = torch.zeros(n, dtype=torch.long)
            else:
                if not texts:
                    raise EnvironmentProblem([Issue(("inputs", name), "this model reads text", "give text=")],
                                             title="missing input")
                enc = self.tokenizer(texts * (n if len(texts) == 1 else 1), padding="longest", truncation=True,
                                     max_length=inp.max_length, return_tensors="pt")
                ids, mask = inp.tensors(name)
                out[ids], out[mask] = enc["input_ids"], enc["attention_mask"]
        return out


def _many(images) -> list:
    if images is None:
        return []
    if isinstance(images, (str, Path)) or not isinstance(images, Iterable) or hasattr(images, "shape") or \
            hasattr(images, "convert"):
        return [images]
    return list(images)


def _pixels(image, size: int):
    """uint8 (H, W, 3): a file is decoded as training decodes one."""
    import numpy as np

    if isinstance(image, (str, Path)):
        from .data.images import FileImage
        from .data.records import BadData

        try:
            pixels, _ = FileImage(str(image), where=str(image)).load(size)
        except BadData as e:  # a missing file, a text file named .jpg, a bomb: the user's input, named
            raise SpecError([Issue((), e.message.removeprefix(f"{image}: "), "give an image file (PNG, JPEG, WebP, "
                                   "...)", loc=Loc(str(image)))], title="cannot read this image") from None
        return pixels
    if hasattr(image, "convert"):  # a PIL image: as training reads one (orientation, 16-bit, palette, ...)
        from .data.images import to_rgb

        return to_rgb(image)
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise EnvironmentProblem([Issue((), f"an image array must be uint8 (H, W, 3), not {array.dtype} "
                                        f"{tuple(array.shape)}")], title="cannot read this image")
    return array


class Encoder(nn.Module):
    """The exported model; its forward returns each head's raw output and, named for people (the names of
    `named_outputs`, which the `.pt2` program shares): `{head}_probability` (ITM: of a match),
    `{head}_prediction` (a class head's index; `labels` names it), `text_embedding` / `image_embedding` (an ITC
    head's normalised unimodal features), and here also `{head}_features` (the pooled vector a head reads)."""

    def __init__(self, graph: nn.Module, spec: Spec, labels: dict[str, list[str]]):
        super().__init__()
        self.graph, self.spec, self.labels = graph, spec, labels
        self._features: dict[str, torch.Tensor] = {}
        for head, obj in spec.heads.items():
            outputs = kind(obj).outputs
            if outputs is not None and outputs.features:
                graph.get_submodule(f"heads.{head}").register_forward_pre_hook(
                    lambda m, args, head=head: self._features.__setitem__(head, args[0]))

    def forward(self, **inputs) -> dict:
        self._features = {}
        device = next(self.graph.parameters()).device  # the processor's tensors are on the CPU
        raw = self.graph(**{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()})
        out = {**raw, **named_outputs(self.spec, raw)}
        out.update({f"{head}_features": value for head, value in self._features.items()})
        return out

    def describe(self, out: dict, row: int = 0) -> dict:
        """One row's answers, in words: {head: probability or label}."""
        said = {}
        for head in self.spec.heads:
            if f"{head}_probability" in out:
                said[head] = {"match_probability": round(float(out[f"{head}_probability"][row]), 6)}
            elif f"{head}_prediction" in out:
                index = int(out[f"{head}_prediction"][row])
                names = self.labels.get(head)
                said[head] = {"prediction": names[index] if names and index < len(names) else index}
        return said


def load_model(target: str | Path, device: str | torch.device = "cpu") -> tuple[Encoder, Processor]:
    """(model in eval mode on `device`, processor) from an export folder or a hub model id."""
    from safetensors.torch import load_model as load_weights
    from transformers import AutoTokenizer

    from graphspec.compiler import FreezePlan, build_weights
    from graphspec.compiler.preprocess import image_transform

    folder = resolve(target)
    manifest, spec, tensors = check_folder(folder)  # before any allocation or library call (model_folder.py)
    spec = standalone_spec(spec, folder)
    check_model_fits(spec, tensors, folder)
    graph = build_weights(spec, FreezePlan(frozenset(), (), (), ()))  # the export compiled; every weight loads
    try:
        missing, unexpected = load_weights(graph, str(folder / "model.safetensors"), strict=False)
    except Exception as e:  # noqa: BLE001 - safetensors' errors have no common type; the file is named
        raise ModelFolderError([Issue((), f"cannot read the weights: {type(e).__name__}: {str(e)[:200]}",
                                      "export the model again", loc=Loc(str(folder / "model.safetensors")))],
                               title="cannot load this model") from None
    if missing or unexpected:
        raise EnvironmentProblem([Issue((), f"the weights do not fit the exported spec: missing {missing[:5]}, "
                                        f"unexpected {unexpected[:5]}", "export again",
                                        loc=Loc(str(folder / "model.safetensors")))], title="cannot load this model")
    graph.eval().requires_grad_(False)
    tokenizer = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False) \
        if (folder / "tokenizer_config.json").is_file() else None
    transforms = {name: image_transform(spec, name, graph) for name, i in spec.inputs.items() if i.modality == "image"}
    model = Encoder(graph, spec, manifest.get("labels", {})).to(device)
    return model, Processor(spec, tokenizer, transforms)


def head_labels(spec: Spec, vocabulary: dict) -> dict[str, list[str]]:
    """Names of each class head's classes: those its kind names (ITM's, NLVR2's), else those the task it was
    trained on names for its head (VQA's answers, SNLI-VE's labels)."""
    from .tasks import REGISTRY

    task = REGISTRY[spec.data.train.task]
    roles = spec.roles()
    out: dict[str, list[str]] = {}
    for head, obj in spec.heads.items():
        outputs = kind(obj).outputs
        if outputs is not None and outputs.classes:
            out[head] = list(outputs.classes)
        elif head == roles.head and (names := task.class_names(vocabulary)):
            out[head] = list(names)
    return out
