"""Downstream tasks on the shapes scenes: deterministic, split-clean, balanced, correct, and
not solvable from the text alone.  Checks re-derive the truth from scene.shapes with their
own parsing, not with the generators' rules."""

import re
from collections import Counter, defaultdict

import numpy as np
import pytest

from graphspec.runtime.data.scenes import COLORS, ShapesConfig, describes, render, shape_box
from graphspec.runtime.tasks.nlvr2 import generate as nlvr2
from graphspec.runtime.tasks.refexp import generate as refexp
from graphspec.runtime.tasks.retrieval import generate as retrieval
from graphspec.runtime.tasks.snli_ve import generate as snli_ve
from graphspec.runtime.tasks.vqa import answer_vocabulary
from graphspec.runtime.tasks.vqa import generate as vqa

CFG = ShapesConfig()
BIG = ShapesConfig(max_shapes=4)
TASKS = (nlvr2, snli_ve, vqa, refexp, retrieval)
POSITION = {"top left": 0, "top right": 1, "bottom left": 2, "bottom right": 3}
NUMBER = {"zero": 0, "one": 1, "two": 2, "three": 3, "four": 4}


def scenes_of(example):
    return [example.scene_0, example.scene_1] if hasattr(example, "scene_0") else [example.scene]


def count(scene, noun):
    """Shapes a noun ('red circle', 'red shape', 'circle', plurals too) picks out."""
    words = noun.removesuffix("s").split()
    color = words[0] if words[0] in COLORS else None
    kind = None if words[-1] == "shape" else words[-1]
    return sum(color in (None, s.color) and kind in (None, s.kind) for s in scene.shapes)


def cell(scene, position):
    return next((s for s in scene.shapes if s.cell == POSITION[position]), None)


@pytest.mark.parametrize("task", TASKS, ids=lambda t: t.__name__)
def test_deterministic_seeded_and_one_scene_per_example(task):
    first = task(CFG, "train", 80)
    assert first == task(CFG, "train", 80) and len(first) == 80
    assert task(CFG, "train", 80, seed=1) != first
    keys = [s.key() for e in first for s in scenes_of(e)]
    assert len(set(keys)) == len(keys)
    assert task(CFG, "train", 0) == []


@pytest.mark.parametrize("task", TASKS, ids=lambda t: t.__name__)
def test_splits_never_share_a_scene(task):
    keys = {split: {s.key() for e in task(BIG, split, 60) for s in scenes_of(e)} for split in ("train", "val", "test")}
    assert not keys["train"] & keys["val"] and not keys["train"] & keys["test"] and not keys["val"] & keys["test"]


def test_too_many_examples_or_bad_arguments_say_why():
    with pytest.raises(ValueError, match=r"nlvr2: the val split cannot supply 200 distinct examples: it ran out "
                                         r"after \d+, because its \d+ scenes are used up"):
        nlvr2(CFG, "val", 200)
    with pytest.raises(ValueError, match="refexp needs scenes with two or more shapes"):
        refexp(ShapesConfig(max_shapes=1), "train", 5)
    with pytest.raises(ValueError, match="split must be one of"):
        vqa(CFG, "dev", 5)
    with pytest.raises(ValueError, match="n must be at least 0"):
        retrieval(CFG, "train", -1)


def test_small_configs_still_work():
    small = ShapesConfig(colors=("red", "blue"), shapes=("circle", "square"))
    full = ShapesConfig(min_shapes=4, max_shapes=4)
    red = ShapesConfig(colors=("red",))  # some (label, template) pairs cannot happen: others stand in
    for task in TASKS:
        assert len(task(small, "train", 30)) == 30
        assert len(task(full, "val", 30)) == 30
        assert len(task(red, "train", 20)) == 20
    assert Counter(e.label for e in snli_ve(red, "train", 21)) == {0: 7, 1: 7, 2: 7}


# --- nlvr2 -----------------------------------------------------------------------------------

NLVR2 = {
    "both": (r"both images contain an? (.+)", lambda a, b: a > 0 and b > 0),
    "exactly one": (r"exactly one image contains an? (.+)", lambda a, b: (a > 0) != (b > 0)),
    "neither": (r"neither image contains an? (.+)", lambda a, b: a == 0 and b == 0),
    "more": (r"the left image has more (.+) than the right image", lambda a, b: a > b),
    "fewer": (r"the left image has fewer (.+) than the right image", lambda a, b: a < b),
    "same": (r"both images have the same number of (.+)", lambda a, b: a == b),
}


def nlvr2_truth(example):
    for name, (pattern, truth) in NLVR2.items():
        match = re.fullmatch(pattern, example.statement)
        if match:
            noun = match.group(1)
            return name, truth(count(example.scene_0, noun), count(example.scene_1, noun))
    raise AssertionError(f"no template writes {example.statement!r}")


