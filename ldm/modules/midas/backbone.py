"""The DPT encoder: a timm ViT (optionally on a ResNet stem) read out at four depths.

For an image ``(B, 3, H, W)`` with ``H, W`` multiples of 32 the encoder returns four maps at strides 4, 8, 16, 32.
Maps come either from ResNet stages of a hybrid ViT (already spatial) or from ViT blocks (tokens, turned into maps
by ``reassemble.TokenReassemble``). Inputs of any size work because the ViT's position embedding is resampled
bilinearly to the token grid ``(H/16, W/16)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ldm.modules.midas.reassemble import TokenReassemble

PATCH = 16  # every DPT backbone turns 16x16 pixels into one token
STRIDE_MULTIPLE = 32  # the deepest map (stride 32) is fused back onto the stride-16 grid


def resize_pos_embed(pos_embed: torch.Tensor, grid: tuple[int, int], prefix_tokens: int = 1) -> torch.Tensor:
    """Resample a ViT position embedding to a new token grid.

    ``pos_embed`` is ``(1, prefix + g*g, D)``: the ``prefix`` (class-token) rows are kept, the ``g x g`` grid is
    treated as a ``D``-channel image and resized bilinearly (half-pixel centres, ``align_corners=False``) to
    ``grid = (gh, gw)``. Returns ``(1, prefix + gh*gw, D)``; unchanged when the grid already matches.
    """
    prefix, table = pos_embed[:, :prefix_tokens], pos_embed[:, prefix_tokens:]
    side = int(round(table.shape[1] ** 0.5))
    if side * side != table.shape[1]:
        raise ValueError(f"position embedding has {table.shape[1]} grid rows, not a square grid")
    if (side, side) == tuple(grid):
        return pos_embed
    image = table.reshape(1, side, side, -1).permute(0, 3, 1, 2)  # (1, D, g, g)
    image = F.interpolate(image, size=tuple(grid), mode="bilinear", align_corners=False)
    return torch.cat([prefix, image.flatten(2).transpose(1, 2)], dim=1)


def embed_tokens(vit: nn.Module, features: torch.Tensor) -> torch.Tensor:
    """The ViT's token sequence before its first block, at any input size.

    ``features`` ``(B, C, h, w)`` (the image, or the hybrid's ResNet output) → ``proj`` → ``(B, gh*gw, D)``
    patch tokens, preceded by the class token (and the distillation token of a distilled ViT), plus the position
    embedding resampled to ``(gh, gw)`` (:func:`resize_pos_embed`), then ``pos_drop``: ``(B, P + gh*gw, D)``.
    """
    grid = vit.patch_embed.proj(features)  # (B, D, gh, gw)
    tokens = grid.flatten(2).transpose(1, 2)  # (B, gh*gw, D)
    prefix = [vit.cls_token] + ([vit.dist_token] if getattr(vit, "dist_token", None) is not None else [])
    prefix = [token.expand(tokens.shape[0], -1, -1) for token in prefix]
    pos = resize_pos_embed(vit.pos_embed, (grid.shape[-2], grid.shape[-1]), prefix_tokens=len(prefix))
    return vit.pos_drop(torch.cat([*prefix, tokens], dim=1) + pos)


class ViTFeatureEncoder(nn.Module):
    """``pretrained`` of the DPT checkpoints: the timm ViT as ``model`` plus ``act_postprocess{1..4}``.

    :param vit: a timm ``VisionTransformer`` with a class token (hybrid: ``patch_embed.backbone`` a ResNetV2).
    :param stage_taps: ResNet stages whose outputs are the first maps (hybrid only; ``()`` for a plain ViT).
    :param block_taps: ViT blocks whose outputs give the remaining maps.
    :param widths: channels of the four maps after reassembly.
    :param readout: what the class token contributes to the token maps ("ignore", "add" or "project").
    """

    def __init__(self, vit: nn.Module, stage_taps: Sequence[int], block_taps: Sequence[int],
                 widths: Sequence[int], readout: str = "project") -> None:
        super().__init__()
        if len(stage_taps) + len(block_taps) != 4 or len(widths) != 4:
            raise ValueError("DPT reads exactly four feature maps: len(stage_taps) + len(block_taps) == 4")
        self.model = vit
        self.stage_taps = tuple(stage_taps)
        self.block_taps = tuple(block_taps)
        token_width = vit.embed_dim
        # Level k (0..3) leaves the encoder at stride 4 * 2**k; token maps start at stride 16.
        for level in range(len(self.stage_taps), 4):
            rescale = {0: 4.0, 1: 2.0, 2: 1.0, 3: 0.5}[level]
            self.add_module(f"act_postprocess{level + 1}",
                            TokenReassemble(token_width, widths[level], rescale, readout))

    @property
    def is_hybrid(self) -> bool:
        return bool(self.stage_taps)

    def tap(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Run the network once and collect ``(stage maps, block tokens)`` at the tapped depths.

        Stage maps are ``(B, C_s, H/4·2**s, ...)``; block tokens are ``(B, 1 + gh*gw, D)`` with the class token
        first, ``(gh, gw) = (H/16, W/16)``. Blocks after the last tap are not run.
        """
        vit = self.model
        stage_maps: list[torch.Tensor] = []
        if self.is_hybrid:
            resnet = vit.patch_embed.backbone
            h = resnet.stem(x)
            for index, stage in enumerate(resnet.stages):
                h = stage(h)
                if index in self.stage_taps:
                    stage_maps.append(h)
            h = resnet.norm(h)  # identity for the non-pre-activation ResNetV2 of these models
        else:
            h = x
        tokens = embed_tokens(vit, h)  # (B, 1 + gh*gw, D)
        block_tokens: list[torch.Tensor] = []
        for index, block in enumerate(vit.blocks[: max(self.block_taps) + 1]):
            tokens = block(tokens)
            if index in self.block_taps:
                block_tokens.append(tokens)
        return stage_maps, block_tokens

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``(B, 3, H, W)`` → four maps ``(B, widths[k], H / (4·2**k), W / (4·2**k))``, ``k = 0..3``."""
        height, width = x.shape[-2:]
        if height % STRIDE_MULTIPLE or width % STRIDE_MULTIPLE:
            raise ValueError(f"MiDaS DPT needs height and width divisible by {STRIDE_MULTIPLE}, got {height}x{width}; "
                             "resize the image first (the MiDaS transform uses multiples of 32)")
        stage_maps, block_tokens = self.tap(x)
        grid = (height // PATCH, width // PATCH)
        token_maps = [getattr(self, f"act_postprocess{len(stage_maps) + i + 1}")(tokens, grid)
                      for i, tokens in enumerate(block_tokens)]
        return stage_maps + token_maps
