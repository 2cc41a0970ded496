"""CLIP score (Hessel et al. 2021, as reported by text-to-image papers): how well images match their prompts,

    CLIPScore = mean_i 100 · max(cos(E_I(xᵢ), E_T(cᵢ)), 0)

with E_I / E_T the image and text towers of a CLIP model (commonly ViT-L/14, 224 px). Runs on ``open_clip`` with
any model whose weights are on disk: ``OpenClipScorer.from_pretrained("ViT-L-14", "openai")`` reads open_clip's
local cache (never downloads; missing weights are an error, never random weights).

Images go in as ``(B, 3, H, W)`` uint8; they are resized (shorter side, bicubic with antialiasing) and centre
cropped to the model's input size, scaled to [0, 1] and normalised with the model's mean and std, which is
open_clip's evaluation transform done on tensors.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import open_clip
import torch
import torch.nn.functional as F
from torch import nn

from ldm.modules.encoders.openclip_embedders import local_weights, registered_arch

#: open_clip's default normalisation (OpenAI CLIP's), used when a model carries no preprocessing config.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def clip_score(image_embeddings: torch.Tensor, text_embeddings: torch.Tensor) -> torch.Tensor:
    """Per-pair ``100 · max(cos(e_I, e_T), 0)`` for matching rows of ``(B, E)`` image and text embeddings → ``(B,)``."""
    if image_embeddings.shape != text_embeddings.shape or image_embeddings.ndim != 2:
        raise ValueError(f"CLIP score needs two (B, E) embeddings of one shape, got {tuple(image_embeddings.shape)} "
                         f"and {tuple(text_embeddings.shape)}")
    cosine = F.cosine_similarity(image_embeddings.float(), text_embeddings.float(), dim=1)
    return 100.0 * cosine.clamp_min(0.0)


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


class OpenClipScorer(nn.Module):
    """A CLIP model (anything with ``encode_image`` / ``encode_text``, e.g. open_clip's ``CLIP``) and its tokenizer
    as a scorer of (image, prompt) pairs."""

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Callable[[list[str]], torch.Tensor],
        image_size: int | Sequence[int] = 224,
        mean: Sequence[float] = CLIP_MEAN,
        std: Sequence[float] = CLIP_STD,
    ) -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.image_size = _pair(image_size)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    @classmethod
    def from_open_clip(cls, model: nn.Module, arch: str) -> OpenClipScorer:
        """Scorer for an open_clip ``model`` of architecture ``arch``, with its tokenizer and preprocessing config."""
        config = getattr(model.visual, "preprocess_cfg", {}) or {}
        size = config.get("size", getattr(model.visual, "image_size", 224))
        mean, std = config.get("mean", CLIP_MEAN), config.get("std", CLIP_STD)
        return cls(model, open_clip.get_tokenizer(arch), size, mean, std)

    @classmethod
    def from_pretrained(cls, arch: str = "ViT-L-14", weights: str = "openai") -> OpenClipScorer:
        """open_clip model ``arch`` with ``weights`` (a pretrained tag already in the local cache, or a checkpoint
        file); missing weights raise ``FileNotFoundError`` naming the fix."""
        name = registered_arch(arch)
        found = local_weights(name, weights)
        if not found:
            raise FileNotFoundError(f"CLIP weights {arch}/{weights} are not on this machine; download them once with "
                                    f"open_clip.create_model({arch!r}, pretrained={weights!r}) or pass a checkpoint "
                                    "file as the weights")
        return cls.from_open_clip(open_clip.create_model(name, pretrained=found), name)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``(B, 3, H, W)`` → normalised ``(B, 3, h, w)`` at the model's input size (resize, centre crop)."""
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"CLIP score expects uint8 images (B, 3, H, W), got {images.dtype} {tuple(images.shape)}")
        height, width = self.image_size
        x = images.to(self.mean.device, torch.float32) / 255.0
        scale = max(height / x.shape[-2], width / x.shape[-1])
        resized = (max(height, round(x.shape[-2] * scale)), max(width, round(x.shape[-1] * scale)))
        x = F.interpolate(x, size=resized, mode="bicubic", align_corners=False, antialias=True).clamp(0.0, 1.0)
        top, left = (resized[0] - height) // 2, (resized[1] - width) // 2
        x = x[:, :, top : top + height, left : left + width]
        return (x - self.mean) / self.std

    @torch.no_grad()
    def image_embeddings(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, E)`` image embeddings of uint8 images ``(B, 3, H, W)``."""
        return self.model.encode_image(self.preprocess(images)).float()

    @torch.no_grad()
    def text_embeddings(self, prompts: Sequence[str]) -> torch.Tensor:
        """``(B, E)`` text embeddings of ``B`` prompts."""
        tokens = self.tokenizer(list(prompts)).to(self.mean.device)
        return self.model.encode_text(tokens).float()

    def forward(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """Per-pair CLIP scores ``(B,)`` of uint8 images ``(B, 3, H, W)`` and their ``B`` prompts."""
        if len(prompts) != len(images):
            raise ValueError(f"CLIP score needs one prompt per image, got {len(prompts)} prompts for {len(images)} "
                             "images")
        return clip_score(self.image_embeddings(images), self.text_embeddings(prompts))
