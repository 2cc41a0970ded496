"""The ViT side of DPT under its original names: readout operations, the flexible-size ViT forward and hooks.

The readout modules and the position-embedding resampling live in ``reassemble`` / ``backbone``; this module adds
what the original exposes on top: ``forward_vit`` (the four maps of a DPT encoder), ``forward_flex`` (a timm ViT
at any input size), ``get_activation`` / ``activations`` (forward hooks that record outputs by name), ``Transpose``
and ``get_readout_oper``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from ldm.modules.midas.backbone import embed_tokens
from ldm.modules.midas.reassemble import AddReadout as AddReadout
from ldm.modules.midas.reassemble import ProjectReadout as ProjectReadout
from ldm.modules.midas.reassemble import Slice as Slice
from ldm.modules.midas.reassemble import make_readout

#: Outputs recorded by the hooks of :func:`get_activation`, by name (one dict shared by every hook).
activations: dict[str, Any] = {}


class Transpose(nn.Module):
    """``x.transpose(dim0, dim1)`` as a module (tokens ``(B, N, D)`` → ``(B, D, N)`` with ``(1, 2)``)."""

    def __init__(self, dim0: int, dim1: int) -> None:
        super().__init__()
        self.dim0 = dim0
        self.dim1 = dim1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.transpose(self.dim0, self.dim1)


def get_activation(name: str) -> Callable[[nn.Module, Any, Any], None]:
    """A forward hook that stores the module's output in ``activations[name]`` on every call.

    Use: ``vit.blocks[5].register_forward_hook(get_activation("1"))``; after a forward ``activations["1"]`` holds
    that block's output tokens ``(B, 1 + N, D)``.
    """

    def record(module: nn.Module, inputs: Any, output: Any) -> None:
        activations[name] = output

    return record


def get_readout_oper(vit_features: int, features: Sequence[int], use_readout: str,
                     start_index: int = 1) -> list[nn.Module]:
    """One readout module per entry of ``features`` for tokens of ``vit_features`` channels.

    ``use_readout``: "ignore" (``Slice``), "add" (``AddReadout``) or "project" (``ProjectReadout``, the only one
    with weights); ``start_index`` is the number of readout tokens in front of the patch tokens.
    """
    return [make_readout(use_readout, vit_features, start_index) for _ in features]


def forward_flex(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A timm ``VisionTransformer`` (``self``) on an image of any size: ``(B, 3, H, W)`` → ``(B, P + N, D)``.

    The image (or, for a hybrid ViT, the output of ``patch_embed.backbone``; its last map if it returns several)
    is projected to ``N = (H/16)·(W/16)`` patch tokens, the ``P`` class / distillation tokens are put in front,
    the position embedding is resampled bilinearly to the token grid, and every block and the final norm run.
    Hooks registered with :func:`get_activation` on the blocks record their outputs on the way.
    """
    embed = self.patch_embed
    features = embed.backbone(x) if hasattr(embed, "backbone") else x
    if isinstance(features, (list, tuple)):
        features = features[-1]
    return self.norm(self.blocks(embed_tokens(self, features)))


def forward_vit(pretrained: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The four encoder maps of a DPT ``pretrained`` (``DPT.pretrained``, a ``ViTFeatureEncoder``) for ``x``.

    ``(B, 3, H, W)`` with ``H, W`` multiples of 32 → maps at strides 4, 8, 16, 32 with the backbone's widths
    (e.g. 256, 512, 768, 768 for "vitb_rn50_384").
    """
    return tuple(pretrained(x))
