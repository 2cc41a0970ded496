"""The CLIP byte-level BPE tokenizer built offline from the vocabulary file shipped with ldm.

``bpe_simple_vocab_16e6.txt.gz`` (beside this file) is OpenAI CLIP's BPE vocabulary, as distributed in
openai/CLIP and open_clip (sha256 924691ac...6804a). It is data under the MIT License, Copyright (c) 2021 OpenAI.

Its first line is a header, then one merge per line (``"a b"``). CLIP uses the first 48,894 merges; the ids are
256 byte symbols, the same with the end-of-word marker ``</w>``, the merged symbols in merge order, then
``<|startoftext|>`` = 49406 and ``<|endoftext|>`` = 49407 (also the padding id). The result matches the
``openai/clip-vit-large-patch14`` tokenizer on the Hugging Face hub.
"""

from __future__ import annotations

import functools
import gzip
import inspect
import json
import tempfile
from pathlib import Path

from transformers import CLIPTokenizer

VOCAB_FILE = Path(__file__).with_name("bpe_simple_vocab_16e6.txt.gz")
NUM_MERGES = 49152 - 256 - 2
START_TOKEN, END_TOKEN = "<|startoftext|>", "<|endoftext|>"
VOCAB_SIZE = 2 * 256 + NUM_MERGES + 2


@functools.lru_cache(maxsize=1)
def byte_symbols() -> tuple[str, ...]:
    """The 256 printable characters byte-level BPE uses for the bytes 0..255, in CLIP's id order.

    Printable Latin-1 bytes stand for themselves and come first; the remaining bytes map to ``chr(256 + k)``.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return tuple(chr(b) for b in printable) + tuple(chr(256 + k) for k in range(len(others)))


@functools.lru_cache(maxsize=1)
def clip_vocab_and_merges() -> tuple[dict[str, int], tuple[tuple[str, str], ...]]:
    """``(token -> id, merges)`` of CLIP's BPE: 49,408 ids and 48,894 merges."""
    lines = gzip.decompress(VOCAB_FILE.read_bytes()).decode("utf-8").split("\n")
    merges = tuple(tuple(line.split()) for line in lines[1 : NUM_MERGES + 1])
    symbols = byte_symbols()
    tokens = [*symbols, *(s + "</w>" for s in symbols), *("".join(m) for m in merges), START_TOKEN, END_TOKEN]
    return {token: i for i, token in enumerate(tokens)}, merges


def offline_clip_tokenizer(model_max_length: int = 77) -> CLIPTokenizer:
    """A transformers ``CLIPTokenizer`` from the shipped vocabulary; pad = ``<|endoftext|>`` (49407)."""
    vocab, merges = clip_vocab_and_merges()
    if "vocab" in inspect.signature(CLIPTokenizer.__init__).parameters:
        return CLIPTokenizer(vocab=dict(vocab), merges=list(merges), model_max_length=model_max_length)
    with tempfile.TemporaryDirectory() as folder:
        vocab_file, merges_file = Path(folder, "vocab.json"), Path(folder, "merges.txt")
        vocab_file.write_text(json.dumps(vocab), encoding="utf-8")
        merges_file.write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n", encoding="utf-8")
        return CLIPTokenizer(str(vocab_file), str(merges_file), model_max_length=model_max_length)
