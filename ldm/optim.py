"""The Adam / AdamW optimizers the models train with, on torch's fastest implementation for their parameters."""

from __future__ import annotations

from collections.abc import Iterable

import torch

FUSED_DEVICES = ("cpu", "cuda")


def adam(
    cls: type[torch.optim.Adam] | type[torch.optim.AdamW], params: Iterable[torch.nn.Parameter], **kwargs
) -> torch.optim.Optimizer:
    """``cls(params, **kwargs)`` with torch's fused kernel (one pass over each weight per step) when every parameter
    is a floating-point tensor on a CPU or CUDA device, otherwise the multi-tensor (``foreach``) implementation.

    Both are Adam's update; the fused kernel orders the arithmetic differently, so the weights match the
    per-tensor loop to float rounding (≈1e-7 relative) rather than bit for bit.
    """
    params = list(params)
    fused = bool(params) and all(p.is_floating_point() and p.device.type in FUSED_DEVICES for p in params)
    return cls(params, **kwargs, **({"fused": True} if fused else {"foreach": True}))
