"""The text tower's tokenizer: from its source, or a WordPiece vocabulary trained on the training texts."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from graphspec.errors import EnvironmentProblem, GraphspecError, Issue
from graphspec.schema import Spec

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]  # BERT's, so pad id 0 matches BERT-style configs


def text_node(spec: Spec, input_name: str) -> tuple[str, object]:
    for name, node in spec.nodes.items():
        if node.kind == "hf_text" and node.input == input_name:
            return name, node
    raise GraphspecError([Issue(("inputs", input_name), f"no hf_text node reads the text input '{input_name}'",
                                "add one: the tokenizer comes from it")])


def load_tokenizer(spec: Spec, input_name: str, vocab_size: int, cache_dir: Path, texts: Iterable[str]):
    """A fast tokenizer: the text tower's own when it has a source, else one trained and kept in `cache_dir`."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    name, node = text_node(spec, input_name)
    if node.source:
        try:
            return AutoTokenizer.from_pretrained(node.source, local_files_only=True)
        except (OSError, ValueError) as e:
            raise EnvironmentProblem([Issue(("nodes", name, "source"), f"no tokenizer found for '{node.source}': {e}",
                                            "point `source` at a local directory that holds the tokenizer files")]) from None
    path = cache_dir / f"tokenizer-{input_name}.json"
    if not path.is_file():
        _train_wordpiece(list(texts), vocab_size).save(str(path))
    tok = PreTrainedTokenizerFast(tokenizer_file=str(path), unk_token="[UNK]", pad_token="[PAD]",
                                  cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    if len(tok) > vocab_size:
        raise GraphspecError([Issue(("nodes", name, "size", "vocab_size"),
                                    f"the trained vocabulary has {len(tok)} entries, more than the model's {vocab_size}",
                                    f"set `size.vocab_size: {len(tok)}` or more")])
    return tok


def _train_wordpiece(texts: list[str], vocab_size: int):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                                              show_progress=False))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    return tok
