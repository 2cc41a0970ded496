"""Nearest ×2 upsampling + 3×3 conv on the input: the phase decomposition is the direct form, exactly in float64."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ldm.modules.diffusionmodules.upsample_conv import (
    PHASES,
    interleave_phases,
    is_upsample_conv,
    phase_weights,
    upsample_conv,
)


def _direct(x: torch.Tensor, conv: torch.nn.Conv2d) -> torch.Tensor:
    return conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (1, 4, 1, 1), (1, 2, 6, 4)])
def test_upsample_conv_equals_nearest_then_conv(shape: tuple[int, ...]) -> None:
    """Exact in float64 (the same products, summed in another order); channels-last in, channels-last out."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(shape[1], 5, kernel_size=3, padding=1).double()
    x = torch.randn(shape, dtype=torch.float64)
    expected = _direct(x, conv)
    torch.testing.assert_close(upsample_conv(x, conv), expected, rtol=0, atol=1e-12)
    fused = upsample_conv(x.contiguous(memory_format=torch.channels_last), conv)
    assert fused.is_contiguous(memory_format=torch.channels_last) or shape[2:] == (1, 1)
    torch.testing.assert_close(fused, expected, rtol=0, atol=1e-12)


def test_one_conv_to_all_phases_then_interleave_is_the_direct_form() -> None:
    """``phase_weights`` stacks the four 2x2 phase kernels: one conv to ``4·C_out`` channels computes every phase."""
    torch.manual_seed(1)
    conv = torch.nn.Conv2d(3, 4, kernel_size=3, padding=1).double()
    x = torch.randn(2, 3, 6, 5, dtype=torch.float64)
    weights = phase_weights(conv.weight)
    assert weights.shape == (4 * 4, 3, 2, 2)
    phases = F.conv2d(x, weights, conv.bias.repeat(len(PHASES)), padding=1).chunk(len(PHASES), dim=1)
    torch.testing.assert_close(interleave_phases(phases), _direct(x, conv), rtol=0, atol=1e-12)


def test_phase_weights_fold_the_taps_each_output_parity_reads() -> None:
    """Even rows/columns read input offsets (-1, 0) with taps (w0, w1 + w2); odd ones (0, +1) with (w0 + w1, w2)."""
    weight = torch.arange(9.0).reshape(1, 1, 3, 3)
    rows_cols = {0: lambda w: (w[0], w[1] + w[2]), 1: lambda w: (w[0] + w[1], w[2])}
    for index, (a, b) in enumerate(PHASES):
        folded_rows = torch.stack(rows_cols[a](weight[0, 0]))
        expected = torch.stack(rows_cols[b](folded_rows.T)).T
        assert torch.equal(phase_weights(weight)[index, 0], expected)


def test_is_upsample_conv_accepts_only_3x3_padding_1() -> None:
    assert is_upsample_conv(torch.nn.Conv2d(2, 3, 3, padding=1))
    assert not is_upsample_conv(torch.nn.Conv2d(2, 3, 3, padding=0))
    assert not is_upsample_conv(torch.nn.Conv2d(2, 3, 1))
    assert not is_upsample_conv(torch.nn.Conv2d(2, 4, 3, padding=1, groups=2))
    assert not is_upsample_conv(torch.nn.Conv2d(2, 3, 3, padding=1, padding_mode="reflect"))
    assert not is_upsample_conv(torch.nn.Identity())
