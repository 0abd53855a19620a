"""Captions pretraining: masked LM, image-text matching and contrast on the built-in scenes or caption files.

A batch pairs images with captions (a share of them captions of other images, for ITM), tokenised to the
text input and masked for MLM on matching pairs; validation reports ITM accuracy on fixed balanced pairs,
MLM accuracy on a fixed masking and in-batch ITC accuracy.
"""

from __future__ import annotations

import random
from typing import Callable, Sequence

import torch

from graphspec.language.schema import TASKS, DataSource, Roles, Spec

from .. import ranks
from ..data.jsonl import JsonlLayout, field_error
from ..data.shards import Position, ShardStream
from ..data.records import ReadStats, short_repr
from ..metrics import contrastive_loss, itc_logits, itc_loss
from ..objectives import IGNORE, MaskDraws, itm_loss, mask_tokens, mlm_loss
from ..text import cut_text, padded_length
from .base import ImageReader, TaskContext, TaskData, spec_field, cache_rows, eval_source, file_records, hash_seed, load_rows, register
from .caption_sources import CaptionFiles, PairPlan, SceneSet, batched, swap_images


def _parse(obj: dict, where: str) -> tuple[list[dict], list]:
    texts = obj["text"]
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) and t.strip() for t in texts):
        raise field_error(where, "text", f"must be a non-empty string or a list of them (got {short_repr(obj['text'])})")
    return [{"text": t, "region": None} for t in texts], [obj["image"]]


def matching(logits: torch.Tensor, match: torch.Tensor) -> torch.Tensor:
    """The ITC similarity among matching pairs only: a mismatched row's image is not its text's positive."""
    keep = match.bool()
    return logits[keep][:, keep]  # (P, P)


def pair_source(spec: Spec, roles: Roles, source: DataSource, key: str, stats: dict):
    """The built-in scenes, captioned images from arrow:/jsonl: files, or (training) this rank's stream of
    webdataset: shards; their read counts go to `stats`."""
    where = ("data", key)
    if source.source == "builtin:shapes":
        return SceneSet(source, where, spec.inputs[roles.image].size)
    read = ReadStats()
    kind, _, pattern = source.source.partition(":")
    if kind == "webdataset":
        stream = ShardStream(pattern, where, spec.train.seed, ranks.rank(), ranks.world(), source.skip_bad, read)
        stats[key] = {"stream": source.source}  # counted as it is read: the run summary's train_reads
        if key == "train":
            return stream
        with spec_field(where):  # validation: the whole split, read once, as fixed pairs
            records = stream.records()
            return CaptionFiles(source, where, records, read)
    with spec_field(where):
        pairs = CaptionFiles(source, where, file_records(source, where, roles.task, Captions.jsonl, read), read)
    stats[key] = read.as_dict()
    return pairs


class _Batch:
    """A stream batch's samples as a pair source: image i is sample i's."""

    def __init__(self, samples):
        self.samples = samples

    def image(self, i: int):
        return self.samples[i].image


def encode(plan: PairPlan, pixels: torch.Tensor | None, spec: Spec, roles: Roles, tokenizer,
           draws: MaskDraws | None, texts: Sequence[str] | None = None) -> dict:
    """Model inputs for planned rows and their pixels (B, 3, S, S; None: the caller adds the images); with
    `draws`, text is masked for MLM (labels on matching pairs only). Text is padded to the longest of `texts`
    (the global micro batch's; default the plan's own), or to max_length (`pad_to`); masking is drawn over
    max_length positions first."""
    enc = tokenizer(plan.texts, padding="max_length", truncation=True, return_tensors="pt",
                    max_length=spec.inputs[roles.text].max_length, return_special_tokens_mask=True)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    ids_key, mask_key = spec.inputs[roles.text].tensors(roles.text)
    (image_key,) = spec.inputs[roles.image].tensors(roles.image)
    match = torch.tensor(plan.match)
    batch = {ids_key: ids, mask_key: mask, "match": match, **({image_key: pixels} if pixels is not None else {})}
    if roles.mlm is not None and draws is not None:
        obj = spec.objectives[roles.mlm]
        special = enc["special_tokens_mask"].bool() | (mask == 0)
        word_ids = [enc.word_ids(i) for i in range(len(plan.texts))]
        pad = (mask == 0) if obj.selection == "fixed_count" else None
        masked, labels = mask_tokens(ids, special, word_ids, obj.mask_prob, obj.whole_word, tokenizer.mask_token_id,
                                     match.bool(), draws, pad)
        batch[ids_key] = masked
        batch[spec.labels_of(spec.objective_head(roles.mlm))] = labels
    length = padded_length(spec, roles.text, tokenizer, plan.texts if texts is None else texts)
    labels_key = spec.labels_of(spec.objective_head(roles.mlm)) if roles.mlm else None
    return cut_text(batch, length, (ids_key, mask_key), labels_key)