def test_nlvr2_statements_are_true_or_false_as_labelled_and_balanced():
    examples = nlvr2(BIG, "train", 601)
    per_template = defaultdict(Counter)
    for example in examples:
        template, truth = nlvr2_truth(example)
        assert truth == example.label, example
        per_template[template][example.label] += 1
    labels = Counter(e.label for e in examples)
    assert abs(labels[True] - labels[False]) <= 1
    # text alone is at chance: every template is as often true as false
    assert set(per_template) == set(NLVR2)
    for template, counts in per_template.items():
        assert abs(counts[True] - counts[False]) <= 2, (template, counts)
    # and so are the filled-in words (colours, shapes, numbers of the comparisons)
    assert_words_at_chance([(e.statement, e.label) for e in examples], 2)


def test_nlvr2_false_pairs_vary_so_one_image_never_decides():
    examples = [e for e in nlvr2(BIG, "train", 600) if e.statement.startswith("both images contain")]
    ways = Counter((count(e.scene_0, e.statement.split(maxsplit=4)[-1]) > 0,
                    count(e.scene_1, e.statement.split(maxsplit=4)[-1]) > 0) for e in examples if not e.label)
    assert set(ways) == {(False, False), (False, True), (True, False)}


def assert_words_at_chance(pairs, classes, min_count=40, slack=0.15):
    """Each word frequent enough occurs with every label in about equal proportion."""
    by_word = defaultdict(Counter)
    for text, label in pairs:
        for word in set(text.split()):
            by_word[word][label] += 1
    checked = 0
    for word, counts in by_word.items():
        total = sum(counts.values())
        if total >= min_count:
            checked += 1
            assert len(counts) == classes and max(counts.values()) / total < 1 / classes + slack, (word, counts)
    assert checked > 10


# --- snli_ve ---------------------------------------------------------------------------------

def snli_ve_label(example):
    """0 contradiction, 1 neutral, 2 entailment, derived from the shapes (the invisible part is unknown)."""
    scene, text = example.scene, example.hypothesis
    match = re.fullmatch(r"there is an? (.+) or an? (?:wooden|metal|glass|heavy|hollow|soft) (.+)", text)
    if match:
        first, second = (count(scene, noun) for noun in match.groups())
        return "exists or", 2 if first else 1 if second else 0
    invisible = "made of wood|made of metal|made of glass|heavy|hollow|soft"
    if match := re.fullmatch(rf"the (.+) shape is a (\w+) that is (\w+) or (?:{invisible})", text):
        (position, kind, color), template, needed, shown = match.groups(), "kind then color", "kind", "color"
    else:
        match = re.fullmatch(rf"the (.+) shape is (\w+) and is a (\w+) or (?:{invisible})", text)
        assert match, f"no template writes {text!r}"
        (position, color, kind), template, needed, shown = match.groups(), "color then kind", "color", "kind"
    shape, wanted = cell(scene, position), {"kind": kind, "color": color}
    if shape is None or getattr(shape, needed) != wanted[needed]:
        return template, 0
    return template, 2 if getattr(shape, shown) == wanted[shown] else 1


def test_snli_ve_labels_follow_the_image_and_are_balanced():
    examples = snli_ve(BIG, "train", 900)
    per_template = defaultdict(Counter)
    for example in examples:
        template, label = snli_ve_label(example)
        assert label == example.label, example
        per_template[template][label] += 1
    labels = Counter(e.label for e in examples)
    assert set(labels) == {0, 1, 2} and max(labels.values()) - min(labels.values()) <= 1
    # text alone is at chance: every template takes every label equally often
    assert len(per_template) == 3
    for template, counts in per_template.items():
        assert set(counts) == {0, 1, 2} and max(counts.values()) - min(counts.values()) <= 2, (template, counts)
    assert_words_at_chance([(e.hypothesis, e.label) for e in examples], 3)


def test_snli_ve_same_text_takes_every_label():
    by_text = defaultdict(set)
    for example in snli_ve(CFG, "train", 1500):
        by_text[re.sub(r"wooden|metal|glass|heavy|hollow|soft|made of \w+", "P", example.hypothesis)].add(example.label)
    assert sum(labels == {0, 1, 2} for labels in by_text.values()) > 20


# --- vqa -------------------------------------------------------------------------------------

def vqa_answers(example):
    scene, question = example.scene, example.question
    if match := re.fullmatch(r"what colour is the (.+) shape\?", question):
        return "colour", {cell(scene, match.group(1)).color: 1.0}
    if match := re.fullmatch(r"what shape is the (\w+) one\?", question):
        kinds = {s.kind for s in scene.shapes if s.color == match.group(1)}
        return "shape", {k: 1 / len(kinds) for k in kinds}
    if match := re.fullmatch(r"how many (.+) are there\?", question):
        return "count", {[w for w, n in NUMBER.items() if n == count(scene, match.group(1))][0]: 1.0}
    match = re.fullmatch(r"is there an? (.+)\?", question)
    assert match, question
    return "exists", {"yes" if count(scene, match.group(1)) else "no": 1.0}


