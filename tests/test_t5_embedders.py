"""FrozenT5Embedder and FrozenCLIPT5Encoder on tiny T5 / CLIP models saved and loaded the way real ones are: padded
ids, outputs equal to the encoder's, no attention mask (as the original), freezing, the assignable ``device``, and
the offline paths (random weights for a known size, one-line errors otherwise)."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import pytest
import torch
from transformers import CLIPTextConfig, T5Config, T5EncoderModel, T5Tokenizer

import ldm.modules.encoders.modules as modules
import ldm.modules.encoders.t5_embedders as t5_embedders
from ldm.modules.encoders.base import AbstractEncoder
from ldm.modules.encoders.modules import FrozenCLIPT5Encoder
from ldm.modules.encoders.t5_embedders import CLIPT5Pair, FrozenT5Embedder, has_sentence_pieces

WORDS = ["▁a", "▁photo", "▁of", "▁cat", "▁dog", "▁the", "▁an", "▁astronaut", "▁riding", "▁horse"]
PAD, EOS, UNK = 0, 1, 2
CAPTIONS = ["a photo of a cat", "the dog"]
CAPTION_IDS = [[4, 5, 6, 4, 7, EOS], [9, 8, EOS]]  # pieces start at id 4, after <pad>, </s>, <unk> and "▁"


def _tiny_tokenizer() -> T5Tokenizer:
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [(word, -3.0 - i) for i, word in enumerate(WORDS)]
    return T5Tokenizer(vocab=pieces, extra_ids=0)


def _tiny_config(vocab_size: int) -> T5Config:
    return T5Config(
        vocab_size=vocab_size, d_model=16, d_kv=4, d_ff=32, num_layers=2, num_heads=4,
        feed_forward_proj="gated-gelu", tie_word_embeddings=False,
    )


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture
def t5_folder(tmp_path: Path) -> Path:
    """A local folder holding a tiny T5 encoder and its tokenizer, as ``save_pretrained`` writes them."""
    folder = tmp_path / "tiny-t5"
    tokenizer = _tiny_tokenizer()
    torch.manual_seed(0)
    T5EncoderModel(_tiny_config(len(tokenizer))).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def tiny_clip(monkeypatch: pytest.MonkeyPatch) -> None:
    """FrozenCLIPEmbedder's offline fallback tower made tiny (as in tests/test_encoders.py)."""
    tiny = CLIPTextConfig(
        vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=77, hidden_act="quick_gelu",
    )
    monkeypatch.setattr(modules, "vit_l14_text_config", lambda: tiny)
    monkeypatch.setattr(modules, "load_pretrained", lambda *args, **kwargs: None)


def _one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


def test_ids_are_padded_to_max_length_and_output_is_the_encoders(t5_folder: Path) -> None:
    embedder = FrozenT5Embedder(str(t5_folder), device="cpu", max_length=10)
    ids = embedder.tokenize(CAPTIONS)
    assert ids.tolist() == [row + [PAD] * (10 - len(row)) for row in CAPTION_IDS]
    z = embedder(CAPTIONS)
    assert z.shape == (2, 10, 16) and z.grad_fn is None
    reference = T5EncoderModel.from_pretrained(t5_folder).eval()
    torch.testing.assert_close(z, reference(input_ids=ids).last_hidden_state)
    torch.testing.assert_close(embedder.encode(CAPTIONS), z, rtol=0, atol=0)
    # no attention mask, as in the original: the padding changes the features of the real tokens
    masked = reference(input_ids=ids, attention_mask=ids.ne(PAD).long()).last_hidden_state
    assert not torch.allclose(z[1, :3], masked[1, :3])
    long_ids = embedder.tokenize(["a photo of a cat " * 5])
    assert long_ids.shape == (1, 10) and long_ids[0, -1] == EOS and long_ids.ne(PAD).all()


def test_default_max_length_is_77(t5_folder: Path) -> None:
    embedder = FrozenT5Embedder(str(t5_folder))
    assert embedder.max_length == 77 and embedder(["a cat"]).shape == (1, 77, 16)


def test_frozen_unless_asked_and_device_is_a_plain_attribute(t5_folder: Path) -> None:
    embedder = FrozenT5Embedder(str(t5_folder))
    assert embedder.device == ("cuda" if torch.cuda.is_available() else "cpu")
    assert not any(p.requires_grad for p in embedder.parameters())
    embedder.train()
    assert not any(m.training for m in embedder.modules())
    before = embedder(CAPTIONS)
    embedder.device = "mps"
    assert embedder.device == "mps" and torch.equal(embedder(CAPTIONS), before)
    trainable = FrozenT5Embedder(str(t5_folder), freeze=False)
    assert all(p.requires_grad for p in trainable.parameters())
    assert trainable.train().transformer.training