def two_passes(mlm: dict | None, itm: dict, labels_key: str | None) -> dict:
    """One batch of both passes of the two-pass recipe, MLM's rows (masked text, true images) first and ITM's
    (unmasked text, half the images swapped) after: one forward over twice the rows computes what two passes
    would. `itm_rows` marks the rows the ITM (and ITC) losses read; MLM labels only the first half."""
    if mlm is None:
        return {**itm, "itm_rows": torch.ones(len(itm["match"]), dtype=torch.bool)}
    out = {k: torch.cat([mlm[k], itm[k]]) for k in itm}
    labels = mlm[labels_key]
    out[labels_key] = torch.cat([labels, torch.full((len(itm["match"]), labels.shape[1]), IGNORE, dtype=labels.dtype)])
    out["itm_rows"] = torch.cat([torch.zeros(len(mlm["match"]), dtype=torch.bool),
                                 torch.ones(len(itm["match"]), dtype=torch.bool)])
    return out


def _rows_of(out, rows: torch.Tensor | None):
    """A head's output for the rows a loss reads (the itc head's features are a dict)."""
    if rows is None:
        return out
    if isinstance(out, dict):
        return {k: v[rows] if k in ("text", "image") else v for k, v in out.items()}
    return out[rows]


@register
class Captions:
    """Batches, losses and validation metrics of MLM + ITM (+ ITC) pretraining."""

    name = "captions"
    class_names = classmethod(lambda cls, vocabulary: None)  # its heads' classes are named by their kinds
    jsonl = JsonlLayout(name, TASKS[name].fields, TASKS[name].optional, "image", _parse)

    def __init__(self, spec: Spec, roles: Roles, data: TaskData, tokenizer, context: TaskContext = TaskContext()):
        self.spec, self.roles, self.tokenizer = spec, roles, tokenizer
        self.train_set, self.val_set, self.data_stats = data.train, data.val, data.stats
        self.transform, self.size = data.transform, data.size
        self.caches = context.caches
        self.negative_prob = spec.objectives[roles.itm].negative_prob if roles.itm else 0.0
        self.two_pass = bool(roles.itm) and spec.objectives[roles.itm].recipe == "two_pass"
        # where the towers reading the image compute a fixed function of it (the build's shared_images), a
        # two-pass batch holds each image once
        self.share_images = context.share_images

    @classmethod
    def read(cls, spec: Spec, roles: Roles, transform, split: str | None = None) -> TaskData:
        stats: dict = {}
        train = pair_source(spec, roles, spec.data.train, "train", stats) if split is None else None
        val_source = eval_source(spec, split)
        val = pair_source(spec, roles, val_source, "val", stats) if val_source else None
        return TaskData(train, val, stats, lambda: train.texts(), transform, spec.inputs[roles.image].size)

    def describe(self) -> str:
        if isinstance(self.train_set, ShardStream):
            return f"a stream of {len(self.train_set.shards)} shards ({len(self.train_set.order(0))} on this rank)"
        return f"{len(self.train_set)} train images"

    def vocabulary(self) -> dict:
        return {}

    def rng_state(self) -> None:
        """Nothing to keep for a resume: a batch, its masking included, is a pure function of its index."""
        return None

    def set_rng_state(self, state) -> None:
        pass

    def _pixels(self, pairs, plan: PairPlan, mine, skip_bad: bool, where: tuple, cached: bool = False
                ) -> tuple[PairPlan, torch.Tensor, dict]:
        """This rank's rows of a plan, read: (the rows used, their pixels (B, 3, S, S), what the batch tells the
        tower runner and the run summary). With `cached`, a cached tower's stored outputs stand in for images."""
        (used,), (pixels,), extra = self._read_plans(pairs, [plan], mine, skip_bad, where, cached)
        return used, pixels, extra

    def _read_plans(self, pairs, plans: list[PairPlan], mine, skip_bad: bool, where: tuple, cached: bool,
                    once: bool = False) -> tuple[list[PairPlan], list[torch.Tensor], dict]:
        """`_pixels` of several plans of one batch (the two-pass recipe's), their rows in that order; an image
        two plans share is read once. With `once`, the pixels are instead each distinct image once (one
        tensor) and `extra["_data"]["rows"]` says which one each row reads (`<image>_rows`)."""
        (image,) = self.spec.inputs[self.roles.image].tensors(self.roles.image)
        tower, cache = self.caches.get(image, (None, None)) if cached else (None, None)
        reader = ImageReader(self.transform, self.size, self.spec.inputs[self.roles.image].channels, cache)
        memo: dict = {}

        def read(index: int):
            if index not in memo:
                memo[index] = reader(pairs.image(index))
            return memo[index]

        used, pixels, loaded, stats = [], [], [], {"replaced": 0}
        for plan in plans:
            with spec_field(where):
                rows, got = load_rows(len(plan.texts), mine, lambda k, plan=plan: read(plan.images[k]), skip_bad)
            stats["replaced"] += got["replaced"]
            used.append(PairPlan([plan.images[k] for k, _ in rows], [plan.texts[k] for k, _ in rows],
                                 [plan.match[k] for k, _ in rows]))
            loaded += [item for _, item in rows]
            if not once:
                pixels.append(torch.stack([item.pixels for _, item in rows]))
        if once:
            distinct: dict[int, int] = {}
            order = [distinct.setdefault(id(item), len(distinct)) for item in loaded]
            loaded = list({id(item): item for item in loaded}.values())  # first appearances, in order
            pixels = [torch.stack([item.pixels for item in loaded])]
            stats["rows"] = torch.tensor(order)
        extra = {**cache_rows(tower, loaded, reader),
                 "_data": {**stats, "decoded": reader.decoded, "decodes_saved": reader.saved}}
        return used, pixels, extra

    def _encode_two_pass(self, pairs, plan: PairPlan, itm: PairPlan, mine, draws, where: tuple) -> dict:
        """Both passes of the two-pass recipe: MLM on the plan's true pairs, ITM on `itm` (see `two_passes`)."""
        spec, roles = self.spec, self.roles
        plans = [plan, itm] if roles.mlm else [itm]
        used, pixels, extra = self._read_plans(pairs, plans, mine, spec.data.train.skip_bad, where, cached=True,
                                               once=self.share_images)
        rows = extra["_data"].pop("rows", None)  # with share_images: pixels[0] holds each distinct image once
        per_plan = pixels if rows is None else [None] * len(plans)
        texts = plan.texts + itm.texts  # both halves padded alike, to the global batch's longest
        mlm = encode(used[0], per_plan[0], spec, roles, self.tokenizer, draws, texts) if roles.mlm else None
        unmasked = encode(used[-1], per_plan[-1], spec, roles, self.tokenizer, None, texts)
        labels = spec.labels_of(spec.objective_head(roles.mlm)) if roles.mlm else None
        batch = two_passes(mlm, unmasked, labels)
        if rows is not None:
            (image,) = spec.inputs[roles.image].tensors(roles.image)
            batch[image], batch[spec.rows_of(roles.image)] = pixels[0], rows
        return {**batch, **extra}

    def resume_reading(self, samples_done: int, position: list[int]) -> None:
        """A stream source goes on from where a checkpoint says it was."""
        if isinstance(self.train_set, ShardStream):
            self.train_set.start(samples_done, Position(*position))

    def _stream_batch(self, size: int, index: int) -> dict:
        """Micro batch `index` of this rank's stream: its samples [index * size, (index + 1) * size); an ITM
        negative is a caption of another sample of the batch (the stream's buffer)."""
        stream, seed, rank = self.train_set, self.spec.train.seed, ranks.rank()
        samples, position = stream.take(index * size, size)
        rng = random.Random(f"stream:{seed}:{rank}:{index}")
        if self.two_pass:  # a negative's image is another sample's of the batch
            plan = PairPlan(list(range(size)), [s.text for s in samples], [1] * size)
            itm = swap_images(plan, self.negative_prob, rng, lambda k, text, rng: (k + 1 + rng.randrange(size - 1)) % size)
            batch = self._encode_two_pass(_Batch(samples), plan, itm, range(size), self._draws(size, index, rank),
                                          ("data", "train"))
            return self._stream_extra(batch, stream, position)
        texts, match = [], []
        for j, sample in enumerate(samples):
            negative = size > 1 and rng.random() < self.negative_prob
            other = (j + 1 + rng.randrange(size - 1)) % size if negative else j
            texts.append(samples[other].text)
            match.append(0 if negative else 1)
        plan = PairPlan(list(range(size)), texts, match)
        rows, pixels, extra = self._pixels(_Batch(samples), plan, range(size), self.spec.data.train.skip_bad,
                                           ("data", "train"), cached=True)
        batch = encode(rows, pixels, self.spec, self.roles, self.tokenizer, self._draws(size, index, rank))
        batch.update(extra)
        return self._stream_extra(batch, stream, position)

    def _draws(self, size: int, index: int, rank: int) -> MaskDraws | None:
        """A stream batch's masking draws: its own per rank (each rank reads its own samples)."""
        if not self.roles.mlm:
            return None
        gen = torch.Generator().manual_seed(hash_seed(self.spec.train.seed, index, "rank", rank))
        return MaskDraws.draw(gen, size, self.spec.inputs[self.roles.text].max_length, len(self.tokenizer))

    @staticmethod
    def _stream_extra(batch: dict, stream, position) -> dict:
        batch["_data"] = {**batch["_data"], "stream_read": stream.stats.read, "stream_skipped": stream.stats.skipped}
        stream.stats.read = stream.stats.skipped = 0  # counts per batch: the training process sums them
        batch["_stream"] = position.as_list()
        return batch

    def train_batch(self, size: int, index: int) -> dict:
        """This rank's `size` rows of the step's global micro batch. Every rank plans the whole batch alike
        (images, texts, negatives and the masking draws are functions of the index) and reads, decodes and
        transforms only its own rows, so a batch is the same whatever the number of ranks or workers. A
        stream source gives each rank its own samples instead (`_stream_batch`)."""
        if isinstance(self.train_set, ShardStream):
            return self._stream_batch(size, index)
        total = size * ranks.world()
        seed = self.spec.train.seed
        mine = range(total)[ranks.part(total)]
        if self.two_pass:  # true pairs for MLM; the same pairs, exactly a share with other images, for ITM
            plan = self.train_set.plan(total, 0.0, seed, index)
            itm = swap_images(plan, self.negative_prob, random.Random(f"itm:{seed}:{index}"),
                              self.train_set.negative_image)
            return self._encode_two_pass(self.train_set, plan, itm, mine, self._global_draws(total, index, mine),
                                         ("data", "train"))
        plan = self.train_set.plan(total, self.negative_prob, seed, index)
        rows, pixels, extra = self._pixels(self.train_set, plan, mine, self.spec.data.train.skip_bad, ("data", "train"),
                                           cached=True)
        batch = encode(rows, pixels, self.spec, self.roles, self.tokenizer, self._global_draws(total, index, mine),
                       plan.texts)
        batch.update(extra)
        return batch

    def _global_draws(self, total: int, index: int, mine: range) -> MaskDraws | None:
        """The global micro batch's masking draws, this rank's rows of them."""
        if not self.roles.mlm:
            return None
        gen = torch.Generator().manual_seed(hash_seed(self.spec.train.seed, index))
        length = self.spec.inputs[self.roles.text].max_length
        return MaskDraws.draw(gen, total, length, len(self.tokenizer)).rows(slice(mine.start, mine.stop))

    def mlm_weight(self, labels: torch.Tensor) -> torch.Tensor:
        """A rank's MLM loss is weighted by its share of the masked tokens: the ranks' average (what data
        parallelism takes) is then the mean over every masked token of the global batch (one all-reduce, on
        the device the labels are on: no copy to the host)."""
        mine = (labels != IGNORE).sum().to(torch.float32)
        total = ranks.device_total(mine)
        return torch.where(total > 0, mine * ranks.world() / total.clamp(min=1), torch.ones_like(total))

    def losses(self, out: dict, batch: dict) -> dict[str, torch.Tensor]:
        spec, roles = self.spec, self.roles
        parts: dict[str, torch.Tensor] = {}
        rows = batch.get("itm_rows")  # two-pass: ITM and ITC read the unmasked rows
        match = batch["match"] if rows is None else batch["match"][rows]
        if roles.itm:
            parts[roles.itm] = itm_loss(_rows_of(out[spec.objective_head(roles.itm)], rows), match)
        if roles.mlm:
            head = spec.objective_head(roles.mlm)
            labels = batch[spec.labels_of(head)]
            weight = self.mlm_weight(labels) if ranks.world() > 1 else 1.0
            parts[roles.mlm] = mlm_loss(out[head], labels) * weight
        if roles.itc:  # against the matching pairs of every rank's rows
            parts[roles.itc] = contrastive_loss(_rows_of(out[spec.objective_head(roles.itc)], rows), match)
        parts["loss"] = sum(spec.objectives[k].weight * v for k, v in parts.items())
        return parts

    @torch.no_grad()
    def evaluate(self, forward: Callable[[dict], dict]) -> dict:
        """ITM accuracy and loss on unmasked text over fixed balanced pairs; MLM on a fixed masking."""
        if self.val_set is None:
            return {}
        spec, roles = self.spec, self.roles
        sums = {f"{t}_{k}": 0.0 for t in ("itm", "mlm", "itc") for k in ("hit", "loss", "n")}
        gen = torch.Generator().manual_seed(1234)
        source = spec.data.val or spec.data.train
        for planned in batched(self.val_set.eval_plans(spec.data.val_pairs), spec.batch_plan()[0]):
            plan, pixels, _ = self._pixels(self.val_set, planned, range(len(planned.texts)), source.skip_bad,
                                           ("data", "val"))
            match = torch.tensor(plan.match)
            if roles.itm:
                logits = forward(encode(plan, pixels, spec, roles, self.tokenizer, None))[spec.objective_head(roles.itm)]
                sums["itm_hit"] += int((logits.float().argmax(-1) == match).sum())
                sums["itm_loss"] += float(itm_loss(logits, match)) * len(plan.texts)
                sums["itm_n"] += len(plan.texts)
            if roles.mlm:
                draws = MaskDraws.draw(gen, len(plan.texts), spec.inputs[roles.text].max_length, len(self.tokenizer))
                self._mlm(forward, plan, pixels, draws, sums)
            if roles.itc:
                self._itc(forward, plan, pixels, sums)
        out = {}
        for task in ("itm", "mlm", "itc"):
            if sums[f"{task}_n"]:
                out[f"{task}_acc"] = sums[f"{task}_hit"] / sums[f"{task}_n"]
                out[f"{task}_loss"] = round(sums[f"{task}_loss"] / sums[f"{task}_n"], 6)
        return out

    def _itc(self, forward, plan, pixels, sums) -> None:
        """In-batch: how often a caption's own image scores highest among the batch's matching pairs."""
        batch = encode(plan, pixels, self.spec, self.roles, self.tokenizer, None)
        logits = matching(itc_logits(forward(batch)[self.spec.objective_head(self.roles.itc)]), batch["match"])
        n = logits.shape[0]
        if n > 1:
            sums["itc_hit"] += float((logits.argmax(-1) == torch.arange(n)).sum())
            sums["itc_loss"] += float(itc_loss(logits)) * n
            sums["itc_n"] += n

    def _mlm(self, forward, plan, pixels, draws, sums) -> None:
        batch = encode(plan, pixels, self.spec, self.roles, self.tokenizer, draws)
        head = self.spec.objective_head(self.roles.mlm)
        labels = batch[self.spec.labels_of(head)]
        target = labels[labels != IGNORE]
        if target.numel():
            logits = forward(batch)[head].float()
            sums["mlm_hit"] += int((logits.argmax(-1) == target).sum())
            sums["mlm_loss"] += float(mlm_loss(logits, labels)) * target.numel()
            sums["mlm_n"] += target.numel()
