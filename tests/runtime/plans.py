"""What a run on the built-in scenes reads: a batch reads each distinct image of its plan once."""

from __future__ import annotations

from graphspec.runtime.tasks.caption_sources import SceneSet


def distinct_images(spec, size: int, batches: int) -> int:
    """Images decoded over `batches` one-pass caption batches of `size` rows (a scene drawn twice in a batch
    is read once)."""
    roles = spec.roles()
    scenes = SceneSet(spec.data.train, ("data", "train"), spec.inputs[roles.image].size)
    prob = spec.objectives[roles.itm].negative_prob
    return sum(len(set(scenes.plan(size, prob, spec.train.seed, i).images)) for i in range(batches))
