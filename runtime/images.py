"""Image transforms from the vision tower's own data config (timm) or image processor (transformers)."""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from PIL import Image
from torch import nn

from graphspec.errors import EnvironmentProblem, Issue
from graphspec.schema import Spec


def vision_node(spec: Spec, input_name: str) -> tuple[str, object] | None:
    for name, node in spec.nodes.items():
        if node.kind in ("timm_vision", "hf_vision") and node.input == input_name:
            return name, node
    return None


def image_transform(spec: Spec, input_name: str, model: nn.Module) -> Callable[[np.ndarray], torch.Tensor]:
    """uint8 (H, W, 3) -> float (3, size, size), resized and normalised as the tower expects.

    The whole image is kept, squashed to a square (no centre crop): the built-in
    scenes put shapes near the edges, a caption's spatial words are about the whole
    picture, and region boxes given as fractions of the image stay right.
    """
    size = spec.inputs[input_name].size
    found = vision_node(spec, input_name)
    if found is None or found[1].kind == "timm_vision":
        from timm.data import create_transform, resolve_model_data_config

        cfg = resolve_model_data_config(model.get_submodule(found[0]).model) if found else {}
        tf = create_transform(input_size=(3, size, size), interpolation=cfg.get("interpolation", "bicubic"),
                              mean=cfg.get("mean", (0.5,) * 3), std=cfg.get("std", (0.5,) * 3), crop_pct=1.0,
                              crop_mode="squash", is_training=False)
        return lambda image: tf(Image.fromarray(image))
    proc = _hf_processor(found[0], found[1])
    return lambda image: proc(images=Image.fromarray(image), size={"height": size, "width": size},
                              do_center_crop=False, return_tensors="pt")["pixel_values"][0]


def _hf_processor(name: str, node):
    from transformers import AutoImageProcessor, ViTImageProcessor

    if not node.source:
        return ViTImageProcessor()  # a random tower has no processor of its own: ViT's (mean = std = 0.5)
    try:
        return AutoImageProcessor.from_pretrained(node.source, local_files_only=True)
    except (OSError, ValueError) as e:
        raise EnvironmentProblem([Issue(("nodes", name, "source"), f"no image processor found for '{node.source}': {e}",
                                        "point `source` at a local directory holding preprocessor_config.json")]) from None