def test_placeholder_tokenizer_counts_as_missing() -> None:
    """transformers 5 returns a T5 tokenizer holding only its special tokens when the vocabulary is missing."""
    assert not has_sentence_pieces(T5Tokenizer())
    assert has_sentence_pieces(_tiny_tokenizer())


def test_missing_tokenizer_is_one_line_naming_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(t5_embedders, "load_pretrained", lambda *args, **kwargs: None)
    real_find_spec = importlib.util.find_spec
    for installed in (True, False):
        monkeypatch.setattr(
            importlib.util, "find_spec",
            lambda name, *rest, ok=installed: (object() if ok else None) if name == "sentencepiece"
            else real_find_spec(name, *rest),
        )
        with pytest.raises(OSError) as error:
            FrozenT5Embedder()
        message = _one_line(error)
        assert message.startswith("FrozenT5Embedder: no T5 tokenizer vocabulary for 'google/t5-v1_1-large'")
        assert "spiece.model" in message
        assert ("pip install sentencepiece" in message) is not installed


def test_known_size_offline_builds_random_weights_with_one_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    tokenizer = _tiny_tokenizer()
    monkeypatch.setattr(
        t5_embedders, "load_pretrained", lambda loader, *args, **kwargs: tokenizer if loader is T5Tokenizer else None
    )
    monkeypatch.setitem(t5_embedders.T5_V1_1_SIZES, "large", (16, 32, 2, 4))  # the table's entry, made tiny
    with caplog.at_level(logging.WARNING, logger=t5_embedders.__name__):
        embedder = FrozenT5Embedder()
    (record,) = caplog.records
    message = record.getMessage()
    assert "\n" not in message and "RANDOM weights" in message and "'google/t5-v1_1-large'" in message
    config = embedder.transformer.config
    assert (config.vocab_size, config.d_kv, config.feed_forward_proj) == (32128, 64, "gated-gelu")
    assert embedder(CAPTIONS).shape == (2, 77, 16)
    with pytest.raises(OSError) as error:
        FrozenT5Embedder("someone/t5-custom")
    message = _one_line(error)
    assert "'someone/t5-custom'" in message and "google/t5-v1_1-xl" in message


def test_clip_t5_returns_both_parts(t5_folder: Path, tiny_clip: None) -> None:
    encoder = FrozenCLIPT5Encoder(t5_version=str(t5_folder), t5_max_length=10)
    clip_z, t5_z = encoder(CAPTIONS)
    assert clip_z.shape == (2, 77, 32) and t5_z.shape == (2, 10, 16)
    torch.testing.assert_close(clip_z, encoder.clip_encoder(CAPTIONS), rtol=0, atol=0)
    alone = FrozenT5Embedder(str(t5_folder), max_length=10)
    torch.testing.assert_close(t5_z, alone(CAPTIONS), rtol=0, atol=0)
    again = encoder.encode(CAPTIONS)
    assert isinstance(again, list) and all(torch.equal(a, b) for a, b in zip(again, (clip_z, t5_z), strict=True))
    assert {key.split(".")[0] for key in encoder.state_dict()} == {"clip_encoder", "t5_encoder"}
    assert not any(p.requires_grad for p in encoder.parameters())
    encoder.train()
    assert not any(m.training for m in encoder.modules())
    assert encoder.device == ("cuda" if torch.cuda.is_available() else "cpu")
    encoder.device = "cpu"
    assert encoder.device == "cpu"


def test_reexported_from_modules_as_abstract_encoders() -> None:
    assert modules.FrozenT5Embedder is FrozenT5Embedder and issubclass(FrozenCLIPT5Encoder, CLIPT5Pair)
    assert issubclass(FrozenT5Embedder, AbstractEncoder) and issubclass(FrozenCLIPT5Encoder, AbstractEncoder)


def test_clip_t5_builds_the_t5_part_first(tiny_clip: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """A missing T5 vocabulary fails before the (large) CLIP text encoder is built."""
    monkeypatch.setattr(t5_embedders, "load_pretrained", lambda *args, **kwargs: None)
    monkeypatch.setattr(modules, "FrozenCLIPEmbedder", lambda *args, **kwargs: pytest.fail("CLIP built first"))
    with pytest.raises(OSError, match="FrozenT5Embedder: no T5 tokenizer vocabulary for 'google/t5-v1_1-xl'"):
        FrozenCLIPT5Encoder()
