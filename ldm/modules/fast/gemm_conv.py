"""Convolutions with few output positions as one matrix product, forward and backward, for CPU training.

A 2-D convolution is ``Y = W · cols(X) + b``: ``cols`` gathers each output position's receptive field
(``F.unfold``, ``(B, C_in·kh·kw, L)`` for ``L = H'·W'`` positions), ``W`` is the weight viewed as
``(C_out, C_in·kh·kw)``. Its gradients are ``dW = dY · cols(X)ᵀ``, ``db = Σ dY`` and ``dX = fold(Wᵀ · dY)``
(``F.fold`` sums each column back onto the pixels it was gathered from). With the batch's positions side by side
(``M = B·L`` columns) each of the three is one GEMM over the weight as it is stored.

Why: on the CPU, torch runs an eager conv through oneDNN, which re-lays the weight out into its blocked format on
every forward and again for the backward, and writes the weight gradient blocked before laying it back. Where
``M`` is small (a UNet's lowest levels: 4×4 or 8×8 latents times a small batch) that traffic on a weight of up to
``1280·2560·9`` floats costs more than the arithmetic: the SD v1 UNet's ``1280→1280`` 3×3 conv on a ``(2, 1280,
4, 4)`` input takes 109 ms forward + backward through oneDNN and 47 ms as GEMMs (2 cores, fp32; ``bench/``). At
large ``M``, and for weights small enough to stay in the cache, oneDNN's blocked kernels win, so
:class:`GemmConv2d` takes the GEMM route only for a weight of at least ``min_weight_bytes`` and up to
``max_positions`` columns, and otherwise runs the reference ``nn.Conv2d`` forward.

The same products summed in another order: equal to ``F.conv2d`` and its gradients within float rounding. Memory
is the reference's: the input is saved, not its columns (they are gathered again in the backward). Off the CPU,
under autocast, or for a conv this module cannot express (padding by name or by a mode other than zeros, groups),
the reference forward runs.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.autograd.function import FunctionCtx

from ldm.modules.fast.swap import replace_modules

#: Output positions (batch × height × width) up to which the GEMM route runs, and the smallest weight (bytes) it
#: runs for. Measured with ``python -m bench.run --only gemm_conv`` (2-core AVX-512 CPU, fp32): the SD v1 UNet's
#: 56-112 MiB weights take 0.43x oneDNN's time at 32 positions, 0.64-0.68x at 128, 0.82x at 256 and 1.02x at 512;
#: weights of 14-42 MiB, whose re-layout stays in the cache, are 0.8-1.05x at 32-128 positions and 1.3x at 512.
MAX_POSITIONS = 256
MIN_WEIGHT_BYTES = 48 * 2**20

Pair = tuple[int, int]


def _columns(x: torch.Tensor, kernel: Pair, dilation: Pair, padding: Pair, stride: Pair) -> torch.Tensor:
    """``(B, C_in, H, W)`` -> the receptive fields of every output position, ``(C_in·kh·kw, B·L)``."""
    cols = F.unfold(x, kernel, dilation=dilation, padding=padding, stride=stride)
    return cols.transpose(0, 1).reshape(cols.shape[1], -1)


class _GemmConv2dFunction(torch.autograd.Function):
    """``conv2d(x, weight, bias)`` (groups 1, zero padding) as ``W · cols(x) + b`` with the gradients above. The
    backward is made of differentiable ops on the saved input and weight, so second derivatives (a gradient
    penalty) follow through it."""

    @staticmethod
    def forward(
        ctx: FunctionCtx,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        stride: Pair,
        padding: Pair,
        dilation: Pair,
    ) -> torch.Tensor:
        kernel = (weight.shape[2], weight.shape[3])
        cols = _columns(x, kernel, dilation, padding, stride)
        matrix = weight.reshape(weight.shape[0], -1)
        y = matrix @ cols if bias is None else torch.addmm(bias.unsqueeze(1), matrix, cols)
        ctx.save_for_backward(x, weight)
        ctx.geometry = (kernel, stride, padding, dilation)
        ctx.has_bias = bias is not None
        batch = x.shape[0]
        height, width = _output_size(x.shape[2:], kernel, stride, padding, dilation)
        return y.view(weight.shape[0], batch, height, width).transpose(0, 1).contiguous()

    @staticmethod
    def backward(ctx: FunctionCtx, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        kernel, stride, padding, dilation = ctx.geometry
        need_x, need_weight, need_bias = ctx.needs_input_grad[:3]
        grad = grad_out.transpose(0, 1).reshape(weight.shape[0], -1)  # (C_out, B·L)
        grad_x = grad_weight = grad_bias = None
        if need_weight:
            grad_weight = (grad @ _columns(x, kernel, dilation, padding, stride).t()).view_as(weight)
        if need_bias and ctx.has_bias:
            grad_bias = grad.sum(1)
        if need_x:
            grad_cols = weight.reshape(weight.shape[0], -1).t() @ grad  # (C_in·kh·kw, B·L)
            grad_cols = grad_cols.view(grad_cols.shape[0], x.shape[0], -1).transpose(0, 1)
            grad_x = F.fold(grad_cols, x.shape[2:], kernel, dilation=dilation, padding=padding, stride=stride)
        return grad_x, grad_weight, grad_bias, None, None, None


def _weight_bytes(conv: nn.Conv2d) -> int:
    return conv.weight.numel() * conv.weight.element_size()


def _output_size(size: torch.Size, kernel: Pair, stride: Pair, padding: Pair, dilation: Pair) -> Pair:
    """``(H', W')`` of a conv over ``size = (H, W)``."""
    return tuple(  # type: ignore[return-value]
        (n + 2 * p - d * (k - 1) - 1) // s + 1 for n, k, s, p, d in zip(size, kernel, stride, padding, dilation)
    )


def gemm_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: Pair = (1, 1),
    padding: Pair = (0, 0),
    dilation: Pair = (1, 1),
) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, stride, padding, dilation)`` (groups 1) as matrix products, differentiable
    (twice too) in ``x``, ``weight`` and ``bias``: ``(B, C_in, H, W) -> (B, C_out, H', W')`` contiguous."""
    return _GemmConv2dFunction.apply(x, weight, bias, stride, padding, dilation)


