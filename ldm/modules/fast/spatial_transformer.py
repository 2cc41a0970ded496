"""The spatial transformer for sampling: the 1x1 ``proj_in``/``proj_out`` convs as matrix products on the token
view, which needs no re-layout of the activations in either memory format."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from ldm.modules.attention import SpatialTransformer
from ldm.modules.fast.swap import inference_only


class TokenSpatialTransformer(SpatialTransformer):
    """``x + proj_out(blocks(proj_in(GroupNorm(x))))`` of a reference ``SpatialTransformer``, with the 1x1 convs as
    ``F.linear`` on ``(B, HW, C)`` (equal within float rounding). Holds the reference module's submodules (the
    same weight tensors), so the state-dict keys stay; the output keeps the memory format of ``x``.

    A subclass so that code dispatching on ``SpatialTransformer`` (the UNet's layer sequences pass it the
    context) treats it as one; it is built from a reference module, not from the constructor's arguments."""

    def __init__(self, reference: SpatialTransformer) -> None:
        nn.Module.__init__(self)
        if type(reference) is not SpatialTransformer:
            raise ValueError(f"{type(self).__name__} replaces a SpatialTransformer, got {type(reference).__name__}")
        self.in_channels = reference.in_channels
        self.norm, self.proj_in = reference.norm, reference.proj_in
        self.transformer_blocks, self.proj_out = reference.transformer_blocks, reference.proj_out

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        inference_only(self, x)
        height, width = x.shape[-2:]
        tokens = rearrange(self.norm(x), "b c h w -> b (h w) c")  # (B, HW, C), a view for channels-last x
        tokens = F.linear(tokens, self.proj_in.weight.flatten(1), self.proj_in.bias)  # (B, HW, inner)
        for block in self.transformer_blocks:
            tokens = block(tokens, context=context)  # (B, HW, inner)
        tokens = F.linear(tokens, self.proj_out.weight.flatten(1), self.proj_out.bias)  # (B, HW, C)
        return x + rearrange(tokens, "b (h w) c -> b c h w", h=height, w=width)  # (B, C, H, W), x's layout
