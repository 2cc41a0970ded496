"""T5 text conditioners of Stable Diffusion (v1 and 2.x code bases), on ``transformers``.

- ``FrozenT5Embedder``: caption → T5 encoder ``last_hidden_state`` ``(B, max_length, d_model)``.
- ``CLIPT5Pair``: caption → ``[CLIP text features (B, 77, 768), T5 features (B, 77, d_model)]``, the base of
  ``FrozenCLIPT5Encoder`` (defined in ``modules.py``, beside the ``FrozenCLIPEmbedder`` it builds).

Weights and tokenizer come through :func:`ldm.modules.encoders.hub.load_pretrained` (a local folder or the Hugging
Face cache first, the hub only when reachable). Offline, the encoder of a known ``google/t5-v1_1-*`` size is built
from its published architecture with random weights (one warning), as ``FrozenCLIPEmbedder`` does for its default
model; any other missing version raises. The tokenizer cannot be rebuilt offline (its SentencePiece vocabulary is
not shipped): without it, construction raises one line saying what to install or download.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Sequence
from typing import Any

import torch
from transformers import T5Config, T5EncoderModel, T5Tokenizer

from ldm.modules.encoders.base import AbstractEncoder
from ldm.modules.encoders.clip_image import default_device
from ldm.modules.encoders.frozen import DEFAULT_DEVICE, FrozenModule
from ldm.modules.encoders.hub import load_pretrained

logger = logging.getLogger(__name__)

T5_V1_1 = "google/t5-v1_1-"
#: The published google/t5-v1_1-<size> encoders: (d_model, d_ff, layers, heads); all use d_kv = 64, 32,128 ids,
#: gated-GELU feed-forward blocks and untied input/output embeddings.
T5_V1_1_SIZES = {
    "small": (512, 1024, 8, 6),
    "base": (768, 2048, 12, 12),
    "large": (1024, 2816, 24, 16),
    "xl": (2048, 5120, 24, 32),
    "xxl": (4096, 10240, 24, 64),
}


def t5_v1_1_config(version: str) -> T5Config | None:
    """The architecture of ``google/t5-v1_1-<size>`` without any download; None for other versions."""
    size = version.removeprefix(T5_V1_1) if version.startswith(T5_V1_1) else None
    if size not in T5_V1_1_SIZES:
        return None
    width, hidden, depth, heads = T5_V1_1_SIZES[size]
    return T5Config(
        vocab_size=32128,
        d_model=width,
        d_kv=64,
        d_ff=hidden,
        num_layers=depth,
        num_decoder_layers=depth,
        num_heads=heads,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
    )


def has_sentence_pieces(tokenizer: Any) -> bool:
    """True when a T5 tokenizer knows pieces beyond its special tokens and ``"▁"`` (transformers 5 returns such a
    placeholder, instead of raising, when the vocabulary files are missing)."""
    return len(tokenizer) > len(set(tokenizer.all_special_tokens)) + 1


def t5_tokenizer(version: str, owner: str) -> T5Tokenizer:
    """The T5 tokenizer of ``version`` (local folder, cache, or hub); ``OSError`` when it is unavailable."""
    tokenizer = load_pretrained(T5Tokenizer, version, accept=has_sentence_pieces)
    if tokenizer is not None:
        return tokenizer
    no_sentencepiece = importlib.util.find_spec("sentencepiece") is None
    reading = " (reading a spiece.model also needs `pip install sentencepiece`)" if no_sentencepiece else ""
    raise OSError(
        f"{owner}: no T5 tokenizer vocabulary for {version!r} in a local folder or the Hugging Face cache, and the "
        f"hub is offline or unreachable{reading}; download it once with network access "
        f"(`T5Tokenizer.from_pretrained('{version}')`) or pass a local folder holding tokenizer.json or spiece.model"
    )


def t5_encoder(version: str, owner: str) -> T5EncoderModel:
    """The T5 encoder of ``version``: pretrained when available, else (known v1.1 sizes only) random weights.

    Inside ``with torch.device("meta")`` only the architecture is built (``from_pretrained`` refuses a meta context).
    """
    shapes_only = default_device().type == "meta"
    if shapes_only:
        config = t5_v1_1_config(version) or load_pretrained(T5Config, version)
        found = None if config is None else T5EncoderModel(config)
    else:
        found = load_pretrained(T5EncoderModel, version)
    if found is not None:
        return found
    known = t5_v1_1_config(version)
    if known is None:
        sizes = ", ".join(T5_V1_1 + size for size in T5_V1_1_SIZES)
        raise OSError(
            f"{owner}: cannot load version={version!r} (not a local folder, not in the Hugging Face cache, hub "
            f"unreachable); download it once with network access, or use one of {sizes}"
        )
    if not shapes_only:
        logger.warning(
            "%s: %r is not in the Hugging Face cache and the hub is offline or unreachable; building its encoder from "
            "the known architecture with RANDOM weights. Load a checkpoint holding the T5 weights to set them.",
            owner,
            version,
        )
    return T5EncoderModel(known)


def t5_parts(version: str, owner: str) -> tuple[T5Tokenizer, T5EncoderModel]:
    """``(tokenizer, encoder)`` of ``version``; the tokenizer first, so a missing vocabulary fails before a large
    encoder is built."""
    tokenizer = t5_tokenizer(version, owner)
    return tokenizer, t5_encoder(version, owner)


class FrozenT5Embedder(FrozenModule, AbstractEncoder):
    """Captions → T5 encoder ``last_hidden_state`` ``(B, max_length, d_model)`` (1024 for t5-v1_1-large), frozen
    (eval, no gradients) unless ``freeze=False``.

    Ids: SentencePiece pieces then ``</s>`` (1), truncated to ``max_length`` (keeping ``</s>``) and padded with
    ``<pad>`` (0) to ``max_length``. As in the original no attention mask is passed, so every position, padding
    included, attends to all ``max_length`` positions. ``device`` is a plain, assignable attribute; ids go to the
    device of the weights, whatever it says.
    """

    def __init__(
        self,
        version: str = "google/t5-v1_1-large",
        device: str = DEFAULT_DEVICE,
        max_length: int = 77,
        freeze: bool = True,
    ) -> None:
        super().__init__()
        self.device, self.max_length = device, max_length
        self.tokenizer, self.transformer = t5_parts(version, type(self).__name__)
        if freeze:
            self.freeze()

    def tokenize(self, text: str | Sequence[str]) -> torch.Tensor:
        """Captions → ids ``(B, max_length)`` int64 on the weights' device."""
        batch = self.tokenizer(
            text, padding="max_length", truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        return batch.input_ids.to(self.transformer.get_input_embeddings().weight.device)

    def forward(self, text: str | Sequence[str]) -> torch.Tensor:
        return self.transformer(input_ids=self.tokenize(text)).last_hidden_state

    def encode(self, text: str | Sequence[str]) -> torch.Tensor:
        return self(text)


class CLIPT5Pair(FrozenModule, AbstractEncoder):
    """Two frozen text conditioners side by side: captions → ``[clip_encoder.encode(text), t5_encoder.encode(text)]``.

    The base of ``ldm.modules.encoders.modules.FrozenCLIPT5Encoder``, which builds the pair (a ``FrozenCLIPEmbedder``
    and a :class:`FrozenT5Embedder`) where ``FrozenCLIPEmbedder`` is defined. Submodules ``clip_encoder`` and
    ``t5_encoder`` (the original's state-dict names); frozen as a whole, so ``train()`` leaves both in eval mode.
    ``device`` is a plain, assignable attribute.
    """

    def __init__(self, clip_encoder: AbstractEncoder, t5_encoder: FrozenT5Embedder, device: str) -> None:
        super().__init__()
        self.clip_encoder = clip_encoder
        self.t5_encoder = t5_encoder
        self.device = device
        millions = [sum(p.numel() for p in part.parameters()) / 1e6 for part in (clip_encoder, t5_encoder)]
        logger.info("%s: CLIP text encoder %.2f M parameters, T5 encoder %.2f M.", type(self).__name__, *millions)
        self.freeze()

    def forward(self, text: str | Sequence[str]) -> list[torch.Tensor]:
        return [self.clip_encoder.encode(text), self.t5_encoder.encode(text)]

    def encode(self, text: str | Sequence[str]) -> list[torch.Tensor]:
        return self(text)
