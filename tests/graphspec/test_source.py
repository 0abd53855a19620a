"""graphspec.language.parsing: spec text -> plain data, where each value was written, and the problems."""

from __future__ import annotations

import json
import textwrap

import pytest

import graphspec
from graphspec.language.errors import Loc
from graphspec.language.parsing import parse_file, parse_text


def parse(text: str, fmt: str = "yaml"):
    return parse_text(textwrap.dedent(text), f"f.{fmt}", fmt)


def test_yaml_keys_and_list_items_keep_line_and_column():
    data, smap, issues = parse("""\
        name: x
        train:
          steps: 3
          sizes: [1, 22]
        """)
    assert issues == []
    assert data == {"name": "x", "train": {"steps": 3, "sizes": [1, 22]}}
    assert smap.locate(("name",)) == Loc("f.yaml", 1, 1)
    assert smap.locate(("train",)) == Loc("f.yaml", 2, 1)
    assert smap.locate(("train", "steps")) == Loc("f.yaml", 3, 3)
    assert smap.locate(("train", "sizes", 1)) == Loc("f.yaml", 4, 14)


def test_an_unwritten_path_is_located_at_its_nearest_written_parent():
    _, smap, _ = parse("train:\n  steps: 3\n")
    assert smap.locate(("train", "optimizer", "lr")) == Loc("f.yaml", 1, 1)
    assert smap.locate(("nodes",)) == Loc("f.yaml")  # nothing written: the file itself


def test_json_keys_keep_line_and_column():
    text = '{\n  "name": "x",\n  "train": {"steps": 3}\n}\n'
    data, smap, issues = parse_text(text, "f.json", "json")
    assert issues == []
    assert data == {"name": "x", "train": {"steps": 3}}
    assert smap.locate(("name",)) == Loc("f.json", 2, 3)
    assert smap.locate(("train", "steps")) == Loc("f.json", 3, 13)


def test_duplicate_key_is_an_error_naming_both_lines():
    data, _, issues = parse("""\
        name: a
        train:
          steps: 3
          batch_size: 8
          steps: 4
        """)
    [issue] = issues
    assert issue.path == ("train", "steps")
    assert issue.loc == Loc("f.yaml", 5, 3)  # the second one
    assert issue.message == "duplicate key 'steps' (first at line 3)"
    assert issue.hint == "keep one of them"
    assert "f.yaml:5:3: train.steps: duplicate key 'steps' (first at line 3)" in issue.format()


def test_duplicate_key_in_json_is_an_error_too():
    _, _, issues = parse_text('{"name": "a",\n "name": "b"}', "f.json", "json")
    [issue] = issues
    assert issue.message == "duplicate key 'name' (first at line 1)"
    assert (issue.loc.line, issue.loc.col) == (2, 2)


@pytest.mark.parametrize("value", [
    "!!python/object/apply:os.system ['touch {marker}']",  # a sequence node
    "!!python/object/apply:os.system\n  args: ['touch {marker}']",  # a mapping node
    "!!python/name:os.system",  # a scalar node
])
def test_python_tags_are_rejected_and_nothing_runs(tmp_path, value):
    marker = tmp_path / "ran"
    text = "name: a\nrun: " + value.format(marker=marker) + "\n"
    data, _, issues = parse_text(text, "f.yaml")
    [issue] = issues
    assert issue.path == ("run",)
    assert issue.loc == Loc("f.yaml", 2, 6)
    assert issue.message.startswith("the tag 'tag:yaml.org,2002:python/")
    assert "is not allowed: a spec is data" in issue.message
    assert issue.hint.startswith("remove the tag")
    assert data["run"] in (None, {})  # the tagged value is dropped, not kept as data
    assert not marker.exists()


