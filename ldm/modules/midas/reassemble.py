"""DPT "reassemble": ViT tokens → a spatial feature map at the stride its decoder level expects.

Each ``TokenReassemble`` keeps the original checkpoint's layout of ``act_postprocess{k}`` (an ``nn.Sequential``
there): slot ``0`` the readout projection, slot ``3`` the 1x1 channel projection, slot ``4`` the optional
resampling (transposed conv up, strided conv down). Slots 1 and 2 held parameter-free reshapes.
"""

from __future__ import annotations

import torch
from torch import nn


class ProjectReadout(nn.Module):
    """Readout "project": every patch token is concatenated with the class token and projected back.

    ``t_i' = GELU(W [t_i ; t_cls] + b)`` for the patch tokens ``t_i``; ``(B, 1 + N, D)`` → ``(B, N, D)``.
    """

    def __init__(self, width: int, prefix_tokens: int = 1) -> None:
        super().__init__()
        self.prefix_tokens = prefix_tokens
        self.project = nn.Sequential(nn.Linear(2 * width, width), nn.GELU())

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        patches = tokens[:, self.prefix_tokens:]
        cls = tokens[:, :1].expand_as(patches)
        return self.project(torch.cat([patches, cls], dim=-1))


def _resampler(channels: int, rescale: float) -> nn.Module | None:
    if rescale == 1.0:
        return None
    if rescale > 1.0:
        factor = int(rescale)
        return nn.ConvTranspose2d(channels, channels, kernel_size=factor, stride=factor)
    if rescale == 0.5:
        return nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=1)
    raise ValueError(f"unsupported reassemble rescale {rescale}; use 4, 2, 1 or 0.5")


class TokenReassemble(nn.Module):
    """Tokens ``(B, 1 + gh*gw, D)`` → map ``(B, C, gh·s, gw·s)`` with ``s = rescale`` ∈ {4, 2, 1, 1/2}.

    readout projection → reshape to the ``(gh, gw)`` grid → 1x1 conv ``D → C`` → resample.
    """

    def __init__(self, token_width: int, channels: int, rescale: float) -> None:
        super().__init__()
        self.add_module("0", ProjectReadout(token_width))
        self.add_module("3", nn.Conv2d(token_width, channels, kernel_size=1))
        resample = _resampler(channels, rescale)
        if resample is not None:
            self.add_module("4", resample)

    def forward(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        patches = self._modules["0"](tokens)  # (B, gh*gw, D)
        fmap = patches.transpose(1, 2).unflatten(2, grid)  # (B, D, gh, gw)
        fmap = self._modules["3"](fmap)  # (B, C, gh, gw)
        resample = self._modules.get("4")
        return fmap if resample is None else resample(fmap)
