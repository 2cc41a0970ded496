"""Conditioners: turn a batch's class labels or captions into the context ``(B, tokens, dim)`` the UNet attends to.

- ``ClassEmbedder``: class id → one learned vector ``(B, 1, embed_dim)`` (class-conditional LDMs).
- ``FrozenCLIPEmbedder``: caption → CLIP ViT-L/14 text features ``(B, 77, 768)`` (Stable Diffusion v1).
- ``BERTEmbedder`` / ``TransformerEmbedder``: caption or token ids → a transformer trained from scratch with the
  diffusion model (the LDM text-to-image model); ``BERTTokenizer`` is its tokenizer stage.

``device`` arguments are accepted and unused: token ids follow the module itself, i.e. wherever ``.to(...)`` (or
Lightning) put it, so the default ``"cuda"`` also works on a CPU-only machine.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import BertTokenizerFast, CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from ldm.models.diffusion.diffusion_wrapper import disabled_train as disabled_train
from ldm.modules.encoders.base import AbstractEncoder as AbstractEncoder
from ldm.modules.encoders.base import IdentityEncoder as IdentityEncoder
from ldm.modules.encoders.bert_tokenizer import offline_bert_tokenizer
from ldm.modules.encoders.clip_image import ClipImageEmbedder as ClipImageEmbedder
from ldm.modules.encoders.clip_text import vit_l14_text_config, with_sd_layout
from ldm.modules.encoders.clip_tokenizer import offline_clip_tokenizer
from ldm.modules.encoders.frozen import DEFAULT_DEVICE
from ldm.modules.encoders.hub import has_vocabulary, load_pretrained
from ldm.modules.encoders.noise_augmentation import CLIPEmbeddingNoiseAugmentation as CLIPEmbeddingNoiseAugmentation
from ldm.modules.encoders.openai_clip_embedders import FrozenClipImageEmbedder as FrozenClipImageEmbedder
from ldm.modules.encoders.openai_clip_embedders import FrozenCLIPTextEmbedder as FrozenCLIPTextEmbedder
from ldm.modules.encoders.openclip_embedders import FrozenOpenCLIPEmbedder as FrozenOpenCLIPEmbedder
from ldm.modules.encoders.openclip_embedders import FrozenOpenCLIPImageEmbedder as FrozenOpenCLIPImageEmbedder
from ldm.modules.encoders.t5_embedders import CLIPT5Pair
from ldm.modules.encoders.t5_embedders import FrozenT5Embedder as FrozenT5Embedder
from ldm.modules.x_transformer import Encoder, TransformerWrapper
from ldm.util import ConfigError

logger = logging.getLogger(__name__)

CLIP_L14 = "openai/clip-vit-large-patch14"
BERT_VOCAB = "bert-base-uncased"
TOKENIZERS = ("bert", "clip")


def _module_device(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


def _tokenize(tokenizer: Any, text: str | Sequence[str], max_length: int) -> torch.Tensor:
    """Captions → ids ``(B, max_length)``: truncated, then padded with the tokenizer's pad id."""
    encoding = tokenizer(text, truncation=True, max_length=max_length, padding="max_length", return_tensors="pt")
    return encoding["input_ids"]


class ClassEmbedder(nn.Module):
    """``batch[key]`` class ids ``(B,)`` → learned rows ``embedding.weight[ids]`` as ``(B, 1, embed_dim)``."""

    def __init__(self, embed_dim: int, n_classes: int = 1000, key: str = "class") -> None:
        super().__init__()
        self.key = key
        self.embedding = nn.Embedding(n_classes, embed_dim)

    def forward(self, batch: Mapping[str, Any], key: str | None = None) -> torch.Tensor:
        key = self.key if key is None else key
        if key not in batch:
            raise KeyError(
                f"ClassEmbedder: the conditioning batch has no {key!r} entry (it has {sorted(batch)}); "
                "set the embedder's `key` (or the model's cond_stage_key) to the name of the class labels"
            )
        labels = torch.as_tensor(batch[key], device=self.embedding.weight.device)
        return self.embedding(labels[:, None])


