"""OpenAI CLIP conditioners of the original latent-diffusion (retrieval-augmented models, ``knn2img.py``), on
``open_clip_torch`` instead of OpenAI's ``clip`` package.

- ``FrozenCLIPTextEmbedder``: caption → CLIP text embedding ``(B, D)``, unit-norm by default; ``encode`` gives
  ``(B, n_repeat, D)``.
- ``FrozenClipImageEmbedder``: image in ``[-1, 1]`` → CLIP image embedding ``(B, D)``.

Both keep the whole OpenAI CLIP model (image and text towers, OpenAI's key names) under ``model.*``, as
``clip.load`` gave it. Model names are OpenAI's (``"ViT-L/14"``, ``"ViT-B/32"``, ``"RN50"``, ``"ViT-L/14@336px"``,
...) or open_clip's (``"ViT-L-14"``), or the path of an OpenAI weights file. Weights come from the file ``clip.load``
downloaded (``~/.cache/clip/ViT-L-14.pt``, ...); nothing is ever downloaded here. Without that file the
architecture is built with random weights and one warning names the file and where to put it (the convention of
the other offline-built conditioners: a checkpoint holding ``cond_stage_model.model.*`` then sets them).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from open_clip.model import build_model_from_openai_state_dict
from torch import nn

from ldm.modules.encoders.clip_image import (
    CLIP_MEAN,
    CLIP_STD,
    clip_input,
    default_device,
    model_input_size,
    openai_weights_path,
    read_openai_state_dict,
)
from ldm.modules.encoders.frozen import DEFAULT_DEVICE, FrozenModule

logger = logging.getLogger(__name__)

#: The model names of OpenAI's ``clip`` package (``clip.available_models()``).
OPENAI_NAMES = ("RN50", "RN101", "RN50x4", "RN50x16", "RN50x64", "ViT-B/32", "ViT-B/16", "ViT-L/14", "ViT-L/14@336px")
#: The suffix OpenAI gives its 336-pixel ViT-L/14; open_clip calls that model ``"ViT-L-14-336"``.
OPENAI_336_SUFFIX = "@336px"


def open_clip_arch(name: str) -> str:
    """An OpenAI ``clip`` model name → the open_clip architecture of the same network.

    ``"ViT-L/14"`` → ``"ViT-L-14"``, ``"ViT-L/14@336px"`` → ``"ViT-L-14-336"``, ``"RN50"`` → ``"RN50"``; open_clip
    names pass unchanged. Raises ``ValueError`` for a name open_clip has no architecture for.
    """
    arch = name.replace("/", "-")
    if arch.endswith(OPENAI_336_SUFFIX):
        arch = arch.removesuffix(OPENAI_336_SUFFIX) + "-336"
    if arch not in open_clip.list_models():
        raise ValueError(
            f"{name!r} is neither an OpenAI CLIP model name ({', '.join(OPENAI_NAMES)}), an open_clip architecture, "
            "nor an existing weights file; use one of those names or the path of the .pt file"
        )
    return arch


def _clip_from_file(path: Path) -> nn.Module:
    """The OpenAI CLIP in ``path`` (TorchScript archive or state dict), architecture read off its weights, in fp32.

    As ``clip.load`` does, the weights go through the half-precision model OpenAI's files describe (its linear,
    convolution and attention weights are float16), so float32 values there are rounded to float16.
    """
    weights = read_openai_state_dict(path)
    return build_model_from_openai_state_dict(weights, quick_gelu=True, cast_dtype=None).float().eval()


def load_openai_clip(name: str, owner: str) -> nn.Module:
    """An OpenAI CLIP model (both towers, QuickGELU, fp32, eval) as an open_clip ``CLIP``, for conditioner ``owner``.

    ``name``: a weights file, or a model name whose weights are read from :func:`openai_weights_path`; when that
    file is absent, the architecture is built with random weights and a one-line warning names the file to put there.
    Inside ``with torch.device("meta")`` a named model is built for its shapes only, with no file read.
    """
    given = Path(name).expanduser()
    if given.is_file():
        return _clip_from_file(given)
    arch = open_clip_arch(name)
    target = default_device()
    if target.type != "meta":
        cached = openai_weights_path(arch)
        if cached.is_file():
            return _clip_from_file(cached)
        logger.warning(
            "%s: OpenAI CLIP weights for %r not found at %s (never downloaded here); built with RANDOM weights. Put "
            "the file clip.load downloads there (or pass its path as the model name), or load a checkpoint with them.",
            owner,
            name,
            cached,
        )
    return open_clip.create_model(arch, pretrained=None, force_quick_gelu=True, device=target).eval()


class FrozenCLIPTextEmbedder(FrozenModule):
    """Captions → OpenAI CLIP text embedding ``z = encode_text(ids)`` ``(B, D)`` (768 for ViT-L/14), divided by
    ``‖z‖₂`` when ``normalize``; frozen (eval, no gradients).

    ``ids``: CLIP BPE ``<|startoftext|> … <|endoftext|>`` padded with 0 to the context length (77), as
    ``clip.tokenize``; longer captions are truncated (ending in ``<|endoftext|>``) where ``clip.tokenize`` raises.
    ``encode`` returns ``z`` as one token repeated ``n_repeat`` times, ``(B, n_repeat, D)``. ``max_length`` is
    stored, unused (the ids span the context length, as in the original). ``device`` is a plain attribute, assignable
    (``cond_stage_model.device = "cpu"``); ids go to the device of the weights, whatever it says.
    """

    def __init__(
        self,
        version: str = "ViT-L/14",
        device: str = DEFAULT_DEVICE,
        max_length: int = 77,
        n_repeat: int = 1,
        normalize: bool = True,
    ) -> None:
        super().__init__()
        self.model = load_openai_clip(version, type(self).__name__)
        self.device, self.max_length = device, max_length
        self.n_repeat, self.normalize = n_repeat, normalize
        self.freeze()

    def tokenize(self, text: str | Sequence[str]) -> torch.Tensor:
        """Captions → ids ``(B, context_length)`` int64 on the weights' device."""
        positions = self.model.positional_embedding
        return open_clip.tokenize(text, context_length=positions.shape[0]).to(positions.device)

    def forward(self, text: str | Sequence[str]) -> torch.Tensor:
        """``(B, D)``: the projected ``<|endoftext|>`` feature, ``z / ‖z‖₂`` when ``normalize``."""
        z = self.model.encode_text(self.tokenize(text))
        return F.normalize(z, dim=-1) if self.normalize else z

    def encode(self, text: str | Sequence[str]) -> torch.Tensor:
        """``(B, n_repeat, D)``: ``forward(text)`` as one context token, repeated ``n_repeat`` times."""
        z = self(text)
        as_tokens = z.unsqueeze(1) if z.dim() == 2 else z
        return as_tokens.repeat(1, self.n_repeat, 1)


