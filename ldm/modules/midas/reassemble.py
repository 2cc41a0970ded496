"""DPT "reassemble": ViT tokens → a spatial feature map at the stride its decoder level expects.

Each ``TokenReassemble`` keeps the original checkpoint's layout of ``act_postprocess{k}`` (an ``nn.Sequential``
there): slot ``0`` the readout operation, slot ``3`` the 1x1 channel projection, slot ``4`` the optional
resampling (transposed conv up, strided conv down). Slots 1 and 2 held parameter-free reshapes.

The readout decides what the class ("readout") token(s) in front of the ``N`` patch tokens contribute:
"ignore" drops them, "add" adds them to every patch token, "project" concatenates and projects (DPT's default).
"""

from __future__ import annotations

import torch
from torch import nn


class Slice(nn.Module):
    """Readout "ignore": ``(B, start_index + N, D)`` → the patch tokens ``(B, N, D)``."""

    def __init__(self, start_index: int = 1) -> None:
        super().__init__()
        self.start_index = start_index

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens[:, self.start_index:]


class AddReadout(nn.Module):
    """Readout "add": ``t_i' = t_i + r`` with ``r`` the class token (the mean of the class and distillation
    tokens when ``start_index == 2``); ``(B, start_index + N, D)`` → ``(B, N, D)``."""

    def __init__(self, start_index: int = 1) -> None:
        super().__init__()
        self.start_index = start_index

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        readout = tokens[:, :2].mean(dim=1) if self.start_index == 2 else tokens[:, 0]
        return tokens[:, self.start_index:] + readout[:, None]


class ProjectReadout(nn.Module):
    """Readout "project": every patch token is concatenated with the class token and projected back.

    ``t_i' = GELU(W [t_i ; t_cls] + b)`` for the patch tokens ``t_i`` (those from ``start_index`` on);
    ``(B, start_index + N, D)`` → ``(B, N, D)``.
    """

    def __init__(self, in_features: int, start_index: int = 1) -> None:
        super().__init__()
        self.start_index = start_index
        self.project = nn.Sequential(nn.Linear(2 * in_features, in_features), nn.GELU())

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        patches = tokens[:, self.start_index:]
        cls = tokens[:, :1].expand_as(patches)
        return self.project(torch.cat([patches, cls], dim=-1))


READOUTS = ("ignore", "add", "project")


def make_readout(kind: str, width: int, start_index: int = 1) -> nn.Module:
    """The readout module for ``kind`` in :data:`READOUTS` on tokens of ``width`` channels."""
    if kind == "ignore":
        return Slice(start_index)
    if kind == "add":
        return AddReadout(start_index)
    if kind == "project":
        return ProjectReadout(width, start_index)
    raise ValueError(f"unknown readout {kind!r}; use one of {READOUTS}")


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

    readout (``make_readout(readout)``) → reshape to the ``(gh, gw)`` grid → 1x1 conv ``D → C`` → resample.
    """

    def __init__(self, token_width: int, channels: int, rescale: float, readout: str = "project") -> None:
        super().__init__()
        self.add_module("0", make_readout(readout, token_width))
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
