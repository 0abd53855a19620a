import random

import numpy as np
import pytest

from graphspec.runtime.data.scenes import (
    COLORS,
    SHAPES,
    Scene,
    Shape,
    ShapesConfig,
    caption,
    describes,
    render,
    scenes,
    tokens,
    vocabulary,
)

CFG = ShapesConfig()
BIG = ShapesConfig(max_shapes=4)


def test_default_config_is_valid_and_counts_its_scenes():
    assert CFG.problems() == []
    assert CFG.capacity() == 4 * 21 + 6 * 21**2
    assert BIG.capacity() == 4 * 21 + 6 * 21**2 + 4 * 21**3 + 21**4


def test_scenes_are_deterministic_and_prefixes():
    first = scenes(CFG, "train", 300)
    again = scenes(CFG, "train", 300)
    assert first == again
    assert [s.shapes[0].size for s in first] == [s.shapes[0].size for s in again]
    assert scenes(CFG, "train", 100) == first[:100]
    assert [s.shapes[0].dx for s in scenes(CFG, "train", 100)] == [s.shapes[0].dx for s in first[:100]]
    assert scenes(ShapesConfig(seed=1), "train", 300) != first
    rng_a, rng_b = random.Random(3), random.Random(3)
    assert [caption(s, rng_a) for s in first] == [caption(s, rng_b) for s in first]
    assert np.array_equal(render(first[0]), render(again[0]))


def test_splits_are_disjoint_and_scenes_distinct():
    keys = {split: [s.key() for s in scenes(BIG, split, n)]
            for split, n in (("train", 3000), ("val", 400), ("test", 400))}
    for split, split_keys in keys.items():
        assert len(set(split_keys)) == len(split_keys), split
    assert not set(keys["train"]) & set(keys["val"])
    assert not set(keys["train"]) & set(keys["test"])
    assert not set(keys["val"]) & set(keys["test"])


def test_key_ignores_geometry_but_not_content():
    a = Scene((Shape("circle", "red", 0, 0.2, 0.5, -0.5),))
    b = Scene((Shape("circle", "red", 0, 0.3, -1.0, 1.0),))
    assert a.key() == b.key() and a == b
    assert a.key() != Scene((Shape("circle", "red", 1),)).key()
    assert a.key() != Scene((Shape("square", "red", 0),)).key()
    with pytest.raises(ValueError, match="distinct cells"):
        Scene((Shape("circle", "red", 0), Shape("square", "blue", 0)))


def test_render_shape_dtype_and_content():
    batch = scenes(CFG, "val", 20)
    images = [render(s) for s in batch]
    assert all(im.shape == (64, 64, 3) and im.dtype == np.uint8 for im in images)
    assert render(batch[0], 32).shape == (32, 32, 3)
    assert len({im.tobytes() for im in images}) == len(images)


@pytest.mark.parametrize("kind", SHAPES)
def test_red_pixels_appear_only_in_the_shapes_cell(kind):
    image = render(Scene((Shape(kind, "red", 3, 0.3, 1.0, -1.0),)))
    red = np.all(image == COLORS["red"], axis=-1)
    assert red[32:, 32:].sum() > 20
    assert red.sum() == red[32:, 32:].sum()


def test_captions_are_true_and_use_the_vocabulary():
    rng = random.Random(0)
    vocab = set(vocabulary(BIG))
    for scene in scenes(BIG, "train", 400) + scenes(CFG, "test", 100):
        for _ in range(3):
            text = caption(scene, rng)
            assert text == text.lower()
            assert describes(scene, text), text
            assert set(tokens(text)) <= vocab, text


def test_captions_use_varied_templates():
    rng = random.Random(1)
    texts = [caption(s, rng) for s in scenes(CFG, "train", 200)]
    assert any(t.startswith("there is ") for t in texts)
    assert any(t.startswith("the ") and " is " in t for t in texts)
    assert any(t.startswith("two shapes: ") for t in texts)
    assert any(" left of " in t or " right of " in t for t in texts)
    assert any(" above " in t or " below " in t for t in texts)


def test_describes_rejects_false_captions():
    # red circle top-left, blue square bottom-right
    scene = Scene((Shape("circle", "red", 0), Shape("square", "blue", 3)))
    assert describes(scene, "a red circle left of a blue square")
    assert describes(scene, "the blue square is below the red circle")
    assert describes(scene, "two shapes: a blue square and a red circle")
    assert describes(scene, "there is a blue square")
    assert not describes(scene, "a green circle")
    assert not describes(scene, "there is a red triangle")
    assert not describes(scene, "a red circle right of a blue square")
    assert not describes(scene, "the red circle is below the blue square")
    assert not describes(scene, "one shape: a red circle")
    assert not describes(scene, "two shapes: a red circle and a green square")
    assert not describes(scene, "an orange circle")
    with pytest.raises(ValueError):
        describes(scene, "a pink circle")
    with pytest.raises(ValueError):
        describes(scene, "two shapes: a red circle")


def test_describes_relation_needs_two_distinct_shapes():
    scene = Scene((Shape("circle", "red", 0), Shape("circle", "red", 1)))
    assert describes(scene, "a red circle left of a red circle")
    assert not describes(scene, "a red circle above a red circle")
    assert not describes(scene, "the red circle is left of the red circle")


def test_negatives_from_other_scenes_are_mostly_false():
    rng = random.Random(2)
    batch = scenes(CFG, "train", 200)
    false = sum(not describes(scene, caption(other, rng)) for scene, other in zip(batch, batch[1:]))
    assert false > 150


def test_validate_messages():
    bad = ShapesConfig(min_shapes=3, max_shapes=9, colors=("red", "pink"), shapes=(),
                       image_size=8, min_size=0.0, max_size=0.7)
    text = "\n".join(bad.problems())
    assert "max_shapes (9) is more than the 4 non-overlapping positions" in text
    assert "colors: unknown colour 'pink' (known: red, green" in text
    assert "shapes: at least one shape is needed" in text
    assert "image_size (8) is less than 16" in text
    assert "min_size (0.0) must be in (0, 0.5]" in text
    assert "max_size (0.7) must be in (0, 0.5]" in text
    assert "min_shapes (3) is more than max_shapes (2)" in "\n".join(ShapesConfig(min_shapes=3).problems())
    with pytest.raises(ValueError, match="invalid ShapesConfig: .*pink"):
        scenes(bad, "train", 1)


def test_asking_for_too_many_scenes_names_the_numbers():
    small = ShapesConfig(max_shapes=1, colors=("red", "blue"), shapes=("circle",))
    assert small.capacity() == 8
    with pytest.raises(ValueError, match=r"asked for 9 train scenes .* only has 8 distinct scenes"):
        scenes(small, "train", 9)
    train = len(scenes(CFG, "train", 2000))
    with pytest.raises(ValueError, match=r"asked for 2700 train scenes .* only has \d+ distinct train"):
        scenes(CFG, "train", 2700)
    assert train == 2000
    with pytest.raises(ValueError, match="split must be one of"):
        scenes(CFG, "dev", 1)


def test_vocabulary_depends_on_config():
    one = set(vocabulary(ShapesConfig(max_shapes=1, colors=("red",), shapes=("circle",))))
    assert one == {"a", "there", "is", ":", "red", "circle", "one", "shape"}
    assert {"left", "of", "above", "two", "shapes", "an", "orange"} <= set(vocabulary(CFG))
    assert "," not in vocabulary(CFG) and "," in vocabulary(BIG)
