"""graphspec.language.reading: schema errors located and explained, `extends:`, overrides, `override`, `loads`."""

from __future__ import annotations

import json

import pytest

import graphspec
from graphspec import SpecError


def only(error: SpecError):
    [issue] = error.issues
    return issue


# --- schema errors -------------------------------------------------------------------------------


def test_unknown_field_is_located_with_a_did_you_mean(load_error, spec_text, line_of):
    text = spec_text.replace("  batch_size: 8", "  batch_sise: 8")
    issue = only(load_error(text))
    assert issue.path == ("train", "batch_sise")
    assert issue.message == "unknown field 'batch_sise'"
    assert issue.hint == "did you mean 'batch_size'?"
    assert str(issue.loc) == f"spec.yaml:{line_of(text, 'batch_sise')}:3"


def test_unknown_node_kind_is_located_with_a_did_you_mean(load_error, spec_text, line_of):
    text = spec_text.replace("kind: co_attention", "kind: co_atention")
    issue = only(load_error(text))
    assert issue.path == ("nodes", "fusion", "kind")
    assert issue.message == "unknown kind 'co_atention'"
    assert issue.hint == "did you mean 'co_attention'?"
    assert str(issue.loc) == f"spec.yaml:{line_of(text, 'co_atention')}:5"


def test_missing_required_field_names_it_and_says_what_it_is(load_error, spec_text, line_of):
    text = spec_text.replace("    source: vit_tiny_patch16_224\n", "")
    issue = only(load_error(text))
    assert issue.path == ("nodes", "vision_tower", "source")
    assert issue.message == "missing required field 'source'"
    assert issue.hint.startswith("add `source:` (A timm model name")
    # not written, so located at the node that lacks it
    assert str(issue.loc) == f"spec.yaml:{line_of(text, 'vision_tower:')}:3"


def test_every_error_of_a_file_is_reported_at_once_each_at_its_line(load_error, spec_text, line_of):
    text = (spec_text.replace("  batch_size: 8", "  batch_sise: 8")
            .replace("kind: co_attention", "kind: co_atention")
            .replace("lr: 1.0e-3", "lr: -1")
            .replace("  image: {modality: image, size: 32}", "  image: {modality: image, size: 2}"))
    error = load_error(text)
    assert len(error.issues) == 4
    found = {(i.dotted, i.loc.line, i.message) for i in error.issues}
    assert found == {
        ("train.batch_sise", line_of(text, "batch_sise"), "unknown field 'batch_sise'"),
        ("nodes.fusion.kind", line_of(text, "co_atention"), "unknown kind 'co_atention'"),
        ("train.optimizer.lr", line_of(text, "lr: -1"), "Input should be greater than 0 (got -1)"),
        ("inputs.image.size", line_of(text, "size: 2}"), "Input should be greater than or equal to 8 (got 2)"),
    }
    assert str(error).endswith("4 errors: in spec.yaml")


def test_a_value_of_the_wrong_type_names_the_field_and_what_it_means(load_error, spec_text, line_of):
    text = spec_text.replace("  steps: 20", "  steps: many")
    issue = only(load_error(text))
    assert issue.dotted == "train.steps"
    assert issue.message.startswith("Input should be a valid integer") and "(got 'many')" in issue.message
    assert issue.hint == "Optimizer steps."
    assert issue.loc.line == line_of(text, "steps: many")


def test_json_spec_errors_are_located_too(write, spec_data, line_of):
    spec_data["train"]["stepz"] = 3
    text = json.dumps(spec_data, indent=1)
    with pytest.raises(SpecError) as info:
        graphspec.load(write(text, "spec.json"))
    issue = only(info.value)
    assert issue.message == "unknown field 'stepz'"
    assert issue.hint == "did you mean 'steps'?"
    line = line_of(text, '"stepz"')
    assert str(issue.loc) == f"spec.json:{line}:3"


# --- extends ---------------------------------------------------------------------------------------


def test_extends_merges_values_and_the_child_wins(write, spec_text):
    write(spec_text, "base/base.yaml")
    path = write("extends: ../base/base.yaml\nname: child\ntrain:\n  steps: 50\nnodes:\n  fusion:\n    layers: 3\n",
                 "child/child.yaml")  # extends: is relative to the child file, not to the current directory
    spec = graphspec.load(path)
    assert spec.name == "child"
    assert spec.train.steps == 50
    assert spec.train.batch_size == 8  # inherited beside an overridden sibling
    assert spec.nodes["fusion"].layers == 3
    assert spec.nodes["fusion"].heads == 2 and spec.nodes["fusion"].inputs.text == "text_tower"
    assert spec.extends is None


def test_extends_null_deletes_an_inherited_key(write, spec_text):
    write(spec_text, "base.yaml")
    path = write("extends: base.yaml\nheads:\n  mlm: null\nobjectives:\n  mlm: null\nnodes:\n  fusion:\n"
                 "    dropout: null\n", "child.yaml")
    spec = graphspec.load(path)
    assert list(spec.heads) == ["itm"] and list(spec.objectives) == ["itm"]
    assert spec.nodes["fusion"].dropout == 0.1  # the schema default, not the base's 0.0


