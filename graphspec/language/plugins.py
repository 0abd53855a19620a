"""Plugins: modules that register new kinds, heads and tasks (see docs/extending.md), found through the
entry-point group `graphspec.plugins` of installed packages. Importing a plugin module registers what it holds;
this loads every installed one, once, before the command line or the API reads a spec."""

from __future__ import annotations

import importlib
from importlib import metadata

from .errors import EnvironmentProblem, Issue

GROUP = "graphspec.plugins"
_loaded: dict[str, str] = {}  # entry-point name -> module, once imported


def load_plugins() -> dict[str, str]:
    """Import every installed plugin not imported yet; {name: module} of all loaded. A plugin that fails to
    import is the machine's problem, named with its package and module."""
    for ep in metadata.entry_points(group=GROUP):
        if ep.name in _loaded:
            continue
        try:
            importlib.import_module(ep.module)
        except Exception as e:  # noqa: BLE001 - a plugin's import can fail any way; it is named, not hidden
            dist = getattr(ep.dist, "name", "an installed package")
            raise EnvironmentProblem([Issue((), f"the plugin '{ep.name}' ({ep.value}, from {dist}) failed to "
                                            f"import: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}",
                                            f"fix or uninstall {dist}")], title="a plugin cannot load") from e
        _loaded[ep.name] = ep.module
    return dict(_loaded)
