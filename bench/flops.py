"""FLOPs of one UNet step, counted on the meta device (no memory, no compute).

``torch.utils.flop_counter`` counts convolutions and matrix products; on CPU it misses the work inside the fused
``scaled_dot_product_attention`` kernel, so the attention FLOPs are also counted analytically here,
``4·B·H·L·S·E`` per call (``Q Kᵀ`` and ``P V``, softmax excluded), and added where the counter did not see them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch.overrides import TorchFunctionMode
from torch.utils.flop_counter import FlopCounterMode

from ldm.modules.diffusionmodules.openaimodel import Upsample
from ldm.util import instantiate_from_config


class _AttentionFlops(TorchFunctionMode):
    """Adds up ``4·B·H·L·S·E`` for every ``scaled_dot_product_attention`` call."""

    def __init__(self) -> None:
        super().__init__()
        self.flops = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is F.scaled_dot_product_attention:
            q, k = args[0], args[1]
            *batch, length, dim = q.shape
            self.flops += 4 * int(torch.Size(batch).numel()) * length * k.shape[-2] * dim
        return func(*args, **(kwargs or {}))


def _meta_unet(
    unet_config: DictConfig, latent: int, batch: int, context_tokens: int
) -> tuple[torch.nn.Module, tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
    """The UNet built from ``unet_config`` on the meta device (no memory, no compute) and its inputs
    ``(batch, in_channels, latent, latent)``, timesteps and a ``(batch, context_tokens, context_dim)`` context."""
    with torch.device("meta"):
        unet = instantiate_from_config(unet_config).eval()
        params = unet_config.params
        x = torch.empty(batch, params.in_channels, latent, latent)
        t = torch.zeros(batch, dtype=torch.long)
        context = torch.empty(batch, context_tokens, params.context_dim) if params.get("context_dim") else None
    return unet, (x, t, context)


def unet_step_flops(unet_config: DictConfig, latent: int, batch: int = 2, context_tokens: int = 77) -> tuple[int, int]:
    """``(total, attention)`` FLOPs of one forward of the UNet built from ``unet_config`` on
    ``(batch, in_channels, latent, latent)`` with a ``(batch, context_tokens, context_dim)`` context."""
    unet, inputs = _meta_unet(unet_config, latent, batch, context_tokens)
    with torch.no_grad(), FlopCounterMode(display=False) as counter, _AttentionFlops() as attention:
        unet(*inputs)
    counts = counter.get_flop_counts()["Global"]
    seen_bmm = sum(v for op, v in counts.items() if "bmm" in str(op))
    total = counter.get_total_flops() + (attention.flops if seen_bmm < attention.flops else 0)
    return total, attention.flops


def fused_upsample_savings(unet_config: DictConfig, latent: int, batch: int = 2, context_tokens: int = 77) -> int:
    """FLOPs of one such forward that prepacking saves by running each nearest ×2 upsample + 3×3 conv
    ``C_in -> C_out`` on an ``H × W`` input as one 2×2 conv to the four phases (``PackedUpsampleConv``):
    ``2·B·C_out·C_in·(9·4HW − 4·4·(H + 1)(W + 1))``."""
    unet, inputs = _meta_unet(unet_config, latent, batch, context_tokens)
    saved = []

    def count(module: torch.nn.Module, args: tuple[torch.Tensor]) -> None:
        b, c_in, h, w = args[0].shape
        saved.append(2 * b * module.conv.out_channels * c_in * (9 * 4 * h * w - 4 * 4 * (h + 1) * (w + 1)))

    for module in unet.modules():
        if isinstance(module, Upsample) and module.use_conv and module.dims == 2:
            module.register_forward_pre_hook(count)
    with torch.no_grad():
        unet(*inputs)
    return sum(saved)
