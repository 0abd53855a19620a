"""The `graphspec` command: JSON Schema out, located errors with exit code 2 and never a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import graphspec
from graphspec.cli import main

REPO = Path(__file__).resolve().parents[2]


def test_schema_prints_json_schema_with_every_node_kind(capsys):
    assert main(["schema"]) == 0
    out, err = capsys.readouterr()
    schema = json.loads(out)
    kinds = schema["properties"]["nodes"]["additionalProperties"]["discriminator"]["mapping"]
    assert {"hf_text", "hf_vision", "timm_vision", "projection", "co_attention", "cls_pool"} <= set(kinds)
    assert schema["additionalProperties"] is False  # extra="forbid" reaches editors too
    assert err == ""


def _schema_validator(capsys):
    import jsonschema  # the test extra's: never skipped
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def _quickstart() -> dict:
    import yaml

    return yaml.safe_load((REPO / "specs" / "quickstart.yaml").read_text())


def test_schema_is_a_valid_json_schema_that_editors_can_check_specs_with(capsys):
    validator = _schema_validator(capsys)
    data = _quickstart()
    for name, objective in data["objectives"].items():
        objective["kind"] = name  # written out; the implicit form is tested below
    assert [e.message for e in validator.iter_errors(data)] == []
    data["train"]["batch_sise"] = 8
    data["nodes"]["fusion"]["kind"] = "co_atention"
    assert len(list(validator.iter_errors(data))) == 2


def test_schema_accepts_objectives_whose_kind_is_their_name(capsys):
    validator = _schema_validator(capsys)
    assert [e.message for e in validator.iter_errors(_quickstart())] == []


def test_schema_out_writes_the_file(workdir, capsys):
    assert main(["schema", "-o", "schema.json"]) == 0
    assert capsys.readouterr().out == ""
    schema = json.loads((workdir / "schema.json").read_text())
    assert schema["$defs"]["CoAttention"]["properties"]["kind"]["const"] == "co_attention"


def test_a_broken_spec_exits_2_with_located_errors_and_no_traceback(write, spec_text, line_of, capsys):
    text = spec_text.replace("  batch_size: 8", "  batch_sise: 8").replace("kind: co_attention", "kind: co_atention")
    path = write(text)
    assert main(["validate", path]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert f"error: spec.yaml:{line_of(text, 'batch_sise')}:3: train.batch_sise: unknown field 'batch_sise'" in err
    assert "  fix: did you mean 'batch_size'?" in err
    assert f"error: spec.yaml:{line_of(text, 'co_atention')}:5: nodes.fusion.kind: unknown kind 'co_atention'" in err
    assert "  fix: did you mean 'co_attention'?" in err
    assert err.rstrip().endswith("2 errors: in spec.yaml")
    assert "Traceback" not in err


def test_a_misspelt_set_is_located_at_the_set(write, spec_text, capsys):
    assert main(["compile", write(spec_text), "--set", "train.optimzer.lr=3e-4"]) == 2
    err = capsys.readouterr().err
    assert "error: --set train.optimzer.lr=3e-4: train.optimzer: unknown field 'optimzer'" in err
    assert "fix: did you mean 'optimizer'?" in err


def test_a_yaml_syntax_error_exits_2_with_its_line(write, capsys):
    assert main(["validate", write("name: a\ninputs: [1, 2\n")]) == 2
    err = capsys.readouterr().err
    assert "error: spec.yaml:3:1: not valid YAML:" in err
    assert "Traceback" not in err


def test_a_missing_spec_file_exits_2(workdir, capsys):
    assert main(["validate", "nope.yaml"]) == 2
    assert "error: nope.yaml: no such file" in capsys.readouterr().err


def test_validate_prints_the_warnings(write, spec_text, capsys):
    text = spec_text.replace("\nheads:", "\n  spare: {kind: projection, input: pooled, width: 8}\nheads:", 1)
    assert main(["validate", write(text)]) == 0
    out, err = capsys.readouterr()
    assert "warning: spec.yaml:" in err and "nodes.spare: 'spare' feeds no head: it would be computed for nothing" in err
    assert out.startswith("spec.yaml: ok (") and "trainable" in out
    assert graphspec.validate(graphspec.load("spec.yaml"))[0].message == \
        "'spare' feeds no head: it would be computed for nothing"


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "graphspec", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300)


def test_python_m_graphspec_on_a_broken_spec_exits_2_without_traceback(tmp_path, spec_text):
    broken = tmp_path / "broken.yaml"
    broken.write_text(spec_text.replace("  steps: 20", "  steps: 20\n  stepz: 3"))
    result = _run("validate", str(broken))
    assert result.returncode == 2, result.stderr
    assert f"error: {broken}:" in result.stderr and "train.stepz: unknown field 'stepz'" in result.stderr
    assert "fix: did you mean 'steps'?" in result.stderr
    assert "Traceback" not in result.stderr


def test_python_m_graphspec_validates_the_quickstart():
    result = _run("validate", "specs/quickstart.yaml")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("specs/quickstart.yaml: ok (")
    assert "Traceback" not in result.stderr


def test_version_prints_the_package_version():
    """From the console script: the version the installed metadata carries is the one the code says."""
    from importlib.metadata import version

    from graphspec import __version__

    command = Path(sys.executable).parent / "graphspec"  # the console script pip installed beside python
    result = subprocess.run([str(command), "--version"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout == f"graphspec {__version__}\n", result
    assert version("graphspec-vl") == __version__
