"""VAE tiling: decode a large latent in overlapping tiles and blend them, so memory no longer grows with the image.

The decoder's activations scale with the image area (about 4 GB of float32 for a 1024x1024 Stable Diffusion
image); decoding ``tile × tile`` latent tiles bounds them to one tile's worth. Neighbouring tiles overlap by at
least ``overlap`` latent positions and are blended with linear ramps over each overlap that fall to exactly 0 at
a tile's inner edge (where its convolutions saw zero padding instead of the neighbour), normalised so that the
weights sum to 1 at every pixel.

Tiling is not bit-equal to decoding the whole latent: the decoder's GroupNorm statistics and its middle
self-attention are computed per tile instead of over the whole image, so colours and long-range structure may
differ slightly between tiles (the ramps hide the seams). A latent that fits in one tile is decoded unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn as nn

__all__ = ["set_vae_tiling", "tile_spans", "blend_weights", "tiled_decode"]


def _check(tile: int, overlap: int) -> None:
    if overlap < 0:
        raise ValueError(f"VAE tiling overlap={overlap} must be >= 0 latent positions; use e.g. overlap=16.")
    if tile <= overlap:
        raise ValueError(
            f"VAE tile={tile} must be larger than overlap={overlap} (tiles must advance); "
            f"use e.g. tile=64, overlap=16."
        )


def tile_spans(size: int, tile: int, overlap: int) -> list[tuple[int, int]]:
    """``[(start, stop), ...]`` of tiles of length ``min(tile, size)`` covering ``range(size)``: the fewest whose
    neighbours overlap by at least ``overlap``, spread evenly, the first at 0 and the last ending at ``size``."""
    _check(tile, overlap)
    if size <= tile:
        return [(0, size)]
    count = math.ceil((size - overlap) / (tile - overlap))
    starts = [round(i * (size - tile) / (count - 1)) for i in range(count)]
    return [(start, start + tile) for start in starts]


def blend_weights(spans: list[tuple[int, int]], factor: int) -> list[torch.Tensor]:
    """One weight vector per span along one axis, in output pixels (``factor`` per latent position).

    Each tile ramps linearly from 0 (at its own edge) to 1 over its overlap with the previous and the next tile,
    is 1 elsewhere, and all vectors are divided by their sum, so that the weights add up to 1 at every pixel.
    """
    size = spans[-1][1] * factor
    weights = []
    for i, (start, stop) in enumerate(spans):
        weight = torch.ones((stop - start) * factor, dtype=torch.float64)
        if i > 0:
            ramp = (spans[i - 1][1] - start) * factor
            weight[:ramp] = torch.minimum(weight[:ramp], torch.linspace(0, 1, ramp, dtype=torch.float64))
        if i < len(spans) - 1:
            ramp = (stop - spans[i + 1][0]) * factor
            tail = slice(len(weight) - ramp, None)
            weight[tail] = torch.minimum(weight[tail], torch.linspace(1, 0, ramp, dtype=torch.float64))
        weights.append(weight)
    total = torch.zeros(size, dtype=torch.float64)
    for (start, stop), weight in zip(spans, weights):
        total[start * factor : stop * factor] += weight
    return [weight / total[start * factor : stop * factor] for (start, stop), weight in zip(spans, weights)]


def tiled_decode(
    decode: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor, factor: int, tile: int = 64, overlap: int = 16
) -> torch.Tensor:
    """``decode`` applied to overlapping ``tile × tile`` tiles of ``z (B, C, h, w)``, blended into
    ``(B, C_out, h·factor, w·factor)``; ``decode(z)`` itself when ``z`` fits in one tile.

    ``decode`` maps a latent tile ``(B, C, t, t')`` to ``(B, C_out, t·factor, t'·factor)``. Not bit-equal to
    ``decode(z)`` for decoders with global operations (GroupNorm, attention): see the module docstring.
    """
    _check(tile, overlap)
    height, width = z.shape[-2:]
    if height <= tile and width <= tile:
        return decode(z)
    spans_y, spans_x = tile_spans(height, tile, overlap), tile_spans(width, tile, overlap)
    weights_y, weights_x = blend_weights(spans_y, factor), blend_weights(spans_x, factor)
    out = None
    for (y0, y1), weight_y in zip(spans_y, weights_y):
        for (x0, x1), weight_x in zip(spans_x, weights_x):
            part = decode(z[:, :, y0:y1, x0:x1])
            expected = ((y1 - y0) * factor, (x1 - x0) * factor)
            if part.shape[-2:] != expected:
                raise ValueError(
                    f"decoding a latent tile of {y1 - y0}x{x1 - x0} gave {tuple(part.shape[-2:])} pixels, not "
                    f"{expected[0]}x{expected[1]}; pass the decoder's upsampling factor as factor (8 for kl-f8)."
                )
            if out is None:
                out = part.new_zeros(*part.shape[:2], height * factor, width * factor)
            weight = torch.outer(weight_y, weight_x).to(part)
            out[:, :, y0 * factor : y1 * factor, x0 * factor : x1 * factor] += part * weight
    return out


def set_vae_tiling(autoencoder: nn.Module, tile: int | None, overlap: int = 16) -> None:
    """Make ``decode`` of every ``AutoencoderKL`` in ``autoencoder`` (itself, or e.g. a ``LatentDiffusion``'s
    first stage) decode in ``tile × tile`` latent tiles overlapping by ``overlap``; ``tile=None`` turns it off."""
    if tile is not None:
        _check(tile, overlap)
    targets = [module for module in autoencoder.modules() if hasattr(module, "vae_tiling")]
    if not targets:
        raise ValueError(
            f"{type(autoencoder).__name__} holds no AutoencoderKL to tile; pass the autoencoder "
            "(ldm.models.autoencoder.AutoencoderKL) or a model whose first stage is one."
        )
    for module in targets:
        module.vae_tiling = None if tile is None else (tile, overlap)