def test_vqa_answers_are_correct_balanced_and_in_the_vocabulary():
    examples = vqa(BIG, "train", 800)
    vocabulary = set(answer_vocabulary(BIG))
    assert vocabulary == {*COLORS, "circle", "square", "triangle", "yes", "no", "zero", "one", "two", "three"}
    assert answer_vocabulary(BIG) == sorted(vocabulary)
    types, answers = Counter(), defaultdict(Counter)
    for example in examples:
        kind, expected = vqa_answers(example)
        assert example.answers == pytest.approx(expected), example
        assert set(example.answers) <= vocabulary and all(0 < v <= 1 for v in example.answers.values())
        types[kind] += 1
        answers[kind][max(example.answers, key=example.answers.get)] += 1
    assert max(types.values()) - min(types.values()) <= 1
    assert abs(answers["exists"]["yes"] - answers["exists"]["no"]) <= 1
    assert set(answers["count"]) == {"zero", "one", "two", "three"}
    assert max(answers["count"].values()) - min(answers["count"].values()) <= 1
    assert len(answers["colour"]) == len(COLORS)
    full = sum(max(e.answers.values()) == 1.0 for e in examples)
    assert len(examples) * 0.9 < full < len(examples)  # a few ambiguous questions give partial credit
    assert "four" not in answer_vocabulary(CFG) and "three" not in answer_vocabulary(CFG)


# --- refexp ----------------------------------------------------------------------------------

def resolve(scene, expression):
    """Indices of the shapes an expression can mean, parsed independently of the generator."""
    shapes = scene.shapes
    is_a = lambda shape, noun: count(type(scene)((shape,)), noun) == 1  # noqa: E731
    if match := re.fullmatch(r"the (.+?) (left of|right of|above|below) the (\w+ \w+)", expression):
        noun, relation, anchor = match.groups()
        anchors = [a for a in shapes if is_a(a, anchor)]
        if len(anchors) != 1:
            return []
        a = anchors[0]
        test = {"left of": lambda s: s.cell % 2 < a.cell % 2, "right of": lambda s: s.cell % 2 > a.cell % 2,
                "above": lambda s: s.cell // 2 < a.cell // 2, "below": lambda s: s.cell // 2 > a.cell // 2}
        return [i for i, s in enumerate(shapes) if s != a and is_a(s, noun) and test[relation](s)]
    if match := re.fullmatch(r"the (top left|top right|bottom left|bottom right) shape", expression):
        return [i for i, s in enumerate(shapes) if s.cell == POSITION[match.group(1)]]
    return [i for i, s in enumerate(shapes) if is_a(s, expression.removeprefix("the "))]


def test_refexp_expressions_pick_out_exactly_the_target_and_boxes_cover_its_pixels():
    examples = refexp(BIG, "train", 240) + refexp(CFG, "val", 60)
    families = Counter()
    for example in examples:
        scene = example.scene
        assert len(scene.shapes) >= 2 and len(example.boxes) == len(scene.shapes)
        assert resolve(scene, example.expression) == [example.target], example.expression
        relation = re.search(r" (left of|right of|above|below) the ", example.expression)
        position = re.fullmatch(r"the (top|bottom) (left|right) shape", example.expression)
        families[relation.group(1) if relation else "position" if position else "name"] += 1
        image = render(scene)
        side = image.shape[0]
        for shape, box in zip(scene.shapes, example.boxes):
            assert box == shape_box(shape, scene) and 0 <= box[0] < box[2] <= 1 and 0 <= box[1] < box[3] <= 1
            quadrant = np.zeros(image.shape[:2], bool)  # shapes stay in their cell, so this is all of it
            quadrant[(shape.cell // 2) * side // 2:(shape.cell // 2 + 1) * side // 2,
                     (shape.cell % 2) * side // 2:(shape.cell % 2 + 1) * side // 2] = True
            ys, xs = np.nonzero(np.all(image == COLORS[shape.color], axis=-1) & quadrant)
            assert len(xs) > 10
            x0, y0, x1, y1 = (v * side for v in box)
            assert x0 - 1 <= xs.min() and xs.max() + 1 <= x1 + 1 and y0 - 1 <= ys.min() and ys.max() + 1 <= y1 + 1
    assert set(families) == {"left of", "right of", "above", "below", "position", "name"}, families
    assert {"the", "shape", "circle", "red"} <= {w for e in examples for w in e.expression.split()[:2]}
    targets = Counter(e.scene.shapes[e.target].cell for e in examples[:240])
    assert max(targets.values()) - min(targets.values()) <= 1


# --- retrieval -------------------------------------------------------------------------------

def test_retrieval_captions_are_distinct_and_true_of_distinct_scenes():
    examples = retrieval(CFG, "test", 120) + retrieval(BIG, "val", 60)
    for example in examples:
        assert len(example.captions) == 3 and len(set(example.captions)) == 3
        assert all(describes(example.scene, text) for text in example.captions), example
    assert len({e.scene.key() for e in examples}) == len(examples)
    assert [e.captions for e in retrieval(CFG, "test", 10)] == [e.captions for e in examples[:10]]
