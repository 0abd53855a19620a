"""Hostile or broken spec files, `--set` values, grid and study files: each a located message and exit 2, fast,
in bounded memory, never a traceback."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from graphspec.cli import main
from graphspec.language.parsing import MAX_BYTES, MAX_DEPTH, MAX_SCALAR, MAX_VALUES

REPO = Path(__file__).resolve().parents[2]
BASE = (REPO / "specs" / "quickstart.yaml").read_text()


def bomb(levels: int = 9, width: int = 9) -> str:
    """Anchors of lists of aliases of the previous anchor: a few hundred bytes that expand to width**levels."""
    lines = [f"b0: &b0 [{', '.join(['x'] * width)}]"]
    lines += [f"b{i}: &b{i} [{', '.join([f'*b{i - 1}'] * width)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


CASES = {  # name -> (file bytes, text the message holds)
    "nul_bytes": (b"\x00\x00" + BASE.encode(), "spec.yaml:1:1: not a spec: line 1, column 1 holds U+0000 (NUL)"),
    "utf16_bom": (BASE.encode("utf-16"), "spec.yaml: the file is UTF-16 text"),
    "utf16_no_bom": (BASE.encode("utf-16-le"), "this looks like UTF-16"),
    "latin1": (BASE.replace("quickstart", "caf\u00e9").encode("latin-1"), "not UTF-8 text: byte 0xe9 at line"),
    "escape_char": (BASE.replace("name: quickstart", "name: quick\x1bstart").encode(), "holds U+001B (ESC)"),
    "alias_bomb": ((BASE + bomb()).encode(), f"the document expands to more than {MAX_VALUES:,} values"),
    "deep_nesting": ((BASE + "description: " + "[" * 5000 + "]" * 5000 + "\n").encode(),
                     f"nesting deeper than {MAX_DEPTH} levels"),
    "long_scalar": (BASE.replace("name: quickstart", "name: " + "x" * (MAX_SCALAR + 1)).encode(),
                    f"name: a value of {MAX_SCALAR + 1:,} characters"),
    "huge_int": (BASE.replace("steps: 1000", "steps: " + "9" * 5000).encode(), "train.steps: the number 999"),
    "big_int": (BASE.replace("steps: 1000", "steps: 99999999999999999999").encode(), "is too large (at most 2^63 - 1)"),
    "infinite": (BASE.replace("lr: 5.0e-4", "lr: 1e999").encode(), "train.optimizer.lr: Input should be a finite number"),
    "nan": (BASE.replace("lr: 5.0e-4", "lr: .nan").encode(), "Input should be a finite number"),
    "too_big": ((BASE + "#" + "x" * MAX_BYTES).encode(), f"a spec file is at most {MAX_BYTES:,}"),
    "python_tag": (BASE.replace("name: quickstart", "name: !!python/object/apply:os.system [echo]").encode(),
                   "the tag 'tag:yaml.org,2002:python/object/apply:os.system' is not allowed"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_hostile_spec_files_get_a_located_message_fast(case, workdir, capsys):
    data, expected = CASES[case]
    (workdir / "spec.yaml").write_bytes(data)
    start = time.perf_counter()
    assert main(["validate", "spec.yaml"]) == 2
    seconds = time.perf_counter() - start
    err = capsys.readouterr().err
    assert expected in err, err[:2000]
    assert "Traceback" not in err and err.startswith("error: spec.yaml")
    assert seconds < 1.0, f"{case} took {seconds:.2f} s"


def test_a_json_spec_nested_past_the_limit(workdir, capsys):
    (workdir / "spec.json").write_text("[" * 100_000 + "]" * 100_000)
    assert main(["validate", "spec.json"]) == 2
    assert f"spec.json: not valid JSON: nesting deeper than {MAX_DEPTH} levels" in capsys.readouterr().err


def test_directories_empty_unreadable_and_special_files(workdir, capsys, monkeypatch):
    (workdir / "dir.yaml").mkdir()
    assert main(["validate", "dir.yaml"]) == 2
    assert "dir.yaml: this is a directory, not a spec file" in capsys.readouterr().err
    (workdir / "empty.yaml").write_text("")
    assert main(["validate", "empty.yaml"]) == 2
    assert "empty.yaml: a spec must be a mapping of keys" in capsys.readouterr().err
    assert main(["validate", "/dev/zero"]) == 2
    assert "/dev/zero: not a regular file" in capsys.readouterr().err
    (workdir / "locked.yaml").write_text(BASE)
    real_open = open

    def refuse(path, *a, **k):  # as for a file without read permission (root reads those anyway)
        if str(path).endswith("locked.yaml"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *a, **k)

    monkeypatch.setattr("builtins.open", refuse)
    assert main(["validate", "locked.yaml"]) == 2
    assert "locked.yaml: cannot read the file: permission denied" in capsys.readouterr().err


@pytest.mark.parametrize("value, expected", [
    ("[" + ", ".join(f"&a{i} [" + ", ".join([f"*a{i - 1}" if i else "1"] * 9) + "]" for i in range(9)) + "]",
     "expands to more than"),
    ("a\x01b", "holds U+0001"),
    ("[" * 200 + "]" * 200, "nesting deeper than"),
    ("9" * 400, "is too large"),
    ("!!python/name:os.system", "is not allowed"),
])
def test_hostile_set_values(value, expected, workdir, capsys):
    (workdir / "spec.yaml").write_text(BASE)
    start = time.perf_counter()
    assert main(["validate", "spec.yaml", "--set", f"description={value}"]) == 2
    err = capsys.readouterr().err
    assert "error: --set: bad override 'description=" in err and expected in err, err[:1000]
    assert "Traceback" not in err and time.perf_counter() - start < 1.0


def test_hostile_grid_values_and_grid_files(workdir, capsys):
    (workdir / "spec.yaml").write_text(BASE)
    assert main(["variants", "spec.yaml", "--grid", "train.steps=1,\x00", "-o", "out"]) == 2
    assert "holds U+0000 (NUL)" in capsys.readouterr().err
    (workdir / "grid.yaml").write_bytes(b"base: spec.yaml\ngrid:\n  train.steps: [1, 2]\n" + bomb().encode())
    assert main(["variants", "grid.yaml", "-o", "out"]) == 2
    assert "grid.yaml:" in (err := capsys.readouterr().err) and "expands to more than" in err


def test_hostile_study_files(workdir, capsys):
    (workdir / "study.yaml").write_bytes(b"name: s\nbase: spec.yaml\nstages: {pretrain: {}}\x00\n")
    assert main(["study", "study.yaml", "--plan"]) == 2
    err = capsys.readouterr().err
    assert "study.yaml:" in err and "U+0000" in err and "Traceback" not in err


def test_a_utf8_byte_order_mark_is_fine(workdir, capsys):
    (workdir / "spec.yaml").write_bytes(b"\xef\xbb\xbf" + BASE.replace("steps: 1000", "steps: 1,").encode())
    assert main(["validate", "spec.yaml"]) == 2  # read past the mark: the mistake found is the real one
    assert "train.steps" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["123", "true", "{a: b}", "1.5"])
def test_extends_that_is_no_file_name(value, workdir, capsys):
    """Found by the fuzz test (a mutant with `extends: 123` ended in a TypeError)."""
    (workdir / "spec.yaml").write_text(f"extends: {value}\n" + BASE)
    assert main(["validate", "spec.yaml"]) == 2
    err = capsys.readouterr().err
    assert "spec.yaml:1:1: extends: extends takes a file name or a list of them" in err and "Traceback" not in err