class TransformerEmbedder(AbstractEncoder):
    """Token ids ``(B, N)`` → a from-scratch transformer encoder's embeddings ``(B, N, n_embed)``."""

    def __init__(
        self, n_embed: int, n_layer: int, vocab_size: int, max_seq_len: int = 77, device: str = "cuda"
    ) -> None:
        super().__init__()
        self.transformer = TransformerWrapper(
            num_tokens=vocab_size, max_seq_len=max_seq_len, attn_layers=Encoder(dim=n_embed, depth=n_layer)
        )
        self.device = device

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.transformer(tokens.to(_module_device(self)), return_embeddings=True)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self(x)


INTERPOLATION_MODES = ("nearest", "linear", "bilinear", "trilinear", "bicubic", "area")


class SpatialRescaler(nn.Module):
    """A spatial conditioning ``(B, C, H, W)`` resized ``n_stages`` times by ``multiplier`` (``method``
    interpolation), then mapped to ``out_channels`` by a 1×1 conv when that is set (super-resolution,
    semantic-synthesis and layout LDMs)."""

    def __init__(
        self,
        n_stages: int = 1,
        method: str = "bilinear",
        multiplier: float = 0.5,
        in_channels: int = 3,
        out_channels: int | None = None,
        bias: bool = False,
    ) -> None:
        super().__init__()
        if n_stages < 0:
            raise ValueError(f"SpatialRescaler: n_stages must be >= 0, got {n_stages}.")
        if method not in INTERPOLATION_MODES:
            raise ValueError(f"SpatialRescaler: method {method!r} is not one of {list(INTERPOLATION_MODES)}.")
        self.n_stages = n_stages
        self.multiplier = multiplier
        self.method = method
        self.remap_output = out_channels is not None
        if self.remap_output:
            logger.info("Spatial Rescaler mapping from %s to %s channels after resizing.", in_channels, out_channels)
            self.channel_mapper = nn.Conv2d(in_channels, out_channels, 1, bias=bias)

    def interpolator(self, x: torch.Tensor, scale_factor: float) -> torch.Tensor:
        return F.interpolate(x, scale_factor=scale_factor, mode=self.method)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(self.n_stages):
            x = self.interpolator(x, scale_factor=self.multiplier)
        return self.channel_mapper(x) if self.remap_output else x

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self(x)


def _text_tokenizer(name: str) -> Any:
    """``"bert"``: ``bert-base-uncased`` from the cache or the hub, else its vocabulary shipped with ldm (same ids);
    ``"clip"``: the shipped CLIP BPE (offline)."""
    if name == "clip":
        return offline_clip_tokenizer()
    if name != "bert":
        raise ConfigError(f"tokenizer={name!r} is not one of {TOKENIZERS}; use 'bert' or 'clip'")
    tokenizer = load_pretrained(BertTokenizerFast, BERT_VOCAB, accept=has_vocabulary)
    if tokenizer is not None:
        return tokenizer
    logger.info("BERTTokenizer: %r unavailable offline; using its vocabulary shipped with ldm (same ids).", BERT_VOCAB)
    return offline_bert_tokenizer()


class BERTTokenizer(AbstractEncoder):
    """Captions → token ids ``(B, max_length)``; ``encode`` wraps them VQ-style as ``(None, None, [None, None, ids])``.

    ``tokenizer="bert"`` (default): ``bert-base-uncased`` WordPiece, 30,522 ids, [CLS] … [SEP] then [PAD] = 0.
    ``tokenizer="clip"``: the CLIP BPE, 49,408 ids. Both vocabularies ship with ldm, so both work offline.
    """

    def __init__(
        self, device: str = "cuda", vq_interface: bool = True, max_length: int = 77, tokenizer: str = "bert"
    ) -> None:
        super().__init__()
        self.tokenizer = _text_tokenizer(tokenizer)
        self.vq_interface = vq_interface
        self.max_length = max_length
        self.register_buffer("_device_anchor", torch.empty(0), persistent=False)
        self.device = device

    def forward(self, text: str | Sequence[str]) -> torch.Tensor:
        return _tokenize(self.tokenizer, text, self.max_length).to(self._device_anchor.device)

    @torch.no_grad()
    def encode(self, text: str | Sequence[str]) -> Any:
        tokens = self(text)
        if not self.vq_interface:
            return tokens
        return None, None, [None, None, tokens]

    def decode(self, text: Any) -> Any:
        return text


