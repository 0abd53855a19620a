"""Weights graphspec makes itself, offline: spec sources of the form ``builtin:NAME``.

Like the built-in scenes (``builtin:shapes``), they need nothing from outside: a recipe trains them, seeded,
the first time a build needs the file, and keeps it in the cache (``$GRAPHSPEC_CACHE/weights``, else
``~/.cache/graphspec/weights``) under a name that carries a hash of the recipe's code, so a changed recipe
makes a new file. Compiling needs no file (the architecture is the spec's); building the model with weights
does. Processes that need the same file at once build it once (a lock file).

A recipe renders data, so it lives in the runtime, which registers it here (`register`) when it is imported:
the compiler names no later layer. Every process that builds a model with weights has imported the runtime.
``builtin:small-vit``: timm's ``vit_small_patch32_224`` cut to 6 blocks at 64-pixel images, trained to name the
shapes in built-in scenes (`graphspec/runtime/small_vit.py` documents the recipe); the vision arm of
Experiment 2's CPU twin.

This module imports no torch at import time.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
from pathlib import Path

from graphspec.language.errors import EnvironmentProblem, Issue, SpecError, suggest

PREFIX = "builtin:"
RECIPES: dict[str, str] = {}  # name -> module with build(path) -> dict of facts (registered by the runtime)


def register(name: str, module: str) -> None:
    """Make `builtin:NAME` the file `module`'s `build(path)` trains."""
    RECIPES[name] = module


def is_builtin(source: object) -> bool:
    return isinstance(source, str) and source.strip().startswith(PREFIX)


def cache_dir() -> Path:
    env = os.environ.get("GRAPHSPEC_CACHE")
    return (Path(env) if env else Path.home() / ".cache" / "graphspec") / "weights"


def builtin_path(source: str, path: tuple = (), field: str = "weights") -> Path:
    """Where `builtin:NAME`'s file is (or will be): its recipe's code hash in the name."""
    name = source.strip()[len(PREFIX):]
    if name not in RECIPES:
        raise SpecError([Issue(path + (field,), f"no built-in weights '{name}'",
                               suggest(name, RECIPES) or f"built-in weights: {', '.join(sorted(RECIPES))}")])
    spec = importlib.util.find_spec(RECIPES[name])
    code = Path(spec.origin).read_bytes() if spec is not None and spec.origin else b""
    return cache_dir() / f"{name}-{hashlib.sha256(code).hexdigest()[:12]}.safetensors"


def ensure_builtin(source: str, path: tuple = (), field: str = "weights") -> Path:
    """The file of `builtin:NAME`, trained now if it is not in the cache yet."""
    import fcntl

    file = builtin_path(source, path, field)
    if file.is_file():
        return file
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        with open(file.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be making it: wait, then use its file
            if not file.is_file():
                name = source.strip()[len(PREFIX):]
                print(f"graphspec: making the built-in weights '{name}' once ({file})", file=sys.stderr, flush=True)
                facts = importlib.import_module(RECIPES[name]).build(file)
                print(f"graphspec: built-in weights '{name}': {facts}", file=sys.stderr, flush=True)
    except OSError as e:
        raise EnvironmentProblem([Issue(path + (field,), f"cannot write the built-in weights to {file}: {e}",
                                        "set GRAPHSPEC_CACHE to a writable folder")]) from None
    return file
