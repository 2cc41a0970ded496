"""Norm thresholding of a predicted x0 (the SD 2.x samplers' ``dynamic_threshold`` option)."""

from __future__ import annotations

import torch


def append_dims(x: torch.Tensor, target_dims: int) -> torch.Tensor:
    """View ``x`` with trailing singleton axes so that it has ``target_dims`` axes.

    Shape: ``(B,)`` with ``target_dims=4`` gives ``(B, 1, 1, 1)``; ``x`` with more axes than asked is an error.
    """
    extra = target_dims - x.dim()
    if extra < 0:
        raise ValueError(
            f"append_dims: the tensor already has {x.dim()} axes, more than target_dims={target_dims}; "
            "pass a target at least as large as x.dim()"
        )
    return x.reshape(*x.shape, *([1] * extra))


def norm_thresholding(x0: torch.Tensor, value: float) -> torch.Tensor:
    """Rescale each sample whose RMS exceeds ``value`` down to RMS ``value``.

    ``x0 · value / max(rms(x0_b), value)`` with ``rms(x0_b) = sqrt(mean over C, H, W of x0_b²)``; samples whose
    RMS is at most ``value`` are unchanged. Shape: ``(B, ...)`` in and out.
    """
    rms = x0.flatten(1).square().mean(dim=1).sqrt()
    scale = value / torch.clamp(rms, min=value)
    return x0 * append_dims(scale, x0.dim())


def spatial_norm_thresholding(x0: torch.Tensor, value: float) -> torch.Tensor:
    """The per-pixel form of :func:`norm_thresholding`: the RMS is taken over channels only.

    ``x0 · value / max(rms_c(x0[b, :, h, w]), value)``. Shape: ``(B, C, H, W)`` in and out.
    """
    rms = x0.square().mean(dim=1, keepdim=True).sqrt()
    return x0 * (value / torch.clamp(rms, min=value))