def _sized_tokenizer(name: str, max_length: int, vocab_size: int) -> BERTTokenizer:
    """The ``name`` tokenizer, checked to produce only ids below ``vocab_size``."""
    tokenizer = BERTTokenizer(vq_interface=False, max_length=max_length, tokenizer=name)
    needed = len(tokenizer.tokenizer)
    if vocab_size < needed:
        raise ConfigError(
            f"BERTEmbedder: vocab_size={vocab_size} is smaller than the {name!r} tokenizer's "
            f"{needed} ids; set `vocab_size: {needed}` in the cond_stage_config params"
        )
    return tokenizer


class BERTEmbedder(AbstractEncoder):
    """Captions → ``BERTTokenizer`` ids → a transformer trained from scratch → ``(B, max_seq_len, n_embed)``.

    With ``use_tokenizer=False`` the input is already token ids ``(B, N)``. ``tokenizer`` selects the vocabulary
    (see ``BERTTokenizer``); ``vocab_size`` must cover it (30,522 for ``"bert"``, 49,408 for ``"clip"``).
    """

    def __init__(
        self,
        n_embed: int,
        n_layer: int,
        vocab_size: int = 30522,
        max_seq_len: int = 77,
        device: str = "cuda",
        use_tokenizer: bool = True,
        embedding_dropout: float = 0.0,
        tokenizer: str = "bert",
    ) -> None:
        super().__init__()
        self.use_tknz_fn = use_tokenizer
        if use_tokenizer:  # checked first: a vocabulary mismatch fails before the transformer is built
            self.tknz_fn = _sized_tokenizer(tokenizer, max_seq_len, vocab_size)
        layers = Encoder(dim=n_embed, depth=n_layer)
        self.transformer = TransformerWrapper(num_tokens=vocab_size, max_seq_len=max_seq_len, attn_layers=layers,
                                              emb_dropout=embedding_dropout)
        self.device = device

    def forward(self, text: str | Sequence[str] | torch.Tensor) -> torch.Tensor:
        tokens = self.tknz_fn(text) if self.use_tknz_fn else text
        return self.transformer(tokens.to(_module_device(self.transformer)), return_embeddings=True)

    def encode(self, text: str | Sequence[str] | torch.Tensor) -> torch.Tensor:
        return self(text)


def _clip_text_model(version: str) -> CLIPTextModel:
    on_meta = torch.empty(0).device.type == "meta"
    if on_meta:  # shapes only (from_pretrained refuses a meta device context): the config is enough
        config = load_pretrained(CLIPTextConfig, version)
        model = None if config is None else CLIPTextModel(config)
    else:
        model = load_pretrained(CLIPTextModel, version)
    if model is not None:
        return model
    if version != CLIP_L14:
        raise OSError(
            f"FrozenCLIPEmbedder: cannot load version={version!r} (not a local folder, not in the Hugging Face "
            f"cache, hub unreachable); download it once with network access, or use version: {CLIP_L14}"
        )
    if not on_meta:
        logger.warning(
            "FrozenCLIPEmbedder: %r is not in the Hugging Face cache and the hub is offline or unreachable; "
            "building its text tower from the known architecture with RANDOM weights. Load a Stable Diffusion "
            "checkpoint (cond_stage_model.transformer.*) to set them.",
            version,
        )
    return CLIPTextModel(vit_l14_text_config())


def _clip_tokenizer(version: str) -> CLIPTokenizer:
    tokenizer = load_pretrained(CLIPTokenizer, version, accept=has_vocabulary)
    if tokenizer is not None:
        return tokenizer
    logger.warning(
        "FrozenCLIPEmbedder: tokenizer of %r unavailable offline; using the CLIP BPE vocabulary shipped with ldm "
        "(same ids).",
        version,
    )
    return offline_clip_tokenizer()


#: The top-level parts of a CLIP text model; checkpoints written under transformers 5 name them without ``text_model.``.
TEXT_MODEL_PARTS = ("embeddings.", "encoder.", "final_layer_norm.")


