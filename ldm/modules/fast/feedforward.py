"""The gated feed-forward of a transformer block, for sampling: row chunks, in place, one preallocated output.

``GEGLUFeedForwardInference`` computes ``W₂ (a ⊙ GELU(g)) + b₂``, ``[a, g] = W₁ x + b₁``, on ``ROWS`` tokens at a
time: each row's math is that of ``FeedForward`` (equal within float rounding; the GEMM kernel may block rows
differently), but the ``(tokens × 2·hidden)`` intermediate is a few MB instead of a full-size one, and the GELU and
the gating multiply overwrite it instead of allocating two more.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ldm.modules.attention import GEGLU, FeedForward
from ldm.modules.fast.swap import has_torch_op, inference_only


class GEGLUFeedForwardInference(nn.Module):
    """A reference gated ``FeedForward`` on ``(..., dim) -> (..., dim_out)`` run in row chunks, without autograd.

    Holds the reference module's ``net`` itself (the same weight tensors, not copies), so the state-dict keys are
    those of the ``FeedForward`` it replaces. Under autocast it runs ``net`` as it is (the chunked products write
    into one float32 output).
    """

    ROWS = 2048

    def __init__(self, reference: FeedForward) -> None:
        super().__init__()
        if not self.applies_to(reference):
            raise ValueError(f"{type(self).__name__} replaces a FeedForward with a GEGLU input layer, got {reference}")
        self.net = reference.net
        # GELU written over its input where this torch build has the (private) in-place op; a new tensor otherwise
        self.gelu = torch.ops.aten.gelu_ if has_torch_op("aten", "gelu_") else F.gelu

    @staticmethod
    def applies_to(module: nn.Module) -> bool:
        """Whether ``module`` is a gated (GEGLU) ``FeedForward``."""
        return type(module) is FeedForward and isinstance(module.net[0], GEGLU)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inference_only(self, x)
        expand, dropout, project = self.net
        if self.training and dropout.p > 0:
            raise RuntimeError(f"{type(self).__name__} has no dropout; call .eval() on the model before sampling")
        if torch.amp.is_autocast_available(x.device.type) and torch.is_autocast_enabled(x.device.type):
            return self.net(x)
        rows = x.reshape(-1, x.shape[-1])  # (T, dim)
        out = rows.new_empty(rows.shape[0], project.out_features)  # (T, dim_out)
        for piece, dest in zip(rows.split(self.ROWS), out.split(self.ROWS), strict=True):
            value, gate = expand.proj(piece).chunk(2, dim=-1)  # (t, hidden) each, views of one (t, 2·hidden)
            value.mul_(self.gelu(gate))  # (t, hidden)
            torch.addmm(project.bias, value, project.weight.t(), out=dest)  # (t, dim_out)
        return out.view(*x.shape[:-1], -1)  # (..., dim_out)