class FrozenClipImageEmbedder(FrozenModule):
    """Image ``(B, 3, H, W)`` in ``[-1, 1]`` → OpenAI CLIP ``encode_image`` ``(B, D)`` (768 for ViT-L/14); frozen.

    Preprocessing (:meth:`preprocess`): bicubic resize (``align_corners=True``) to the image tower's input size, 224
    for every OpenAI model but ``ViT-L/14@336px``, Gaussian-antialiased first when ``antialias``; then
    ``x ↦ (x + 1)/2`` and ``(x − mean)/std`` with CLIP's per-channel statistics. ``model``: a model name or weights
    file (see :func:`load_openai_clip`). ``jit`` is accepted and ignored (the model is always an eager fp32 module).
    ``device`` is a plain, assignable attribute; the weights are built where new tensors go and move with ``.to()``.
    """

    def __init__(self, model: str, jit: bool = False, device: str = DEFAULT_DEVICE, antialias: bool = False) -> None:
        super().__init__()
        self.model = load_openai_clip(model, type(self).__name__)
        self.device = device
        self.antialias = antialias
        self.register_buffer("mean", torch.tensor(CLIP_MEAN), persistent=False)
        self.register_buffer("std", torch.tensor(CLIP_STD), persistent=False)
        self.freeze()

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` in ``[-1, 1]`` → the normalised tower input ``(B, 3, 224, 224)``."""
        return clip_input(x, model_input_size(self.model.visual), self.mean, self.std, self.antialias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``encode_image(preprocess(x))`` ``(B, D)``."""
        return self.model.encode_image(self.preprocess(x))
