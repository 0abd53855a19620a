"""`builtin:NAME` weights: made by their recipe the first time a build needs them, once, then read from the cache."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

import graphspec.runtime  # noqa: F401  (registers the built-in recipes)
from graphspec.compiler import builtin_weights as B
from graphspec.compiler.backbones import local_source
from graphspec.language.errors import SpecError

RECIPE = '''
import os, time
from pathlib import Path

def build(path):
    with open(os.environ["RECIPE_LOG"], "a") as log:
        log.write("built\\n")
    time.sleep(0.5)  # long enough for a second process to arrive while the first is making it
    tmp = Path(str(path) + ".tmp")
    tmp.write_bytes(b"weights")
    os.replace(tmp, path)
    return {"steps": 1}
'''


@pytest.fixture
def recipe(tmp_path, monkeypatch):
    (tmp_path / "fake_recipe.py").write_text(RECIPE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "fake_recipe", raising=False)  # another test's file of that name
    monkeypatch.setitem(B.RECIPES, "fake", "fake_recipe")
    monkeypatch.setenv("GRAPHSPEC_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("RECIPE_LOG", str(tmp_path / "log"))
    return tmp_path


def test_made_once_then_read_from_the_cache(recipe):
    first = local_source("builtin:fake", ("nodes", "joint"), "weights")
    assert first == local_source("builtin:fake", ("nodes", "joint"), "weights")
    assert (recipe / "log").read_text() == "built\n"
    assert first.startswith(str(recipe / "cache" / "weights" / "fake-")) and first.endswith(".safetensors")


def test_a_changed_recipe_makes_a_new_file(recipe):
    before = B.builtin_path("builtin:fake")
    (recipe / "fake_recipe.py").write_text(RECIPE + "\n# changed\n")
    assert B.builtin_path("builtin:fake") != before


def test_two_processes_at_once_make_it_once(recipe):
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(recipe)!r})
        from graphspec.compiler import builtin_weights as B
        B.RECIPES["fake"] = "fake_recipe"
        print(B.ensure_builtin("builtin:fake"))
    """)
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) for _ in range(2)]
    paths = {p.communicate(timeout=120)[0].strip() for p in procs}
    assert len(paths) == 1 and all(p.returncode == 0 for p in procs)
    assert (recipe / "log").read_text() == "built\n"


def test_an_unknown_name_is_located_with_the_names_there_are():
    with pytest.raises(SpecError) as e:
        local_source("builtin:small-vt", ("nodes", "joint"), "weights")
    issue = e.value.issues[0]
    assert issue.path == ("nodes", "joint", "weights") and "no built-in weights 'small-vt'" in issue.message
    assert "small-vit" in issue.hint