def test_an_error_in_the_base_file_is_located_in_the_base_file(write, load_error, spec_text, line_of):
    base = spec_text.replace("  batch_size: 8", "  batch_sise: 8")
    write(base, "base.yaml")
    error = load_error("extends: base.yaml\nname: child\n", "child.yaml")
    issue = only(error)
    assert issue.message == "unknown field 'batch_sise'"
    assert str(issue.loc) == f"base.yaml:{line_of(base, 'batch_sise')}:3"
    assert str(error).endswith("1 error: in child.yaml")


def test_a_syntax_error_in_the_base_file_is_located_in_the_base_file(write, load_error):
    write("name: a\ntrain: [1\n", "base.yaml")
    issue = only(load_error("extends: base.yaml\n", "child.yaml"))
    assert issue.message.startswith("not valid YAML")
    assert issue.loc.file == "base.yaml" and issue.loc.line == 3


def test_a_child_error_under_an_inherited_section_is_located_in_the_child(write, load_error, spec_text):
    write(spec_text, "base.yaml")
    issue = only(load_error("extends: base.yaml\ntrain:\n  stepz: 3\n", "child.yaml"))
    assert issue.message == "unknown field 'stepz'"
    assert str(issue.loc) == "child.yaml:3:3"


def test_a_missing_base_file_is_located_at_extends(load_error):
    issue = only(load_error("name: a\nextends: nothere.yaml\n", "child.yaml"))
    assert issue.path == ("extends",)
    assert issue.message.startswith("base spec 'nothere.yaml' not found (looked for ")
    assert issue.hint == "give a path relative to this file"
    assert str(issue.loc) == "child.yaml:2:1"


def test_an_extends_cycle_is_an_error_naming_the_chain(write, load_error):
    write("extends: a.yaml\nname: b\n", "b.yaml")
    issue = only(load_error("extends: b.yaml\nname: a\n", "a.yaml"))
    assert issue.message.startswith("extends forms a cycle: ")
    chain = [p.rsplit("/", 1)[-1] for p in issue.message.split(": ", 1)[1].split(" -> ")]
    assert chain == ["a.yaml", "b.yaml", "a.yaml"]
    assert issue.hint == "remove one link"
    assert str(issue.loc) == "b.yaml:1:1"


def test_a_file_that_extends_itself_is_a_cycle(load_error):
    issue = only(load_error("extends: self.yaml\nname: a\n", "self.yaml"))
    assert issue.message.startswith("extends forms a cycle: ")


# --- overrides -------------------------------------------------------------------------------------


def test_cli_overrides_parse_numbers_lists_and_text(write, spec_text):
    spec = graphspec.load(write(spec_text), overrides=[
        "train.optimizer.lr=3e-4",  # YAML 1.1 reads this as text; the schema makes it a float
        "train.schedule.warmup=0.5",
        "train.steps=7",
        "nodes.pooled.inputs=[fusion.image]",
        "nodes.pooled.inputs.0=fusion.text",  # a list item by index
        "description=hello world",
    ])
    assert spec.train.optimizer.lr == pytest.approx(3e-4)
    assert spec.train.schedule.warmup == 0.5
    assert spec.train.steps == 7
    assert spec.nodes["pooled"].inputs == ["fusion.text"]
    assert spec.description == "hello world"


def test_later_overrides_win(write, spec_text):
    spec = graphspec.load(write(spec_text), overrides=["train.steps=7", "train.steps=9"])
    assert spec.train.steps == 9


def test_an_override_can_create_a_section_and_null_deletes(write, spec_text):
    spec = graphspec.load(write(spec_text), overrides=["data.val.split=val", "heads.mlm=null", "objectives.mlm=null"])
    assert spec.data.val is not None and spec.data.val.split == "val"
    assert list(spec.heads) == ["itm"]


@pytest.mark.parametrize("override, path, message, hint", [
    ("train.stepz=3", ("train", "stepz"), "unknown field 'stepz'", "did you mean 'steps'?"),
    ("train.optimzer.lr=3e-4", ("train", "optimzer"), "unknown field 'optimzer'", "did you mean 'optimizer'?"),
    ("nodes.fusion.layerz=2", ("nodes", "fusion", "layerz"), "unknown field 'layerz'", "did you mean 'layers'?"),
])
def test_a_misspelt_override_path_is_located_at_the_override(load_error, spec_text, override, path, message, hint):
    issue = only(load_error(spec_text, overrides=[override]))
    assert issue.path == path
    assert issue.message == message
    assert issue.hint == hint
    assert str(issue.loc) == f"--set {override}"


def test_a_bad_override_value_is_located_at_the_override(load_error, spec_text):
    issue = only(load_error(spec_text, overrides=["train.optimizer.lr=-1"]))
    assert issue.dotted == "train.optimizer.lr"
    assert issue.message == "Input should be greater than 0 (got -1)"
    assert str(issue.loc) == "--set train.optimizer.lr=-1"