class FrozenCLIPEmbedder(AbstractEncoder):
    """Captions → CLIP text transformer ``last_hidden_state`` ``(B, max_length, 768)`` (or the ``layer`` below),
    frozen (eval, no grad) unless ``freeze=False``.

    Tokens: CLIP BPE, ``<|startoftext|>`` … ``<|endoftext|>``, truncated / padded with ``<|endoftext|>`` to
    ``max_length``. Weights come from ``from_pretrained(version)`` (local folder, cache or hub); offline, the
    ViT-L/14 text tower is built with random weights and the shipped BPE vocabulary, for a checkpoint to fill.
    State-dict keys read ``transformer.text_model.<...>`` with transformers 4.x and 5.x alike. ``device`` is a plain
    attribute, assignable as in the original (``cond_stage_model.device = "cpu"``); token ids go to the device of
    the parameters, so the original's default ``"cuda"`` does not break CPU machines.
    """

    #: What ``forward`` returns (SD 2.x): the last hidden state, the pooled output ``(B, 1, D)``, or the hidden state
    #: of block ``layer_idx`` (``hidden_states[layer_idx]``: 0 is the embeddings, −1 the last block).
    LAYERS = ["last", "pooled", "hidden"]

    def __init__(
        self,
        version: str = CLIP_L14,
        device: str = "cuda",
        max_length: int = 77,
        freeze: bool = True,
        layer: str = "last",
        layer_idx: int | None = None,
    ) -> None:
        super().__init__()
        if layer not in self.LAYERS:
            raise ConfigError(f"FrozenCLIPEmbedder layer {layer!r} is unknown; use one of {self.LAYERS}")
        if layer == "hidden" and (layer_idx is None or not 0 <= abs(layer_idx) <= 12):
            raise ConfigError(f"FrozenCLIPEmbedder layer 'hidden' needs layer_idx in -12..12, got {layer_idx!r}")
        self.transformer = with_sd_layout(_clip_text_model(version))
        self.tokenizer = _clip_tokenizer(version)
        self.max_length = max_length
        self.device = device
        self.layer, self.layer_idx = layer, layer_idx
        if freeze:
            self.freeze()

    def freeze(self) -> None:
        """Eval mode and ``requires_grad=False`` for every parameter."""
        self.transformer = self.transformer.eval()
        for param in self.parameters():
            param.requires_grad = False

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any, **kwargs: Any) -> None:
        """Accept SD v1 checkpoints' ``transformer.text_model.embeddings.position_ids`` (int64 ``arange(77)``;
        transformers >= 4.31 keeps that buffer out of the state dict, so a strict load would call it unexpected),
        and the text-encoder keys of checkpoints converted from diffusers under transformers 5, which lack the
        ``text_model.`` level (``transformer.embeddings.*``, ``transformer.encoder.*``, ...)."""
        flat = f"{prefix}transformer."
        for key in [k for k in state_dict if k.startswith(flat) and k[len(flat) :].startswith(TEXT_MODEL_PARTS)]:
            state_dict[f"{flat}text_model.{key[len(flat):]}"] = state_dict.pop(key)
        if "position_ids" not in self.transformer.text_model.embeddings.state_dict():
            state_dict.pop(f"{prefix}transformer.text_model.embeddings.position_ids", None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, text: str | Sequence[str]) -> torch.Tensor:
        tokens = _tokenize(self.tokenizer, text, self.max_length).to(_module_device(self.transformer))
        outputs = self.transformer(input_ids=tokens, output_hidden_states=self.layer == "hidden")
        if self.layer == "last":
            return outputs.last_hidden_state
        if self.layer == "pooled":
            return outputs.pooler_output[:, None, :]
        return outputs.hidden_states[self.layer_idx]

    def encode(self, text: str | Sequence[str]) -> torch.Tensor:
        return self(text)


class FrozenCLIPT5Encoder(CLIPT5Pair):
    """Captions → ``[FrozenCLIPEmbedder features (B, clip_max_length, 768), FrozenT5Embedder features
    (B, t5_max_length, d_model)]`` (d_model 2048 for t5-v1_1-xl), both frozen; see ``CLIPT5Pair``."""

    def __init__(
        self,
        clip_version: str = CLIP_L14,
        t5_version: str = "google/t5-v1_1-xl",
        device: str = DEFAULT_DEVICE,
        clip_max_length: int = 77,
        t5_max_length: int = 77,
    ) -> None:
        t5 = FrozenT5Embedder(t5_version, device, max_length=t5_max_length)  # first: a missing vocabulary fails fast
        super().__init__(FrozenCLIPEmbedder(clip_version, device, max_length=clip_max_length), t5, device)
