"""The ``bert-base-uncased`` tokenizer built from the vocabulary shipped with ldm, offline.

Expected ids are published ``bert-base-uncased`` outputs (Hugging Face's BERT docs and tutorials), not computed
here; the vocabulary file itself is pinned by the md5 of Google's released ``vocab.txt``.
"""

from __future__ import annotations

import hashlib

import pytest
import torch

import ldm.modules.encoders.modules as encoders
from ldm.modules.encoders import bert_tokenizer
from ldm.modules.encoders.bert_tokenizer import VOCAB_SIZE, bert_vocab, bert_vocab_text, offline_bert_tokenizer
from ldm.modules.encoders.modules import BERTEmbedder, BERTTokenizer

PROMPT = "a painting of a virus monster playing guitar"

#: Published ``bert-base-uncased`` encodings (with [CLS] 101 … [SEP] 102).
KNOWN_IDS = {
    "Hello, my dog is cute": [101, 7592, 1010, 2026, 3899, 2003, 10140, 102],
    "Hello world": [101, 7592, 2088, 102],
    "How are you?": [101, 2129, 2024, 2017, 1029, 102],
    "I am fine": [101, 1045, 2572, 2986, 102],
    PROMPT: [101, 1037, 4169, 1997, 1037, 7865, 6071, 2652, 2858, 102],
}


@pytest.fixture(scope="module")
def tokenizer():
    return offline_bert_tokenizer()


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """No hub, no cached copy: only the shipped vocabulary can serve ``tokenizer="bert"``."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(encoders, "load_pretrained", lambda *args, **kwargs: None)


def test_shipped_file_is_googles_vocab_txt() -> None:
    data = bert_vocab_text().encode("utf-8")
    assert len(data) == 231_508
    assert hashlib.md5(data).hexdigest() == bert_tokenizer.VOCAB_MD5 == "64800d5d8528ce344256daf115d4965e"


def test_vocabulary_ids() -> None:
    vocab = bert_vocab()
    assert len(vocab) == VOCAB_SIZE == 30522
    expected = {"[PAD]": 0, "[unused0]": 1, "[unused98]": 99, "[UNK]": 100, "[CLS]": 101, "[SEP]": 102,
                "[MASK]": 103, "[unused99]": 104, "the": 1996, "##～": 30521}  # fmt: skip
    assert {token: vocab[token] for token in expected} == expected


@pytest.mark.parametrize("text", sorted(KNOWN_IDS))
def test_published_encodings(tokenizer, text: str) -> None:
    assert tokenizer(text)["input_ids"] == KNOWN_IDS[text]


def test_continuation_pieces(tokenizer) -> None:
    text = "I'm learning tokenization!"
    assert tokenizer.tokenize(text) == ["i", "'", "m", "learning", "token", "##ization", "!"]
    assert tokenizer(text, add_special_tokens=False)["input_ids"] == [1045, 1005, 1049, 4083, 19204, 3989, 999]


def test_lower_cases_strips_accents_and_splits_cjk(tokenizer) -> None:
    assert tokenizer("HeLLo WORLD")["input_ids"] == KNOWN_IDS["Hello world"]
    assert tokenizer("Hélló wörld")["input_ids"] == KNOWN_IDS["Hello world"]
    assert tokenizer.tokenize("naïve Café") == ["naive", "cafe"]
    assert tokenizer.tokenize("中中") == ["中", "中"]  # each CJK character is its own word
    assert tokenizer("\u2603")["input_ids"] == [101, 100, 102]  # a character outside the vocabulary -> [UNK]


def test_tokenizer_settings(tokenizer) -> None:
    assert len(tokenizer) == VOCAB_SIZE and tokenizer.model_max_length == 512
    assert (tokenizer.pad_token_id, tokenizer.unk_token_id, tokenizer.mask_token_id) == (0, 100, 103)
    normalizer = repr(tokenizer.backend_tokenizer.normalizer)
    for setting in ("handle_chinese_chars=True", "strip_accents=None", "lowercase=True"):
        assert setting in normalizer


def test_bert_tokenizer_pads_to_max_length_offline(offline: None) -> None:
    stage = BERTTokenizer(vq_interface=True, max_length=77)
    ids = stage([PROMPT, "Hello world"])
    assert ids.shape == (2, 77) and ids.dtype == torch.long
    assert ids[0, :10].tolist() == KNOWN_IDS[PROMPT] and ids[0, 10:].eq(0).all()
    assert ids[1, :4].tolist() == KNOWN_IDS["Hello world"] and ids[1, 4:].eq(0).all()
    first, second, (third, fourth, tokens) = stage.encode([PROMPT, "Hello world"])
    assert (first, second, third, fourth) == (None, None, None, None) and torch.equal(tokens, ids)
    assert torch.equal(BERTTokenizer(vq_interface=False, max_length=77).encode([PROMPT, "Hello world"]), ids)


def test_bert_tokenizer_truncates_to_max_length_offline(offline: None) -> None:
    ids = BERTTokenizer(vq_interface=False, max_length=6)(PROMPT)
    assert ids.tolist() == [KNOWN_IDS[PROMPT][:5] + [102]]


def test_bert_embedder_default_tokenizer_offline(offline: None) -> None:
    torch.manual_seed(0)
    embedder = BERTEmbedder(n_embed=16, n_layer=1, max_seq_len=12, device="cpu")
    assert embedder.tknz_fn([PROMPT])[0, :10].tolist() == KNOWN_IDS[PROMPT]
    assert embedder.encode([PROMPT, "Hello world"]).shape == (2, 12, 16)
