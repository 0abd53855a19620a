"""Every graph rule, triggered once; the message text, the field and the spec line are checked."""

from __future__ import annotations

import pytest

import graphspec
from graphspec.compiler import compile_spec
from graphspec.language.errors import EnvironmentProblem, SpecError


def compile_errors(path) -> list[str]:
    with pytest.raises(SpecError) as info:
        compile_spec(graphspec.load(path))
    return [i.format() for i in info.value.errors]


def test_unknown_reference_names_the_line_and_suggests(tiny, write_spec, line_of):
    tiny["nodes"]["fusion"]["inputs"]["image"] = "vison_tower"
    path = write_spec(tiny)
    [err] = compile_errors(path)
    assert f"spec.yaml:{line_of(path, 'vison_tower')}:" in err
    assert "nodes.fusion.inputs.image: unknown node 'vison_tower'" in err
    assert "did you mean 'vision_tower'?" in err


def test_unknown_port_lists_the_ports(tiny, write_spec):
    tiny["nodes"]["pooled"]["inputs"] = ["fusion.txt", "fusion.image"]
    [err] = compile_errors(write_spec(tiny))
    assert "nodes.pooled.inputs.0: 'fusion' has no port 'txt' (it has: text, image)" in err
    assert "did you mean 'text'?" in err


def test_cycle_is_printed(tiny, write_spec):
    tiny["nodes"]["p1"] = {"kind": "projection", "input": "p2", "width": 32}
    tiny["nodes"]["p2"] = {"kind": "projection", "input": "p1", "width": 32}
    tiny["heads"]["itm"]["input"] = "pooled"
    errors = compile_errors(write_spec(tiny))
    assert any("the graph has a cycle: p1 -> p2 -> p1" in e or "p2 -> p1 -> p2" in e for e in errors)


def test_image_tower_fed_text(tiny, write_spec):
    tiny["nodes"]["vision_tower"]["input"] = "text"
    path = write_spec(tiny)
    errors = compile_errors(path)
    assert any("nodes.vision_tower.input: timm_vision needs image pixels, but 'text' gives text tokens" in e
               and "fix: feed it an image input" in e for e in errors)


def test_fusion_streams_swapped(tiny, write_spec):
    tiny["nodes"]["fusion"]["inputs"] = {"text": "vision_tower", "image": "text_tower"}
    errors = compile_errors(write_spec(tiny))
    assert any("nodes.fusion.inputs.text: co_attention needs a text sequence, but 'vision_tower' gives an image "
               "sequence" in e and "fix: feed it a text stream" in e for e in errors)


def test_itm_fed_a_sequence_says_to_pool(tiny, write_spec):
    tiny["heads"]["itm"]["input"] = "fusion.text"
    [err] = compile_errors(write_spec(tiny))
    assert "heads.itm.input: itm needs a vector, but 'fusion.text' gives a text sequence" in err
    assert "fix: pool the sequence first (a cls_pool node)" in err


def test_width_mismatch_names_both_widths_and_the_fix(tiny, write_spec, line_of):
    tiny["nodes"]["vision_tower"]["size"]["hidden"] = 48
    path = write_spec(tiny)
    [err] = compile_errors(path)
    assert "nodes.fusion.inputs: the streams differ in width: 'text_tower' gives 32, 'vision_tower' gives 48" in err
    assert "set `nodes.fusion.width` (e.g. 48) to project both, or add a projection node" in err
    assert f"spec.yaml:{line_of(path, 'kind: co_attention') + 1}:" in err  # the fusion's `inputs:` key
    tiny["nodes"]["fusion"]["width"] = 48
    assert compile_spec(graphspec.load(write_spec(tiny, "fixed.yaml"))).summary["shapes"]["fusion"] == \
        "text (B, 12, 48), image (B, 17, 48)"


def test_objective_for_the_wrong_head_kind(tiny, write_spec):
    tiny["objectives"]["itm"] = {"weight": 1.0, "head": "mlm"}
    [err] = compile_errors(write_spec(tiny))
    assert "objectives.itm.head: a itm objective cannot train head 'mlm', a mlm head" in err


