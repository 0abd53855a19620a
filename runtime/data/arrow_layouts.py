"""The layouts of the ViLT/METER/Renaissance Arrow tables: families, splits, columns and their types.

See `graphspec.runtime.data.arrow` for the tables each family names and the scripts that write them. The
family names (and their short aliases) are the task table's (graphspec.language.schema.tasks), which says which task
reads each family.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

from graphspec.language.errors import EnvironmentProblem, Issue, SpecError, suggest
from graphspec.language.schema.tasks import FAMILY_ALIASES, resolve_family

from .arrow_rows import captions_rows, nlvr2_rows, refcoco_rows, snli_rows, vqa_rows


def import_pyarrow():
    try:
        import pyarrow
        import pyarrow.ipc  # noqa: F401
    except ImportError:
        raise EnvironmentProblem([Issue((), "reading Arrow tables needs the pyarrow package, which is not installed",
                                        "pip install pyarrow")], title="a package is missing") from None
    return pyarrow


def arrow_kind(kind: str) -> Callable:
    pa = import_pyarrow()

    t = pa.types
    is_list = lambda x: t.is_list(x) or t.is_large_list(x) or t.is_fixed_size_list(x)  # noqa: E731
    is_view = getattr(t, "is_string_view", lambda _: False)
    is_str = lambda x: t.is_string(x) or t.is_large_string(x) or is_view(x)  # noqa: E731
    is_bin = lambda x: t.is_binary(x) or t.is_large_binary(x) or t.is_fixed_size_binary(x)  # noqa: E731
    is_int = t.is_integer
    is_num = lambda x: t.is_integer(x) or t.is_floating(x)  # noqa: E731
    list_of = lambda inner, empty_ok=False: (  # noqa: E731
        lambda x: is_list(x) and (inner(x.value_type) or (empty_ok and t.is_null(x.value_type))))
    checks = {
        "image": is_bin,
        "str": is_str,
        "id": lambda x: is_str(x) or is_int(x),
        "int": is_int,
        "str_list": list_of(is_str),
        "int_list": list_of(is_int),
        "num_list": list_of(is_num),
        "str_pair_list": list_of(list_of(is_str)),
        "box_list": list_of(list_of(is_num)),
        "int_or_int_list": lambda x: is_int(x) or list_of(is_int)(x),
        # VQA answers: empty lists on test splits, which pandas/Arrow type as list<null>
        "str_list_list?": list_of(list_of(is_str), empty_ok=True),
        "int_list_list?": list_of(list_of(is_int), empty_ok=True),
        "num_list_list?": list_of(list_of(is_num), empty_ok=True),
        "id_list?": list_of(lambda x: is_str(x) or is_int(x), empty_ok=True),
    }
    return checks[kind]


KIND_TEXT = {
    "image": "binary (encoded image bytes)",
    "str": "string",
    "id": "string or integer",
    "int": "integer",
    "str_list": "list<string>",
    "int_list": "list<integer>",
    "num_list": "list<number>",
    "str_pair_list": "list<list<string>> ([premise, hypothesis] pairs)",
    "box_list": "list<list<number>> (boxes [x, y, w, h])",
    "int_or_int_list": "integer (or list<integer>, one per sentence)",
    "str_list_list?": "list<list<string>>",
    "int_list_list?": "list<list<integer>>",
    "num_list_list?": "list<list<number>>",
    "id_list?": "list<integer>",
}


@dataclass(frozen=True)
class Column:
    name: str
    kind: str  # a key of KIND_TEXT
    required: bool = True


@dataclass(frozen=True)
class TableSpec:
    """One family of tables: the files of each split, the columns, and the script that writes them."""

    family: str
    expand: Callable  # (row, context) -> records: this layout's row expander (graphspec.runtime.data.arrow_rows)
    splits: Mapping[str, tuple]  # split -> table names; "{N}" marks numbered shards (sbu_0, sbu_1, ...)
    columns: tuple
    image_columns: tuple
    writer: str

    def column(self, name: str) -> Column:
        return next(c for c in self.columns if c.name == name)


_CAPTION_COLUMNS = (Column("image", "image"), Column("caption", "str_list"),
                    Column("image_id", "id", required=False), Column("split", "str", required=False))

FAMILIES: dict[str, TableSpec] = {s.family: s for s in (
    TableSpec("coco_caption_karpathy", captions_rows,
              {"train": ("coco_caption_karpathy_train", "coco_caption_karpathy_restval"),
               "val": ("coco_caption_karpathy_val",), "test": ("coco_caption_karpathy_test",)},
              _CAPTION_COLUMNS, ("image",), "ViLT vilt/utils/write_coco_karpathy.py"),
    TableSpec("f30k_caption_karpathy", captions_rows,
              {"train": ("f30k_caption_karpathy_train", "f30k_caption_karpathy_val"),
               "val": ("f30k_caption_karpathy_test",), "test": ("f30k_caption_karpathy_test",)},
              _CAPTION_COLUMNS, ("image",), "ViLT vilt/utils/write_f30k_karpathy.py"),
    TableSpec("conceptual_caption", captions_rows,
              {"train": ("conceptual_caption_train_{N}",), "val": ("conceptual_caption_val_{N}",)},
              _CAPTION_COLUMNS, ("image",), "ViLT vilt/utils/write_conceptual_caption.py"),
    TableSpec("sbu", captions_rows, {"train": ("sbu_{N}",)},
              _CAPTION_COLUMNS, ("image",), "ViLT vilt/utils/write_sbu.py"),
    TableSpec("vg", captions_rows, {"train": ("vg",)},
              (Column("image", "image"), Column("caption", "str_list"),
               Column("x", "num_list", required=False), Column("y", "num_list", required=False),
               Column("width", "num_list", required=False), Column("height", "num_list", required=False),
               Column("image_id", "id", required=False)),
              ("image",), "ViLT vilt/utils/write_vg.py"),
    TableSpec("nlvr2", nlvr2_rows,
              {"train": ("nlvr2_train",), "val": ("nlvr2_dev", "nlvr2_test1"), "test": ("nlvr2_dev", "nlvr2_test1")},
              (Column("image_0", "image"), Column("image_1", "image"), Column("questions", "str_list"),
               Column("answers", "str_list"), Column("identifier", "str", required=False)),
              ("image_0", "image_1"), "ViLT vilt/utils/write_nlvr2.py"),
    TableSpec("vqav2", vqa_rows,
              {"train": ("vqav2_train", "vqav2_trainable_val"), "val": ("vqav2_rest_val",),
               "test": ("vqav2_test",), "test-dev": ("vqav2_test-dev",)},
              (Column("image", "image"), Column("questions", "str_list"),
               Column("answers", "str_list_list?"), Column("answer_labels", "int_list_list?"),
               Column("answer_scores", "num_list_list?"), Column("question_id", "id_list?", required=False),
               Column("image_id", "id", required=False), Column("split", "str", required=False)),
              ("image",), "ViLT vilt/utils/write_vqa.py"),
    TableSpec("snli", snli_rows,
              {"train": ("snli_train",), "val": ("snli_dev", "snli_test"), "test": ("snli_dev", "snli_test")},
              (Column("image", "image"), Column("sentences", "str_pair_list"), Column("labels", "int_list")),
              ("image",), "METER meter/utils/write_snli.py"),
    TableSpec("refcoco", refcoco_rows,
              {"train": ("refcoco_unc_train",), "val": ("refcoco_unc_val",), "test": ("refcoco_unc_test",)},
              (Column("image", "image"), Column("sentences", "str_list"), Column("bboxes", "box_list"),
               Column("labels", "int_or_int_list")),
              ("image",), "Renaissance renaissance/utils/write_refcoco.py"),
)}

def family_spec(family: str) -> TableSpec:
    name = resolve_family(family)
    if name not in FAMILIES:
        raise SpecError([Issue((), f"unknown Arrow table family '{family}'",
                               suggest(family, list(FAMILIES) + list(FAMILY_ALIASES)))],
                        title="the data block names an unknown table family")
    return FAMILIES[name]


__all__ = ["KIND_TEXT", "Column", "TableSpec", "FAMILIES", "family_spec"]
