"""Readers: the built-in scenes (`scenes`, with `scene_text` for the task generators' phrases), the
ViLT/METER/Renaissance Arrow tables (`arrow`) and JSONL manifests (`jsonl`). They yield records and know no
task; the tasks (graphspec.runtime.tasks) turn records into examples."""