def test_objective_for_a_missing_head_suggests(tiny, write_spec):
    tiny["objectives"]["itm"] = {"weight": 1.0, "head": "itn"}
    [err] = compile_errors(write_spec(tiny))
    assert "objective 'itm' trains head 'itn', which does not exist" in err and "did you mean 'itm'?" in err


def test_lr_multiplier_for_an_unknown_node(tiny, write_spec):
    tiny["train"]["lr_multipliers"] = {"fusoin": 5}
    [err] = compile_errors(write_spec(tiny))
    assert "train.lr_multipliers.fusoin: unknown node 'fusoin'" in err and "did you mean 'fusion'?" in err


def test_node_that_feeds_nothing_is_a_warning(tiny, write_spec):
    tiny["nodes"]["extra"] = {"kind": "projection", "input": "text_tower", "width": 16}
    compiled = compile_spec(graphspec.load(write_spec(tiny)))
    [warning] = compiled.warnings
    assert warning.severity == "warning"
    assert "nodes.extra: 'extra' feeds no head: it would be computed for nothing" in warning.format()


def test_everything_frozen_is_an_error(tiny, write_spec):
    for section in ("nodes", "heads"):
        for obj in tiny[section].values():
            obj["freeze"] = True
    errors = compile_errors(write_spec(tiny))
    assert any("every parameter is frozen: there is nothing to train" in e for e in errors)


def test_freeze_pattern_that_matches_nothing(tiny, write_spec):
    tiny["nodes"]["vision_tower"]["freeze"] = {"params": ["patch_embd.*"]}
    path = write_spec(tiny)
    [err] = compile_errors(path)
    assert "nodes.vision_tower.freeze.params.0: 'patch_embd.*' matches no parameter of 'vision_tower'" in err
    assert "patch_embed" in err  # the hint lists what names start with


def test_freeze_layers_out_of_range(tiny, write_spec):
    tiny["nodes"]["text_tower"]["freeze"] = {"layers": "5:"}
    [err] = compile_errors(write_spec(tiny))
    assert "'5:' selects none of the 2 layers of 'text_tower'" in err and "use a range within 0:2" in err


def test_text_longer_than_the_encoder_positions(tiny, write_spec, line_of):
    tiny["inputs"]["text"]["max_length"] = 40
    path = write_spec(tiny)
    [err] = compile_errors(path)
    assert f"spec.yaml:{line_of(path, 'max_length: 40')}:" in err
    assert "inputs.text.max_length: 40 tokens exceed the 16 positions of 'text_tower'" in err


def test_unknown_model_type_and_timm_name_suggest(tiny, write_spec):
    tiny["nodes"]["text_tower"]["model_type"] = "bret"
    tiny["nodes"]["vision_tower"]["source"] = "vit_tiny_patch16_22"
    errors = compile_errors(write_spec(tiny))
    assert any("unknown transformers model type 'bret'" in e and "did you mean 'bert'?" in e for e in errors)
    assert any("timm has no model 'vit_tiny_patch16_22'" in e and "did you mean 'vit_tiny_patch16_224'?" in e
               for e in errors)


def test_several_graph_errors_are_reported_together(tiny, write_spec):
    tiny["nodes"]["fusion"]["inputs"]["image"] = "vison_tower"
    tiny["heads"]["itm"]["input"] = "poled"
    tiny["train"]["lr_multipliers"] = {"fusoin": 2}
    assert len(compile_errors(write_spec(tiny))) == 3


def test_missing_pretrained_weights_say_how_to_get_them(tiny, write_spec, tmp_path):
    node = tiny["nodes"]["text_tower"]
    node.update(init="pretrained", source=str(tmp_path / "no-such-model"))
    del node["model_type"], node["size"]
    with pytest.raises(EnvironmentProblem) as info:
        compile_spec(graphspec.load(write_spec(tiny)))
    text = info.value.format()
    assert info.value.exit_code == 3
    assert "is neither a local directory nor in the Hugging Face cache" in text
    assert "huggingface-cli download" in text and "set `source: DIR`" in text