@pytest.mark.parametrize("override, message", [
    ("train.steps", "bad override 'train.steps': expected PATH=VALUE"),
    ("=3", "bad override '=3': empty PATH"),
])
def test_a_malformed_override_says_how_to_write_one(load_error, spec_text, override, message):
    issue = only(load_error(spec_text, overrides=[override]))
    assert issue.message == message
    assert issue.hint == "write --set path.to.field=value"
    assert str(issue.loc) == "--set"


@pytest.mark.parametrize("override", ["name.x=1", "nodes.pooled.inputs.5=x"])
def test_an_override_through_a_value_is_an_error_not_a_silent_rewrite(load_error, spec_text, override):
    issue = only(load_error(spec_text, overrides=[override]))
    assert issue.message == "this path does not lead to a mapping in the spec"
    assert str(issue.loc) == f"--set {override}"


def test_override_mapping_in_load(write, spec_text):
    spec = graphspec.load(write(spec_text), overrides={"train.steps": 100, "nodes.fusion.layers": 3})
    assert (spec.train.steps, spec.nodes["fusion"].layers) == (100, 3)


def test_override_returns_a_new_validated_spec_and_leaves_the_old_one(write, spec_text):
    old = graphspec.load(write(spec_text))
    new = graphspec.override(old, {"train.steps": 7, "nodes.fusion.layers": 4})
    assert (new.train.steps, new.nodes["fusion"].layers) == (7, 4)
    assert (old.train.steps, old.nodes["fusion"].layers) == (20, 2)
    assert new.train.batch_size == old.train.batch_size and new.heads == old.heads
    with pytest.raises(SpecError) as info:  # re-validated: the schema's bounds hold
        graphspec.override(old, {"train.steps": 0})
    issue = only(info.value)
    assert issue.message == "Input should be greater than or equal to 1 (got 0)"
    assert str(issue.loc) == "--set train.steps=0"


def test_override_errors_point_at_the_override_or_the_file_line(write, spec_text, line_of):
    old = graphspec.load(write(spec_text))
    with pytest.raises(SpecError) as info:  # the rule's field was overridden: located at the override
        graphspec.override(old, {"train.batch_size": 7, "train.micro_batch_size": 2})
    assert [(i.dotted, str(i.loc)) for i in info.value.issues] == [("train.batch_size", "--set train.batch_size=7")]
    with pytest.raises(SpecError) as info:  # the rule's field is the file's: located at its line
        graphspec.override(old, {"train.micro_batch_size": 3})
    assert [(i.dotted, str(i.loc)) for i in info.value.issues] == [
        ("train.batch_size", f"spec.yaml:{line_of(spec_text, 'batch_size: 8')}:3")]


def test_override_with_a_misspelt_path_suggests(write, spec_text):
    old = graphspec.load(write(spec_text))
    with pytest.raises(SpecError) as info:
        graphspec.override(old, {"train.stepz": 7})
    issue = only(info.value)
    assert (issue.message, issue.hint, str(issue.loc)) == ("unknown field 'stepz'", "did you mean 'steps'?",
                                                          "--set train.stepz=7")


# --- loads -----------------------------------------------------------------------------------------


def test_loads_reads_text(spec_text):
    spec = graphspec.loads(spec_text, overrides=["train.steps=5"])
    assert spec.name == "small" and spec.train.steps == 5
    assert set(spec.nodes) == {"text_tower", "vision_tower", "fusion", "pooled"}


def test_loads_locates_errors_in_its_text(spec_text, line_of):
    text = spec_text.replace("  batch_size: 8", "  batch_sise: 8")
    with pytest.raises(SpecError) as info:
        graphspec.loads(text, file="inline.yaml")
    assert str(only(info.value).loc) == f"inline.yaml:{line_of(text, 'batch_sise')}:3"


def test_loads_refuses_extends(spec_text):
    with pytest.raises(SpecError) as info:
        graphspec.loads("extends: base.yaml\n" + spec_text)
    issue = only(info.value)
    assert issue.message == "extends needs a spec file"
    assert issue.hint == "use graphspec.load(path)"
    assert issue.loc.line == 1


@pytest.mark.parametrize("text", ["", "- a list\n"])
def test_loads_of_no_mapping_is_an_error_with_an_issue(text):
    with pytest.raises(SpecError) as info:
        graphspec.loads(text)
    issue = only(info.value)
    assert issue.message == "a spec must be a mapping of keys (name, inputs, nodes, ...)"
    assert str(info.value).endswith("1 error: in <spec>")


def test_null_sets_an_optional_field_to_none(write, spec_text):
    write(spec_text, "base.yaml")
    spec = graphspec.load(write("extends: base.yaml\ntrain:\n  grad_clip: null\n", "child.yaml"))
    assert spec.train.grad_clip is None  # no clipping, not the default 1.0
    assert graphspec.load(write(spec_text), overrides=["train.grad_clip=null"]).train.grad_clip is None
