"""CLIP image conditioning for unCLIP: image in ``[-1, 1]`` → CLIP image embedding ``(B, D)``.

- ``clip_input(x, size, mean, std, antialias)``: the preprocessing both image embedders share.
- ``drop_whole_embeddings(z, rate)``: unconditional-guidance dropout of whole embeddings.
- ``ClipImageEmbedder``: the OpenAI CLIP image encoder (unCLIP-L uses ViT-L/14), built with ``open_clip``.
"""

from __future__ import annotations

import logging
import os
import zipfile
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from open_clip.model import build_model_from_openai_state_dict
from open_clip.pretrained import get_pretrained_cfg
from torch import nn

from ldm.checkpoint import load_torch_object

logger = logging.getLogger(__name__)

#: Per-channel RGB statistics of OpenAI CLIP's training images (also used by the OpenCLIP image embedder).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
#: Where OpenAI's ``clip.load`` keeps the files it downloads.
OPENAI_CACHE = Path("~/.cache/clip")


def _gaussian_taps(length: int, sigma: float, like: torch.Tensor) -> torch.Tensor:
    """Normalised samples of ``exp(-u²/2σ²)`` at the integer offsets ``u = -(length-1)/2 … (length-1)/2``."""
    offsets = torch.arange(length, dtype=like.dtype, device=like.device) - (length - 1) / 2
    taps = torch.exp(-offsets.square() / (2.0 * sigma**2))
    return taps / taps.sum()


def _blur_along(x: torch.Tensor, sigma: float, dim: int) -> torch.Tensor:
    """Gaussian blur of ``(B, C, H, W)`` along ``dim`` (2 = H, 3 = W), reflect border, ``2σ``-radius odd kernel."""
    length = max(int(4.0 * sigma), 3)
    length += 1 - length % 2
    taps = _gaussian_taps(length, sigma, x)
    channels = x.shape[1]
    kernel_shape = (channels, 1, length, 1) if dim == 2 else (channels, 1, 1, length)
    half = length // 2
    padding = (0, 0, half, half) if dim == 2 else (half, half, 0, 0)
    padded = F.pad(x, padding, mode="reflect")
    return F.conv2d(padded, taps.expand(channels, length).reshape(kernel_shape), groups=channels)


def resize_bicubic(x: torch.Tensor, size: tuple[int, int], antialias: bool = True) -> torch.Tensor:
    """Bicubic resize of ``(B, C, H, W)`` to ``size`` with ``align_corners=True`` (kornia's ``resize``).

    When shrinking and ``antialias`` is set, the image is first low-passed by a Gaussian of
    ``σ = max((H/h − 1)/2, 0.001)`` per axis (scikit-image's choice) whose odd kernel spans ``±2σ`` (at least 3 taps).
    An image already at ``size`` is returned as is.
    """
    height, width = x.shape[-2:]
    if (height, width) == tuple(size):
        return x
    factors = (height / size[0], width / size[1])
    if antialias and max(factors) > 1:
        for dim, factor in zip((2, 3), factors, strict=True):
            x = _blur_along(x, max((factor - 1.0) / 2.0, 0.001), dim)
    return F.interpolate(x, size=tuple(size), mode="bicubic", align_corners=True)


def clip_input(
    x: torch.Tensor, size: tuple[int, int], mean: torch.Tensor, std: torch.Tensor, antialias: bool = True
) -> torch.Tensor:
    """Image ``(B, 3, H, W)`` in ``[-1, 1]`` → CLIP input ``(B, 3, *size)``: ``((resize(x) + 1)/2 − mean) / std``."""
    unit = (resize_bicubic(x, size, antialias) + 1.0) / 2.0
    return (unit - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)


def drop_whole_embeddings(z: torch.Tensor, rate: float) -> torch.Tensor:
    """``z * m`` with one ``m_b ~ Bernoulli(1 − rate)`` per sample: zeroes a whole embedding with probability ``rate``.

    Draws the mask with ``torch.bernoulli`` on a ``(B,)`` tensor (the original's random stream).
    """
    keep = torch.bernoulli(torch.full((z.shape[0],), 1.0 - rate, device=z.device))
    return z * keep.view(-1, *([1] * (z.dim() - 1))).to(z.dtype)


def model_input_size(visual: nn.Module) -> tuple[int, int]:
    """The ``(H, W)`` an open_clip image tower takes (224 × 224 for every SD 2.x embedder)."""
    size = getattr(visual, "image_size", 224)
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def default_device() -> torch.device:
    """The device new tensors land on (``meta`` inside ``with torch.device("meta")``)."""
    return torch.empty(0).device


# --------------------------------------------------------------------------------------------------------------------
# OpenAI CLIP built with open_clip
# --------------------------------------------------------------------------------------------------------------------


def _open_clip_name(openai_name: str) -> str:
    """OpenAI's model name → open_clip's architecture name: ``"ViT-L/14@336px"`` → ``"ViT-L-14-336"``."""
    return openai_name.replace("@336px", "-336").replace("/", "-")


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.split("/", 2)[1:2] == ["code"] for name in archive.namelist())


