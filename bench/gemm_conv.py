"""Conv forward + backward as GEMMs (``ldm.modules.fast.gemm_conv``) against the reference ``nn.Conv2d`` (oneDNN on
the CPU), fp32, over the SD v1 UNet's 3×3 conv widths and the output positions (batch × height × width) its levels
give at small batches. The rows say where the GEMM route wins; ``GemmConv2d`` takes it up to ``MAX_POSITIONS``.

    python -m bench.run --only gemm_conv
"""

from __future__ import annotations

import logging

import torch
import torch.nn as nn

from bench.common import Row, median_times
from ldm.modules.fast.gemm_conv import GemmConv2d

logger = logging.getLogger(__name__)

#: (in channels, out channels, kernel, batch, side): a conv on a ``(batch, in channels, side, side)`` input, each a
#: conv of the SD v1 UNet (``side`` its latent size over 1, 2, 4 or 8), at batch 2 unless noted.
CASES = (
    (1280, 1280, 3, 2, 4), (1280, 1280, 3, 2, 8), (1280, 1280, 3, 4, 8), (1280, 1280, 3, 2, 16),
    (2560, 1280, 3, 2, 4), (2560, 1280, 3, 2, 8), (1920, 1280, 3, 2, 8), (640, 1280, 3, 2, 8),
    (1920, 640, 3, 2, 16), (1280, 640, 3, 2, 16), (2560, 1280, 1, 2, 4), (2560, 1280, 1, 2, 8),
    (640, 640, 3, 2, 4), (640, 640, 3, 2, 8), (640, 640, 3, 2, 16), (640, 640, 3, 2, 32),
    (320, 320, 3, 2, 8), (320, 320, 3, 2, 16), (320, 320, 3, 2, 32),
)


def _step(conv: nn.Module, x: torch.Tensor, grad: torch.Tensor) -> object:
    conv.zero_grad(set_to_none=True)
    x.grad = None
    out = conv(x)
    out.backward(grad)
    return out


def case_row(cin: int, cout: int, kernel: int, batch: int, side: int, repeats: int, seed: int = 0) -> Row:
    """One conv timed both ways (interleaved); the outputs and all three gradients are compared."""
    gen = torch.Generator().manual_seed(seed)
    conv = nn.Conv2d(cin, cout, kernel, padding=kernel // 2)
    gemm = GemmConv2d.from_conv(conv, max_positions=batch * side * side, min_weight_bytes=0)
    x = torch.randn(batch, cin, side, side, generator=gen, requires_grad=True)
    grad = torch.randn(batch, cout, side, side, generator=gen)
    results = []
    for module in (conv, gemm):
        out = _step(module, x, grad)
        results.append([out.detach(), x.grad, conv.weight.grad, conv.bias.grad])
    diff = max((a - b).abs().max().item() / b.abs().max().item() for a, b in zip(*results))
    seconds = median_times({"gemm": lambda: _step(gemm, x, grad), "reference": lambda: _step(conv, x, grad)}, repeats)
    logger.info("conv %dx%d %d->%d, (%d, %d, %d): %s", kernel, kernel, cin, cout, batch, side, side, seconds)
    megabytes = conv.weight.numel() * conv.weight.element_size() / 2**20
    return Row(
        f"conv {kernel}x{kernel} {cin}->{cout} ({megabytes:.0f} MiB), input ({batch}, {cin}, {side}, {side}): "
        f"{batch * side * side} positions", seconds["gemm"], seconds["reference"], max_abs_diff=diff,
        note="ours: GemmConv2d; baseline column: nn.Conv2d (oneDNN); max |Δ| relative, output and gradients",
    )


def run(repeats: int = 5) -> list[Row]:
    """A row per case in :data:`CASES`."""
    return [case_row(*case, repeats) for case in CASES]
