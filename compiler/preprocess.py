"""Input preparation of the encoder kinds: image transforms from a tower's own data config (timm) or image
processor (transformers), and tokenizers from a text tower's source. Each kind names its own in its
registration (`graphspec.compiler.builders`); `image_transform` and `source_tokenizer` find the node that reads an input.

Every transform keeps the whole image, squashed to a square (no centre crop): the built-in scenes put shapes
near the edges, a caption's spatial words are about the whole picture, and region boxes given as fractions of
the image stay right.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import nn

from graphspec.language.errors import EnvironmentProblem, Issue
from graphspec.language.schema import Spec

from .backbones import local_source
from .graph import references
from .kinds import KINDS, PIXELS, TOKENS

Transform = Callable[[np.ndarray], torch.Tensor]  # uint8 (H, W, 3) -> float (3, size, size)
DECODE = "decoded with JPEG draft mode at the input size"  # runtime.data.images; part of how pixels are made


def _signed(fn: Transform, signature: str, config: dict) -> Transform:
    """A transform that says how it makes pixels: the frozen-tower cache keys its entries by it, an export
    records its `config` (library, interpolation, mean, std)."""
    fn.signature = f"{signature}; {DECODE}"
    fn.config = config
    return fn


def default_transform(size: int, data_config: dict | None = None) -> Transform:
    """timm's eval transform at `size`, squashed, with the data config's mean, std and interpolation (default:
    mean = std = 0.5, bicubic)."""
    from PIL import Image
    from timm.data import create_transform

    cfg = data_config or {}
    interpolation, mean, std = cfg.get("interpolation", "bicubic"), cfg.get("mean", (0.5,) * 3), cfg.get("std", (0.5,) * 3)
    tf = create_transform(input_size=(3, size, size), interpolation=interpolation, mean=mean, std=std, crop_pct=1.0,
                          crop_mode="squash", is_training=False)
    return _signed(lambda image: tf(Image.fromarray(image)),
                   f"timm eval transform, squash to {size}, {interpolation}, mean {tuple(mean)}, std {tuple(std)}",
                   {"library": "timm", "interpolation": interpolation, "mean": list(mean), "std": list(std)})


def timm_transform(node, module: nn.Module, size: int, path: tuple = ()) -> Transform:
    """The timm tower's own data config (mean, std, interpolation)."""
    from timm.data import resolve_model_data_config

    return default_transform(size, resolve_model_data_config(module.model))


def hf_transform(node, module: nn.Module, size: int, path: tuple = ()) -> Transform:
    """The transformers tower's image processor (ViT's, mean = std = 0.5, for a random tower)."""
    from PIL import Image
    from transformers import AutoImageProcessor, ViTImageProcessor

    if not node.source:
        proc = ViTImageProcessor()  # a random tower has no processor of its own
    else:
        try:
            proc = AutoImageProcessor.from_pretrained(local_source(node.source, path), local_files_only=True,
                                                      trust_remote_code=False)
        except (OSError, ValueError) as e:
            raise EnvironmentProblem([Issue(path + ("source",), f"no image processor found for '{node.source}': "
                                            f"{e}", "point `source` at a local directory holding "
                                            "preprocessor_config.json")]) from None
    return _signed(lambda image: proc(images=Image.fromarray(image), size={"height": size, "width": size},
                                      do_center_crop=False, return_tensors="pt")["pixel_values"][0],
                   f"{type(proc).__name__}, {size}x{size}, resample {getattr(proc, 'resample', None)}, mean "
                   f"{getattr(proc, 'image_mean', None)}, std {getattr(proc, 'image_std', None)}",
                   {"library": "transformers", "processor": type(proc).__name__,
                    "resample": int(getattr(proc, "resample", 0) or 0), "mean": list(getattr(proc, "image_mean", [])),
                    "std": list(getattr(proc, "image_std", []))})


def hf_tokenizer(node, path: tuple):
    """The node's `tokenizer` source if it names one, else a text tower's own tokenizer from its source; None for a
    tower built from a model type or a vision backbone (one is trained)."""
    from transformers import AutoTokenizer

    field = "tokenizer" if getattr(node, "tokenizer", None) else "source"
    source = getattr(node, field)
    if field == "source" and (not source or getattr(node, "backbone", "text") != "text"):
        return None
    try:
        return AutoTokenizer.from_pretrained(local_source(source, path, field), local_files_only=True,
                                             trust_remote_code=False)
    except (OSError, ValueError) as e:
        raise EnvironmentProblem([Issue(path + (field,), f"no tokenizer found for '{source}': {e}",
                                        f"point `{field}` at a local directory that holds the tokenizer files, or "
                                        "a `package:NAME` that ships them")]) from None


def readers(spec: Spec, input_name: str, want) -> list[tuple[str, object]]:
    """The nodes that read the input `input_name` through a port that wants `want` (tokens or pixels)."""
    out = []
    for name, node in spec.nodes.items():
        kind = KINDS[node.kind]
        if any(ref == input_name and kind.reads.get(port) == want for port, ref, _ in references(node)):
            out.append((name, node))
    return out


def image_transform(spec: Spec, input_name: str, model: nn.Module) -> Transform:
    """The transform of an image input: that of the first node reading it whose kind declares one."""
    size = spec.inputs[input_name].size
    for name, node in readers(spec, input_name, PIXELS):
        prepare = KINDS[node.kind].image_transform
        if prepare is not None:
            return prepare(node, model.get_submodule(name), size, ("nodes", name))
    return default_transform(size)


def text_reader(spec: Spec, input_name: str) -> tuple[str, object] | None:
    """The node that embeds a text input (its vocabulary is the model's)."""
    found = readers(spec, input_name, TOKENS)
    return found[0] if found else None


def source_tokenizer(spec: Spec, input_name: str):
    """The tokenizer the node reading a text input brings from its source, or None (one is trained)."""
    found = text_reader(spec, input_name)
    if found is None or KINDS[found[1].kind].tokenizer is None:
        return None
    return KINDS[found[1].kind].tokenizer(found[1], ("nodes", found[0]))