def read_openai_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The state dict in an OpenAI CLIP file: the TorchScript archive ``clip.load`` downloads, or a plain
    ``torch.save``-d state dict (loaded with ``weights_only=True``; a ``{"state_dict": ...}`` wrapper is unwrapped)."""
    path = Path(path)
    if _is_torchscript(path):
        return dict(torch.jit.load(str(path), map_location="cpu").state_dict())
    content = load_torch_object(path)
    if isinstance(content, dict) and isinstance(content.get("state_dict"), dict):
        content = content["state_dict"]
    if not isinstance(content, dict) or "visual.conv1.weight" not in content:
        raise ValueError(
            f"ClipImageEmbedder: {path} holds no OpenAI CLIP state dict (no 'visual.conv1.weight'); pass the .pt "
            "file clip.load downloads or a torch.save(model.state_dict()) of an OpenAI CLIP model"
        )
    return content


def openai_weights_path(arch: str) -> Path:
    """Where OpenAI's ``clip.load`` keeps the weights of ``arch``: ``~/.cache/clip/`` + the file name of their
    download URL (``ViT-L-14.pt``, ``RN50.pt``, ``ViT-L-14-336px.pt``; ``<arch>.pt`` for other architectures)."""
    url = get_pretrained_cfg(arch, "openai").get("url")
    file_name = os.path.basename(url) if url else f"{arch}.pt"
    return OPENAI_CACHE.expanduser() / file_name


def openai_clip(model: str) -> nn.Module:
    """An OpenAI CLIP model (QuickGELU, both towers, fp32, eval) as an open_clip ``CLIP``.

    ``model`` is a file (see ``read_openai_state_dict``; the architecture is read off the weights) or an OpenAI name
    (``"ViT-L/14"``, ``"RN50"``, …): then the weights come from ``~/.cache/clip/<name>.pt`` when ``clip.load`` left
    them there, else the architecture is built with random weights for a checkpoint to fill (never downloads).
    """
    local = Path(model).expanduser()
    on_meta = default_device().type == "meta"
    if not local.is_file() and not on_meta:
        cached = openai_weights_path(_open_clip_name(model))
        local = cached if cached.is_file() else local
    if local.is_file() and not on_meta:
        state = read_openai_state_dict(local)
        return build_model_from_openai_state_dict(state, quick_gelu=True, cast_dtype=None).float().eval()
    arch = _open_clip_name(model)
    if arch not in open_clip.list_models():
        raise ValueError(
            f"ClipImageEmbedder: model={model!r} is neither a file nor an OpenAI CLIP name open_clip knows "
            f"(as {arch!r}); use e.g. 'ViT-L/14' or the path of its .pt file"
        )
    if not on_meta:
        logger.warning(
            "ClipImageEmbedder: no local weights for %r (%s absent, never downloaded); built with RANDOM weights. "
            "Load the unCLIP checkpoint (embedder.model.*) or pass the path of the OpenAI .pt file as `model`.",
            model,
            OPENAI_CACHE / f"{arch}.pt",
        )
    built = open_clip.create_model(arch, pretrained=None, force_quick_gelu=True, device=default_device())
    return built.eval()


class CLIPImageInput(nn.Module):
    """The input side of the CLIP image embedders: x ∈ [-1, 1] → :func:`clip_input` at the image tower's size, and
    the guidance dropout of whole embeddings. Subclasses keep the CLIP model as ``self.model`` (with ``visual``)
    and call :meth:`keep_image_settings` in their ``__init__``."""

    def keep_image_settings(self, antialias: bool, ucg_rate: float) -> None:
        """Store ``antialias`` and ``ucg_rate``; the CLIP mean/std become non-persistent ``(3,)`` buffers."""
        self.antialias = antialias
        self.ucg_rate = ucg_rate
        self.register_buffer("mean", torch.tensor(CLIP_MEAN), persistent=False)
        self.register_buffer("std", torch.tensor(CLIP_STD), persistent=False)

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` in ``[-1, 1]`` → normalised ``(B, 3, 224, 224)`` (the image tower's input size)."""
        return clip_input(x, model_input_size(self.model.visual), self.mean, self.std, self.antialias)

    def guidance_dropout(self, z: torch.Tensor, no_dropout: bool = False) -> torch.Tensor:
        """``z`` ``(B, ...)`` with each sample zeroed with probability ``ucg_rate`` (:func:`drop_whole_embeddings`);
        unchanged when ``ucg_rate`` is 0 or ``no_dropout``."""
        if self.ucg_rate > 0.0 and not no_dropout:
            return drop_whole_embeddings(z, self.ucg_rate)
        return z


class ClipImageEmbedder(CLIPImageInput):
    """Image ``(B, 3, H, W)`` in ``[-1, 1]`` → OpenAI CLIP ``encode_image`` ``(B, embed_dim)`` (768 for ViT-L/14).

    ``x → clip_input(x) → model.encode_image``, cast back to ``x.dtype``; in ``forward``, with ``ucg_rate > 0`` and
    not ``no_dropout``, each embedding is zeroed with probability ``ucg_rate``. ``model``: an OpenAI name or a
    local weights file (see ``openai_clip``). ``jit`` and ``device`` are accepted for config compatibility: the
    model is an eager fp32 module built where new tensors go; ``.to(...)`` moves it like any module.
    """

    def __init__(
        self,
        model: str,
        jit: bool = False,
        device: str = "cuda" if torch.cuda.is_available() else "cpu",
        antialias: bool = True,
        ucg_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.model = openai_clip(model)
        self.keep_image_settings(antialias, ucg_rate)

    def forward(self, x: torch.Tensor, no_dropout: bool = False) -> torch.Tensor:
        """``encode_image(preprocess(x))`` ``(B, D)`` in ``x.dtype``, with unconditional-guidance dropout."""
        return self.guidance_dropout(self.model.encode_image(self.preprocess(x)).to(x.dtype), no_dropout)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self(x)
