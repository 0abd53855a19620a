"""Building transformers and timm backbones from encoder nodes, offline-first.

`meta=True` builds the architecture on the meta device: no weights are read or
allocated, which is what compile-time checks need. Otherwise `init: random`
builds from the config and `init: pretrained` loads the weights.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from graphspec.language.errors import EnvironmentProblem, GraphspecError, Issue, Loc, SpecError, suggest

from .hub_configs import recorded_config

_HF_SIZES = {  # size override -> transformers config attribute
    "hidden": "hidden_size", "layers": "num_hidden_layers", "heads": "num_attention_heads",
    "embedding_size": "embedding_size", "vocab_size": "vocab_size",
    "max_positions": "max_position_embeddings", "patch_size": "patch_size",
}
_TIMM_SIZES = {"hidden": "embed_dim", "layers": "depth", "heads": "num_heads", "mlp_ratio": "mlp_ratio",
               "patch_size": "patch_size"}
_HF_DROPOUTS = ("hidden_dropout_prob", "attention_probs_dropout_prob")


def _device(meta: bool):
    return torch.device("meta") if meta else contextlib.nullcontext()


def _offline_hint(source: str, path: tuple) -> EnvironmentProblem:
    return EnvironmentProblem([Issue(
        path + ("source",),
        f"'{source}' is neither a local directory nor in the Hugging Face cache, and could not be downloaded",
        "on a machine with network, save it (`huggingface-cli download "
        f"{source} --local-dir DIR`) and set `source: DIR`; or use `init: random` with `model_type`",
    )], title="weights not available")


CODE_CONFIGS = ("config.json", "tokenizer_config.json", "preprocessor_config.json", "processor_config.json",
                "image_processor_config.json", "feature_extractor_config.json", "video_preprocessor_config.json")


def refuse_remote_code(folder: Path, path: tuple = (), field: str = "source") -> None:
    """A model folder whose configs ask transformers to import code from the folder (`auto_map`) is refused by
    name, before any transformers call reads it: graphspec never runs code that came with a model."""
    for name in CODE_CONFIGS:
        file = folder / name
        if not file.is_file() or file.stat().st_size > 16 * 2**20:  # a config is small; a larger file is no config
            continue
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # not JSON: transformers refuses it on its own, located by the caller
        if isinstance(data, dict) and "auto_map" in data:
            raise SpecError([Issue(path + ((field,) if path else ()), f"{file} asks to run code that came with the "
                                   f"model (auto_map: {', '.join(sorted(map(str, data['auto_map'])))[:120]})",
                                   "graphspec never loads code from a model folder: use a model whose architecture "
                                   "transformers has built in, or remove auto_map if the model does not need it",
                                   loc=Loc(str(file)))], title="this model folder carries code")


def local_source(source: str, path: tuple, field: str = "source") -> str:
    """A `package:NAME` source as the local path inside that installed distribution, `builtin:NAME` as the file
    graphspec trained (now, if it is not in the cache yet); others unchanged. A local folder is checked for code it
    asks to run (`refuse_remote_code`)."""
    from .builtin_weights import ensure_builtin, is_builtin
    from .packaged import is_package_source, resolve_package_source

    if is_builtin(source):
        return str(ensure_builtin(source, path, field))
    if not is_package_source(source):
        if Path(source).is_dir():
            refuse_remote_code(Path(source), path, field)
        return source
    try:
        found = resolve_package_source(source)
    except GraphspecError as e:
        e.issues = [replace(i, path=path + (field,)) for i in e.issues]
        raise
    if Path(found).is_dir():
        refuse_remote_code(Path(found), path, field)
    return str(found)


def hf_config(node, path: tuple, image_size: int | None = None, meta: bool = False, warnings: list | None = None):
    """The transformers config of an hf_text / hf_vision / one_tower node, with overrides applied.

    At compile time (`meta`), a source whose config is not on this machine falls
    back to `model_type`'s default config, so a spec naming hub weights still
    compiles offline; the weights themselves are loaded (or refused) at run time.
    """
    from transformers import AutoConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if node.model_type and node.model_type not in CONFIG_MAPPING:
        raise SpecError([Issue(path + ("model_type",), f"unknown transformers model type '{node.model_type}'",
                               suggest(node.model_type, CONFIG_MAPPING.keys()))])
    if not node.source:
        cfg = AutoConfig.for_model(node.model_type)
    elif meta and (node.model_type or recorded_config(node.source) is not None):
        try:
            cfg = _pretrained_config(local_source(node.source, path), path, network=False)
        except EnvironmentProblem:
            cfg = recorded_config(node.source)
            against = "graphspec's record of its architecture (compiler/hub_configs.py)"
            if cfg is None:
                cfg, against = AutoConfig.for_model(node.model_type), f"model_type '{node.model_type}' defaults"
            if warnings is not None:
                warnings.append(Issue(path + ("source",), f"the config of '{node.source}' is not on this machine: "
                                      f"checked against {against}", "the weights are needed to run; see `source`",
                                      "warning"))
    else:
        cfg = _pretrained_config(local_source(node.source, path), path)
    if hasattr(cfg, "image_size") and image_size and node.init == "random":
        cfg.image_size = image_size
    _apply_hf_sizes(cfg, node, path)
    if node.dropout is not None:
        for attr in _HF_DROPOUTS:
            if hasattr(cfg, attr):
                setattr(cfg, attr, node.dropout)
    return cfg


def _pretrained_config(source: str, path: tuple, network: bool = True):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(source, local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError) as e:
        _refuse_if_code(e, source, path)
        if not network or os.environ.get("HF_HUB_OFFLINE") == "1" or Path(source).exists():
            raise _offline_hint(source, path) from None
    try:
        return AutoConfig.from_pretrained(source, trust_remote_code=False)
    except (OSError, ValueError) as e:
        _refuse_if_code(e, source, path)
        raise _offline_hint(source, path) from e


def _refuse_if_code(error: Exception, source: str, path: tuple) -> None:
    """transformers refuses a hub repository whose config needs its own code (we pass trust_remote_code=False):
    say that, not that the model is missing."""
    if "trust_remote_code" in str(error):
        raise SpecError([Issue(path + ("source",), f"'{source}' needs to run code that comes with the model",
                               "graphspec never loads code from a model: use a model whose architecture "
                               "transformers has built in")], title="this model carries code") from None


def _apply_hf_sizes(cfg, node, path: tuple) -> None:
    if node.size is None:
        return
    problems = []
    for key, value in node.size.model_dump(exclude_none=True).items():
        if key == "mlp_ratio":
            cfg.intermediate_size = int(cfg.hidden_size * value)
            continue
        attr = _HF_SIZES[key]
        if not hasattr(cfg, attr):
            problems.append(Issue(path + ("size", key), f"a '{cfg.model_type}' model has no {attr}",
                                  "remove this override"))
        setattr(cfg, attr, value)
    if node.size.mlp_ratio and node.size.hidden:
        cfg.intermediate_size = int(node.size.hidden * node.size.mlp_ratio)
    if problems:
        raise SpecError(problems)


def hf_model(node, cfg, path: tuple, meta: bool) -> nn.Module:
    from transformers import AutoModel

    if meta or node.init == "random":
        with _device(meta):
            model = AutoModel.from_config(cfg)
    else:
        try:
            model = AutoModel.from_pretrained(local_source(node.source, path), config=cfg, trust_remote_code=False)
        except OSError as e:
            raise _offline_hint(node.source, path) from e
    # graphspec pools with its own nodes; an unused pooler would only add parameters that get no gradient.
    if getattr(model, "pooler", None) is not None:
        model.pooler = None
    return model


def checkpoint_hf(model: nn.Module, path: tuple) -> None:
    """`checkpoint: true` on a transformers model: its own activation checkpointing, non-reentrant (gradients
    reach every input; dropout draws replayed). It acts per layer, only in train mode with grad enabled."""
    hf: Any = model  # a PreTrainedModel (its type is not imported here: that would import transformers)
    name = type(model).__name__
    if not getattr(hf, "supports_gradient_checkpointing", False):
        raise _no_checkpointing(path, f"transformers' {name} has no activation checkpointing")
    kwargs = {"use_reentrant": False}
    try:
        if hasattr(hf, "activation_checkpointing_enable"):  # the name in newer transformers 5.x
            hf.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    except ValueError as e:  # it claims support, but none of its modules takes the switch
        raise _no_checkpointing(path, f"transformers' {name} refuses activation checkpointing: {e}") from e
    # transformers also makes the token embeddings' output require grad (for reentrant checkpointing): a tower
    # frozen whole would then run a backward for nothing. Non-reentrant checkpointing needs no such hook.
    hf.disable_input_require_grads()
    if getattr(hf.config, "use_cache", False):  # an encoder keeps no cache; transformers would warn it is off
        hf.config.use_cache = False


def checkpoint_timm(model: nn.Module, name: str, path: tuple) -> None:
    """`checkpoint: true` on timm model `name`: its `set_grad_checkpointing` (timm checkpoints blocks or
    stages, non-reentrant). Some architectures have none, or refuse it with an assert."""
    setter = getattr(model, "set_grad_checkpointing", None)
    try:
        if setter is not None:
            setter(True)
    except (AssertionError, NotImplementedError):
        setter = None
    # the switch is a `grad_checkpointing` flag on the model or its stages: none set, it did nothing
    if setter is None or not any(getattr(m, "grad_checkpointing", None) is True for m in model.modules()):
        raise _no_checkpointing(path, f"timm's '{name}' has no activation checkpointing")


def _no_checkpointing(path: tuple, message: str) -> SpecError:
    return SpecError([Issue(path + ("checkpoint",), message,
                            "remove `checkpoint: true` from this node, or use an architecture that has it "
                            "(transformers' BERT, ELECTRA, ViT; timm's ViTs, ResNets, ConvNeXts)")])


def timm_model(node, image_size: int, path: tuple, meta: bool) -> nn.Module:
    """A timm backbone without its classifier; ViTs sized to the input image."""
    import timm

    if not timm.is_model(node.source):
        raise SpecError([Issue(path + ("source",), f"timm has no model '{node.source}'",
                               suggest(node.source, timm.list_models()) or "see timm.list_models()")])
    kwargs: dict = {"num_classes": 0, "global_pool": ""}
    if node.size is not None:
        for key, value in node.size.model_dump(exclude_none=True).items():
            if key not in _TIMM_SIZES:
                raise SpecError([Issue(path + ("size", key), f"timm vision models take no '{key}'",
                                       f"use {', '.join(_TIMM_SIZES)}")])
            kwargs[_TIMM_SIZES[key]] = value
    optional = {"img_size": image_size}
    if node.dropout is not None:
        optional.update(drop_rate=node.dropout, proj_drop_rate=node.dropout, attn_drop_rate=node.dropout)
    weights = getattr(node, "weights", None)
    from_hub = node.init == "pretrained" and not meta and not weights
    with _device(meta):
        model = _create_timm(timm, node.source, from_hub, kwargs, optional, path)
    if node.init == "pretrained" and weights and not meta:
        _load_timm_file(model, node.source, local_source(weights, path, "weights"), path)
    return model


def _load_timm_file(model: nn.Module, name: str, file: str, path: tuple) -> None:
    """Load a local weights file strictly; every missing, unexpected or mis-shaped key is reported."""
    from .packaged import load_timm_state_dict

    if not Path(file).is_file():
        raise EnvironmentProblem([Issue(path + ("weights",), f"no weights file at '{file}'",
                                        "give the path of a .safetensors or .pth file")])
    head = getattr(model, "pretrained_cfg", {}).get("classifier") or "head"
    state = load_timm_state_dict(file, drop=(f"{head}.",))  # graphspec's towers have no classifier
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        detail = "; ".join(ln.strip() for ln in str(e).splitlines()[1:4])
        raise SpecError([Issue(path + ("weights",), f"{file} does not fit timm '{name}' as specified: {detail[:400]}",
                               "make `source` and `size` describe the architecture the file was saved from")]) from e


def _create_timm(timm, name: str, pretrained: bool, kwargs: dict, optional: dict, path: tuple) -> nn.Module:
    """create_model, dropping the optional arguments (image size, dropouts) an architecture does not take."""
    while True:
        try:
            return timm.create_model(name, pretrained=pretrained, **kwargs, **optional)
        except TypeError as e:
            bad = next((k for k in optional if f"'{k}'" in str(e)), None)
            if bad is None:
                key = next((k for k in kwargs if f"'{k}'" in str(e)), None)
                if key is None:
                    raise
                raise SpecError([Issue(path + ("size",), f"timm model '{name}' does not take '{key}'",
                                       "remove that size override")]) from e
            optional.pop(bad)
        except OSError as e:
            if not pretrained:
                raise
            raise EnvironmentProblem([Issue(path + ("source",), f"pretrained weights for timm '{name}' are not available: {str(e)[:200]}",
                                            "download them where there is network and set `weights:` to the file")]) from e