class GemmConv2d(nn.Conv2d):
    """An ``nn.Conv2d`` that runs as :func:`gemm_conv2d` on the CPU when its weight holds at least
    ``min_weight_bytes`` and it has at most ``max_positions`` output positions (batch × height × width), and as the
    reference conv otherwise.

    Built by :meth:`from_conv` on the reference conv's own ``weight`` and ``bias`` parameters (not copies), so the
    module path, the state-dict keys and an optimizer already holding those parameters are unchanged.
    """

    max_positions: int
    min_weight_bytes: int

    @classmethod
    def from_conv(
        cls, conv: nn.Conv2d, max_positions: int = MAX_POSITIONS, min_weight_bytes: int = MIN_WEIGHT_BYTES
    ) -> GemmConv2d:
        """The GEMM variant of ``conv`` sharing its parameters."""
        new = cls(
            conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
            conv.groups, conv.bias is not None, conv.padding_mode, device="meta", dtype=conv.weight.dtype,
        )
        new.weight, new.bias = conv.weight, conv.bias
        new.train(conv.training)
        new.max_positions, new.min_weight_bytes = max_positions, min_weight_bytes
        return new

    @staticmethod
    def expressible(conv: nn.Module) -> bool:
        """Whether ``conv`` is a plain 2-D ``nn.Conv2d`` this module can run: numeric zero padding, one group."""
        return (
            type(conv) is nn.Conv2d
            and conv.groups == 1
            and conv.padding_mode == "zeros"
            and not isinstance(conv.padding, str)
        )

    def takes_gemm_route(self, x: torch.Tensor) -> bool:
        """Whether this input runs as GEMMs: a CPU tensor of the weight's dtype, no autocast, a weight of at least
        ``min_weight_bytes`` and at most ``max_positions`` output positions."""
        if x.device.type != "cpu" or x.dim() != 4 or x.dtype != self.weight.dtype or torch.is_autocast_enabled("cpu"):
            return False
        if _weight_bytes(self) < self.min_weight_bytes:
            return False
        height, width = _output_size(x.shape[2:], self.kernel_size, self.stride, self.padding, self.dilation)
        return x.shape[0] * height * width <= self.max_positions

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.takes_gemm_route(x):
            return gemm_conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation)
        return super().forward(x)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, max_positions={self.max_positions}, min_weight_bytes={self.min_weight_bytes}"


def swap_gemm_convs(
    module: nn.Module, max_positions: int = MAX_POSITIONS, min_weight_bytes: int = MIN_WEIGHT_BYTES
) -> int:
    """In place: every plain ``nn.Conv2d`` under ``module`` that :meth:`GemmConv2d.expressible` accepts and whose
    weight holds at least ``min_weight_bytes`` becomes a :class:`GemmConv2d` on the same parameters (smaller convs
    would never take its GEMM route and stay as they are); returns how many were swapped. Training and sampling
    both run through the swapped convs."""

    def make(child: nn.Module) -> nn.Module | None:
        if not GemmConv2d.expressible(child):
            return None
        if _weight_bytes(child) < min_weight_bytes:
            return child
        return GemmConv2d.from_conv(child, max_positions, min_weight_bytes)

    return replace_modules(module, make)
