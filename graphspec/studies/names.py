"""Variant names: deterministic, unique, readable, safe as file names: BASE-LABEL-VALUE__LABEL-VALUE, each
label the shortest tail of its dotted path that no other varied path ends with."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from .grid import Setting

def _token(value: Any, limit: int = 40) -> str:
    """A value as a short, lowercase, filesystem-safe name part."""
    if isinstance(value, dict):
        text = "_".join(f"{k}-{_token(v, limit)}" for k, v in value.items())
    elif isinstance(value, list):
        text = "_".join(_token(v, limit) for v in value)
    else:
        text = json.dumps(value) if value is None or isinstance(value, bool) else str(value)
    text = re.sub(r"[^a-z0-9_.-]+", "_", text.lower()).strip("_") or "empty"
    if len(text) > limit:
        text = text[: limit - 8] + "-" + hashlib.sha1(text.encode()).hexdigest()[:7]
    return text


def _labels(paths: list[str]) -> dict[str, str]:
    """Each path's shortest tail (two components at least) that no other varied path ends with."""
    split = {p: p.lower().split(".") for p in paths}
    out = {}
    for p, parts in split.items():
        n = min(2, len(parts))
        while n < len(parts) and any(q != p and other[-n:] == parts[-n:] for q, other in split.items()):
            n += 1
        out[p] = _token("-".join(parts[-n:]))
    return out


def _named(entry: list[Setting]) -> list[Setting]:
    """A listed variant that names itself (`name: random`) is known by that name, not by its changes."""
    own = [s for s in entry if s.dotted == "name"]
    return own or entry


def variant_names(base_name: str, pairs: list[tuple[list[Setting], list[Setting]]]) -> list[str]:
    """Deterministic, unique names: base-label-value__label-value; a clash gets -2, -3, ... in order."""
    combos = [_named(e) + c for e, c in pairs]
    labels = _labels(list(dict.fromkeys(s.dotted for c in combos for s in c)))
    names: list[str] = []
    taken: set[str] = set()
    for combo in combos:
        parts = [_token(s.value) if s.dotted == "name" else f"{labels[s.dotted]}-{_token(s.value)}" for s in combo]
        name = f"{base_name}-" + ("__".join(parts) or "base")
        if len(name) > 150:  # file names stop at 255 bytes
            name = name[:140] + "-" + hashlib.sha1(name.encode()).hexdigest()[:8]
        unique, n = name, 1
        while unique.lower() in taken:  # lowercase: case-insensitive file systems
            n += 1
            unique = f"{name}-{n}"
        taken.add(unique.lower())
        names.append(unique)
    return names




def short_name(variant: str, base_name: str) -> str:
    """A variant's name for legends and tables: the base spec's name dropped, and a boolean change shown by its
    label when true, left out when false ("vision_tower-freeze+text_tower-freeze"; "base" when none is)."""
    if not variant.startswith(base_name + "-"):
        return variant
    parts = []
    for part in variant[len(base_name) + 1:].split("__"):
        if part.endswith("-false"):
            continue
        parts.append(part[: -len("-true")] if part.endswith("-true") else part)
    return "+".join(parts) or "base"
