"""What each task is, in one table, without torch: the head and objectives it trains, the inputs it feeds, the
Arrow table families and JSONL fields it reads, its headline metric.

The schema's task names, the compile-time rules that tie a task to a spec's heads, objectives, inputs and data
(graphspec.language.checks) and the runtime's task registry (graphspec.runtime.tasks, one module per task) all read this
table, so `graphspec validate` refuses every mismatch that `graphspec run` would trip over. Adding a task is a
row here and a module there (plus a reader adapter for a new file layout).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated

from .base import OpenLiteral


@dataclass(frozen=True)
class TaskFacts:
    name: str
    description: str
    head: str | None  # the head kind a downstream task trains; None: captions pretraining (mlm, itm, itc)
    objectives: tuple[str, ...]  # the objective kinds it trains
    inputs: tuple[str, ...]  # input modalities it feeds, one input each
    families: tuple[str, ...] = ()  # Arrow table families it reads, the default first; () reads none
    fields: dict[str, str] = field(default_factory=dict)  # JSONL manifest fields -> what each holds; {}: none
    optional: tuple[str, ...] = ("id",)  # JSONL fields it also reads when present
    metric: str = ""  # the validation metric a study compares first
    streams: bool = False  # reads webdataset: shards as a stream


CAPTION_FAMILIES = ("coco_caption_karpathy", "f30k_caption_karpathy", "vg", "sbu", "conceptual_caption")

TASKS: dict[str, TaskFacts] = {t.name: t for t in (
    TaskFacts("captions", "pretraining on captioned images: MLM, ITM and ITC", None, ("mlm", "itm", "itc"),
              ("text", "image"), CAPTION_FAMILIES,
              {"image": "image path", "text": "caption, or list of captions"}, metric="itm_acc", streams=True),
    TaskFacts("nlvr2", "two images, a statement, true/false", "pair_classify", ("pair_classify",),
              ("text", "image"), ("nlvr2",),
              {"images": "[left image path, right image path]", "text": "statement", "label": "true or false"},
              metric="nlvr2_acc"),
    TaskFacts("snli_ve", "an image, a hypothesis, entailment/neutral/contradiction", "classify", ("classify",),
              ("text", "image"), ("snli",),
              {"image": "image path", "text": "hypothesis", "label": "0/1/2 or contradiction/neutral/entailment"},
              ("id", "premise"), metric="snli_ve_acc"),
    TaskFacts("vqa", "a question, soft answer scores", "vqa", ("vqa",), ("text", "image"), ("vqav2",),
              {"image": "image path", "text": "question", "answers": "{answer: score in [0, 1]}"},
              metric="vqa_score"),
    TaskFacts("refexp", "an expression, candidate boxes, the target", "ref", ("ref",), ("text", "image", "boxes"),
              ("refcoco",), {"image": "image path", "text": "referring expression",
                             "boxes": "[[x0, y0, x1, y1], ...]", "target": "index of the referred box"},
              metric="refexp_acc"),
    TaskFacts("retrieval", "scenes with three captions each; recall@1/5/10 both ways", "itc", ("itc",),
              ("text", "image"), metric="retrieval_t2i_r1"),
)}

if TYPE_CHECKING:
    TaskName = str
else:
    TaskName = Annotated[str, OpenLiteral(lambda: tuple(TASKS))]  # plugins add tasks (`add_task`)

# Short names of Arrow table families, and each task's name for its own family.
FAMILY_ALIASES = {"coco": "coco_caption_karpathy", "f30k": "f30k_caption_karpathy", "gcc": "conceptual_caption",
                  **{t.name: t.families[0] for t in TASKS.values() if t.families and t.name != t.families[0]}}
FAMILY_TASK = {family: t.name for t in TASKS.values() for family in t.families}


def resolve_family(name: str) -> str:
    """A family's full name, from itself or an alias ('coco', 'vqa'); unknown names come back unchanged."""
    return FAMILY_ALIASES.get(name, name)


@dataclass(frozen=True)
class Roles:
    """Which spec names play which part in a spec's task (`Spec.roles()`, once the rules have passed: one input
    per modality it feeds, and for a downstream task one head and one objective of its kind)."""

    task: TaskFacts
    text: str
    image: str
    boxes: str | None = None
    head: str | None = None  # downstream: the head it trains
    objective: str | None = None  # downstream: the objective that trains it
    mlm: str | None = None  # captions: the objectives by kind
    itm: str | None = None
    itc: str | None = None

