"""Model inputs: what a batch holds before any node sees it.

`tensors(name)` is the one place that names an input's tensors, which are the emitted model's forward
arguments and a batch's keys: `NAME_ids` and `NAME_mask` for text, `NAME` for pixels, `NAME` and `NAME_mask`
for boxes.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field

from .base import Strict


class TextInput(Strict):
    modality: Literal["text"] = Field(description="Token ids and an attention mask.")
    max_length: int = Field(
        40, ge=2, le=8192, description="Tokens per text, special tokens included; longer texts are truncated."
    )
    pad_to: Literal["longest", "max_length"] = Field(
        "longest", description="How long a batch's texts are padded: longest, to the longest text of the global "
        "micro batch (of every rank's rows, so one and N ranks see the same tensors; MLM masking is drawn over "
        "max_length positions first, so the draws do not depend on it); max_length, always to max_length "
        "(graphspec 0.2's behaviour). Masks hide the padding either way, so outputs on real tokens agree.")

    def tensors(self, name: str) -> tuple[str, str]:
        """(token ids (B, T), attention mask (B, T))."""
        return f"{name}_ids", f"{name}_mask"


class ImageInput(Strict):
    modality: Literal["image"] = Field(description="Pixels, (B, C, size, size).")
    size: int = Field(224, ge=8, le=4096, description="Side of the square image the vision tower sees, in pixels.")
    channels: int = Field(3, ge=1, le=4, description="Colour channels.")

    def tensors(self, name: str) -> tuple[str]:
        """(pixels (B, C, size, size),)."""
        return (name,)


class BoxesInput(Strict):
    modality: Literal["boxes"] = Field(description="Candidate regions (B, K, 4) as x0, y0, x1, y1 in [0, 1], "
                                       "with a mask (B, K) of real candidates.")
    max_candidates: int = Field(16, ge=1, le=1024, description="Candidates per sample; fewer are padded and masked.")

    def tensors(self, name: str) -> tuple[str, str]:
        """(boxes (B, K, 4), mask of real candidates (B, K))."""
        return name, f"{name}_mask"


Input = Annotated[Union[TextInput, ImageInput, BoxesInput], Field(discriminator="modality")]
