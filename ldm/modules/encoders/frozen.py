"""``FrozenModule``: the freezing behaviour the frozen conditioners share (fixed weights, inference mode for good)."""

from __future__ import annotations

import torch
from torch import nn

#: The default ``device`` argument of the conditioners: the GPU when there is one (the originals say ``"cuda"``).
DEFAULT_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


class FrozenModule(nn.Module):
    """An ``nn.Module`` whose weights can be fixed for good.

    After :meth:`freeze` every parameter has ``requires_grad=False`` and the module is in eval mode, and stays there:
    ``train()`` (which Lightning calls on the whole model at each epoch) leaves a frozen module in eval mode, so
    dropout never switches back on.
    """

    frozen: bool = False

    def freeze(self) -> None:
        """Eval mode, kept by later ``train()`` calls, and ``requires_grad=False`` for every parameter."""
        self.frozen = True
        self.eval()
        for weight in self.parameters():
            weight.requires_grad = False

    def train(self, mode: bool = True) -> FrozenModule:
        """``nn.Module.train(mode)``, except that a frozen module (and everything in it) stays in eval mode."""
        return super().train(mode and not self.frozen)
