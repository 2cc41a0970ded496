"""The ``bert-base-uncased`` WordPiece tokenizer built offline from the vocabulary file shipped with ldm.

``bert_base_uncased_vocab.txt.gz`` (beside this file) is the ``vocab.txt`` of Google's BERT-Base uncased release
(google-research/bert, Apache License 2.0), the same file the Hugging Face ``bert-base-uncased`` model carries:
231,508 bytes, md5 ``64800d5d8528ce344256daf115d4965e``, sha256 ``07eced37…992038a3``, one token per line, the
line number is the id. It was recovered byte for byte from the PyPI wheel ``blingfire-0.1.8-py3-none-any.whl``
(Microsoft, MIT), whose ``blingfire/bert_base_tok.i2w`` is an id → token table of the same vocabulary: a ``uint32``
count (30,522) at byte 96, then ``count + 1`` ``uint32`` offsets into the UTF-8 text that follows. There a word-initial
piece is stored with a leading space and a continuation piece without one (its ``##`` dropped), and ``[UNK]``,
``[CLS]``, ``[SEP]``, ``[MASK]`` are lower-cased; undoing those three conventions gives the file above exactly.

Ids: ``[PAD]`` 0, ``[unused0..98]`` 1..99, ``[UNK]`` 100, ``[CLS]`` 101, ``[SEP]`` 102, ``[MASK]`` 103, then the
remaining ``[unused…]`` slots, single characters, whole words and ``##`` continuation pieces, the last being ``##～``.
"""

from __future__ import annotations

import functools
import gzip
import inspect
import tempfile
from pathlib import Path

from transformers import BertTokenizerFast

VOCAB_FILE = Path(__file__).with_name("bert_base_uncased_vocab.txt.gz")
VOCAB_SIZE = 30522
VOCAB_MD5 = "64800d5d8528ce344256daf115d4965e"
PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID = 0, 100, 101, 102, 103

#: The settings of ``bert-base-uncased``'s ``tokenizer_config.json`` (and the BERT normalizer's defaults).
TOKENIZER_SETTINGS = {"do_lower_case": True, "tokenize_chinese_chars": True, "strip_accents": None}


def bert_vocab_text() -> str:
    """The shipped ``vocab.txt`` as text: ``VOCAB_SIZE`` lines, each ending in ``\\n``."""
    return gzip.decompress(VOCAB_FILE.read_bytes()).decode("utf-8")


@functools.lru_cache(maxsize=1)
def bert_vocab() -> dict[str, int]:
    """``token -> id`` of ``bert-base-uncased``: the id of a token is its line number (from 0) in ``vocab.txt``."""
    *tokens, tail = bert_vocab_text().split("\n")
    if tail or len(tokens) != VOCAB_SIZE:
        raise ValueError(
            f"{VOCAB_FILE.name}: expected {VOCAB_SIZE} newline-terminated tokens, found {len(tokens)}; the file is "
            "damaged, reinstall ldm to restore it"
        )
    return {token: index for index, token in enumerate(tokens)}


def offline_bert_tokenizer(model_max_length: int = 512) -> BertTokenizerFast:
    """A transformers ``BertTokenizerFast`` equal to ``from_pretrained("bert-base-uncased")``, without the hub.

    Text → lower case, accents stripped, CJK characters split, punctuation split → greedy longest-match WordPiece
    → ``[CLS] pieces [SEP]``; unknown words → ``[UNK]`` (100); padding uses ``[PAD]`` (0).
    """
    settings = {**TOKENIZER_SETTINGS, "model_max_length": model_max_length}
    if "vocab" in inspect.signature(BertTokenizerFast.__init__).parameters:
        return BertTokenizerFast(vocab=dict(bert_vocab()), **settings)
    with tempfile.TemporaryDirectory() as folder:  # transformers 4.x reads a vocab.txt path at construction
        vocab_file = Path(folder, "vocab.txt")
        vocab_file.write_text(bert_vocab_text(), encoding="utf-8")
        return BertTokenizerFast(vocab_file=str(vocab_file), **settings)