def test_python_tag_in_a_spec_file_fails_loading_and_runs_nothing(write, tmp_path):
    marker = tmp_path / "ran"
    path = write(f"name: a\ndescription: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(graphspec.SpecError) as info:
        graphspec.load(path)
    assert "spec.yaml:2:14: description: the tag 'tag:yaml.org,2002:python/object/apply:os.system'" in str(info.value)
    assert not marker.exists()


def test_invalid_yaml_reports_its_line():
    data, _, issues = parse("""\
        name: a
        train:
          steps: [1, 2
          batch_size: 8
        """)
    assert data is None
    [issue] = issues
    assert issue.message.startswith("not valid YAML: ")
    assert "flow sequence" in issue.message
    assert issue.loc.file == "f.yaml"
    assert issue.loc.line == 4  # where the parser gave up: the `:` after batch_size


def test_invalid_json_reports_line_and_column():
    text = '{\n  "name": "a",\n  "train": {"steps": 3,}\n}\n'
    data, _, issues = parse_text(text, "f.json", "json")
    assert data is None
    [issue] = issues
    assert issue.message == "not valid JSON: Expecting property name enclosed in double quotes"
    assert issue.loc == Loc("f.json", 3, 24)  # the `}` after the trailing comma
    with pytest.raises(json.JSONDecodeError) as info:  # the same place the json module names
        json.loads(text)
    assert (info.value.lineno, info.value.colno) == (3, 24)


def test_yaml_merge_keys_merge_and_the_mapping_own_keys_win():
    data, smap, issues = parse("""\
        base: &base
          steps: 3
          batch_size: 8
        train:
          <<: *base
          steps: 5
        """)
    assert issues == []
    assert data["train"] == {"steps": 5, "batch_size": 8}
    assert data["base"] == {"steps": 3, "batch_size": 8}
    assert smap.locate(("train", "steps")) == Loc("f.yaml", 6, 3)  # the override, not the anchor
    assert smap.locate(("train", "batch_size")) == Loc("f.yaml", 3, 3)  # written in the anchor


def test_merge_keys_still_catch_a_key_written_twice():
    _, _, issues = parse("""\
        base: &base {steps: 3}
        train:
          <<: *base
          steps: 5
          steps: 6
        """)
    [issue] = issues
    assert issue.message == "duplicate key 'steps' (first at line 4)"
    assert issue.loc.line == 5


def test_a_bad_merge_value_is_an_issue_not_a_crash():
    _, _, issues = parse("train:\n  <<: 3\n")
    [issue] = issues
    assert issue.message.startswith("bad merge key: expected a mapping or list of mappings")
    assert issue.loc == Loc("f.yaml", 2, 7)


def test_an_unreadable_scalar_is_an_issue_not_a_crash():
    _, _, issues = parse("name: a\ncreated: 2024-13-45\n")
    [issue] = issues
    assert issue.path == ("created",)
    assert issue.loc == Loc("f.yaml", 2, 10)
    assert issue.message.startswith("cannot read the value '2024-13-45' as timestamp")
    assert issue.hint == "quote it to make it text"


def test_plain_scalars_read_as_yaml_1_2_not_1_1():
    """YAML 1.1 reads `2:4` as the base-60 integer 124 and `012` as octal 10; a layer range must stay text."""
    data, _, issues = parse("a: {layers: 2:4}\nb: 1:30\nc: 012\nd: -3\ne: 1e-4\nf: no\ng: 1_000\n")
    assert not issues
    assert data == {"a": {"layers": "2:4"}, "b": "1:30", "c": 12, "d": -3, "e": 1e-4, "f": "no", "g": "1_000"}
    from graphspec.language.parsing import load_scalar

    assert load_scalar("2:4") == "2:4" and load_scalar("7") == 7


def test_keys_must_be_text():
    _, _, issues = parse("name: a\n1: b\n")
    [issue] = issues
    assert issue.message == "keys must be text, not 1"
    assert issue.loc.line == 2


@pytest.mark.parametrize("text", ["", "# only a comment\n"])
def test_an_empty_file_parses_to_nothing_without_issues(text):
    data, _, issues = parse_text(text, "f.yaml")
    assert data is None and issues == []


@pytest.mark.parametrize("text", ["", "# only a comment\n", "- a list\n"])
def test_an_empty_or_non_mapping_spec_is_one_located_error(write, text):
    path = write(text)
    with pytest.raises(graphspec.SpecError) as info:
        graphspec.load(path)
    [issue] = info.value.issues
    assert issue.message == "a spec must be a mapping of keys (name, inputs, nodes, ...)"
    assert str(issue.loc) == "spec.yaml"


def test_a_missing_file_is_one_issue(tmp_path):
    data, _, issues = parse_file(tmp_path / "nope.yaml")
    assert data is None
    [issue] = issues
    assert issue.message == "no such file"
    assert issue.loc == Loc(str(tmp_path / "nope.yaml"))
