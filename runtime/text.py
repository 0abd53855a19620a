"""The text input's tokenizer: the text tower's own (its kind declares it), a fine-tuning run's pretraining
vocabulary, or a WordPiece vocabulary trained on the training texts."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Callable, Sequence

from graphspec.compiler.preprocess import source_tokenizer, text_reader
from graphspec.language.errors import Issue, SpecError
from graphspec.language.schema import Spec

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]  # BERT's, so pad id 0 matches BERT-style configs


def text_node(spec: Spec, input_name: str) -> tuple[str, object]:
    """The node that embeds the text input: its vocabulary is the model's."""
    found = text_reader(spec, input_name)
    if found is None:
        raise SpecError([Issue(("inputs", input_name), f"no node reads the text input '{input_name}' as tokens",
                               "add one (an hf_text or one_tower node): the tokenizer comes from it")])
    return found


def padded_length(spec: Spec, input_name: str, tokenizer, texts: Sequence[str]) -> int | None:
    """The length a batch holding `texts` is cut to (`pad_to: longest`): its longest text's tokens, special
    tokens included; None to keep max_length."""
    text = spec.inputs[input_name]
    if text.pad_to == "max_length" or not texts:
        return None
    ids = tokenizer(list(texts), truncation=True, max_length=text.max_length)["input_ids"]
    return max(len(row) for row in ids)


def cut_text(batch: dict, length: int | None, keys: Sequence[str], labels: str | None = None) -> dict:
    """The batch's per-token tensors (`keys`, and the MLM `labels`) cut to `length` columns. Only padding
    goes: the mask past `length` is all zeros and no label is on it (checked: a bug, never a user's error)."""
    if length is None:
        return batch
    mask = batch[keys[1]]
    assert not bool(mask[:, length:].any()), f"{keys[1]}: a real token past column {length}"
    if labels is not None and labels in batch:
        assert not bool((batch[labels][:, length:] != -100).any()), f"{labels}: a label on padding"
    for key in (*keys, labels):
        if key is not None and key in batch:
            batch[key] = batch[key][:, :length].contiguous()
    return batch


def load_tokenizer(spec: Spec, input_name: str, vocab_size: int, cache_dir: Path, texts: Callable[[], list[str]],
                   own: bool = True):
    """A fast tokenizer: the text tower's own when it has a source (and `own`), else one trained on `texts()` and
    kept in `cache_dir`."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    name, _ = text_node(spec, input_name)
    found = source_tokenizer(spec, input_name) if own else None
    if found is not None:
        if len(found) > vocab_size:  # a `tokenizer` named apart from the model: ids past the table would crash
            raise SpecError([Issue(("nodes", name, "tokenizer"), f"the tokenizer has {len(found)} entries, more "
                                   f"than the model's {vocab_size} token embeddings",
                                   f"set `vocab_size: {len(found)}` or more, or use a tokenizer of that vocabulary")])
        return found
    if spec.init_from and (Path(spec.init_from) / "tokenizer").is_dir():
        # Fine-tuning: the pretraining run's vocabulary, or its embeddings would read other ids.
        return AutoTokenizer.from_pretrained(str(Path(spec.init_from) / "tokenizer"), trust_remote_code=False)
    path = cache_dir / f"tokenizer-{input_name}.json"
    if not path.is_file():  # ranks train the same vocabulary; each replaces the file whole, never half-written
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        _train_wordpiece(list(texts()), vocab_size).save(str(tmp))
        os.replace(tmp, path)
    tok = PreTrainedTokenizerFast(tokenizer_file=str(path), unk_token="[UNK]", pad_token="[PAD]",
                                  cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    if len(tok) > vocab_size:
        raise SpecError([Issue(("nodes", name, "size", "vocab_size"),
                                    f"the trained vocabulary has {len(tok)} entries, more than the model's {vocab_size}",
                                    f"set `size.vocab_size: {len(tok)}` or more")])
    return tok


def _train_wordpiece(texts: list[str], vocab_size: int):
    """A WordPiece tokenizer whose vocabulary is fitted to `texts`, deterministically.

    tokenizers' own WordPieceTrainer breaks frequency ties in hash-map order, which
    changes from process to process (three runs here, three vocabularies), so the
    same data would give different token ids. The vocabulary is counted here
    instead: special tokens, every character (alone and as a '##' continuation, so
    any word can be spelt), then whole words by frequency, ties alphabetical.
    Normalisation, pre-tokenisation and the WordPiece model are the library's.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    normalizer, pre = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
    counts = Counter(w for t in texts for w, _ in pre.pre_tokenize_str(normalizer.normalize_str(t)))
    chars = sorted({c for w in counts for c in w})
    vocab = SPECIALS + chars + [f"##{c}" for c in chars]
    vocab += [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if w not in vocab]
    tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab[:vocab_size])}, unk_token="[UNK]"))
    tok.normalizer, tok.pre_tokenizer = normalizer, pre
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    return tok
