"""The architectures of hub models the paper's specs name, for compiling them on a machine without their files.

A spec naming hub weights compiles offline: when the model's config.json is neither local nor in the Hugging
Face cache, the compiler builds the architecture from the record here, else from `model_type`'s defaults (with
a warning either way). At run time the real config is read, and the weights with it. Each record is the
architecture fields of the model's published config.json; every other field is the model type's default.
"""

from __future__ import annotations

_VIT_SMALL = {"hidden_size": 384, "num_attention_heads": 6, "intermediate_size": 1536, "num_hidden_layers": 12,
              "image_size": 224, "patch_size": 16}

RECORDS: dict[str, tuple[str, dict]] = {  # hub id -> (model_type, architecture fields)
    "google/electra-small-discriminator": ("electra", {
        "embedding_size": 128, "hidden_size": 256, "num_attention_heads": 4, "intermediate_size": 1024,
        "num_hidden_layers": 12, "vocab_size": 30522}),
    "google/electra-base-discriminator": ("electra", {
        "embedding_size": 768, "hidden_size": 768, "num_attention_heads": 12, "intermediate_size": 3072,
        "num_hidden_layers": 12, "vocab_size": 30522}),
    "google-bert/bert-base-uncased": ("bert", {
        "hidden_size": 768, "num_attention_heads": 12, "intermediate_size": 3072, "num_hidden_layers": 12,
        "vocab_size": 30522}),
    "google/vit-base-patch16-224": ("vit", {
        "hidden_size": 768, "num_attention_heads": 12, "intermediate_size": 3072, "num_hidden_layers": 12,
        "image_size": 224, "patch_size": 16}),
    "facebook/deit-small-distilled-patch16-224": ("deit", dict(_VIT_SMALL)),
    "facebook/dino-vits16": ("vit", dict(_VIT_SMALL)),
    "microsoft/swin-small-patch4-window7-224": ("swin", {
        "embed_dim": 96, "depths": [2, 2, 18, 2], "num_heads": [3, 6, 12, 24], "window_size": 7,
        "image_size": 224, "patch_size": 4}),
}
RECORDS["bert-base-uncased"] = RECORDS["google-bert/bert-base-uncased"]


def recorded_config(source: str):
    """The transformers config recorded for hub id `source`, or None."""
    from transformers import AutoConfig

    found = RECORDS.get(source)
    if found is None:
        return None
    model_type, fields = found
    return AutoConfig.for_model(model_type, **fields)
