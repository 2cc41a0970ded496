"""Exponential moving average of a model's trainable parameters, kept as buffers (``model_ema.*`` in checkpoints)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn as nn


class LitEma(nn.Module):
    """EMA shadow of ``model``: after each update ``s ← s − (1 − d)·(s − p)`` for every trainable ``p``.

    With ``use_num_upates`` (original spelling) the decay warms up as ``d = min(decay, (1 + n)/(10 + n))``,
    ``n`` counting updates. Buffers: ``decay`` (float32, ``()``), ``num_updates`` (int32, ``()``; -1 disables
    the warm-up) and one per trainable parameter, named after it with the dots removed
    (``diffusion_model.out.2.weight`` -> ``diffusion_modelout2weight``).
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, use_num_upates: bool = True) -> None:
        super().__init__()
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"LitEma: decay must be between 0 and 1, got {decay}.")
        self.m_name2s_name: dict[str, str] = {}
        self.register_buffer("decay", torch.tensor(decay, dtype=torch.float32))
        self.register_buffer("num_updates", torch.tensor(0 if use_num_upates else -1, dtype=torch.int))
        for name, p in model.named_parameters():
            if p.requires_grad:
                s_name = name.replace(".", "")
                self.m_name2s_name[name] = s_name
                self.register_buffer(s_name, p.detach().clone())
        self.collected_params: list[torch.Tensor] = []

    def _trainable(self, model: nn.Module) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        """``(model parameter, shadow buffer)`` pairs of the trainable parameters."""
        shadow = dict(self.named_buffers())
        for name, p in model.named_parameters():
            if not p.requires_grad:
                continue
            if name not in self.m_name2s_name:
                raise KeyError(
                    f"LitEma: parameter {name!r} has no EMA copy; the model differs from the one the EMA was built on."
                )
            yield p, shadow[self.m_name2s_name[name]]

    @torch.no_grad()
    def forward(self, model: nn.Module) -> None:
        """One EMA update from the current parameters of ``model``."""
        decay = self.decay
        if self.num_updates >= 0:
            self.num_updates += 1
            decay = torch.minimum(self.decay, (1 + self.num_updates) / (10 + self.num_updates))
        one_minus_decay = 1.0 - decay
        for p, s in self._trainable(model):
            s.sub_(one_minus_decay * (s - p.to(s.dtype)))

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Overwrite the trainable parameters of ``model`` with their EMA values."""
        for p, s in self._trainable(model):
            p.copy_(s)

    def store(self, parameters: Iterable[torch.Tensor]) -> None:
        """Keep a copy of ``parameters`` to bring back with :meth:`restore` (around EMA evaluation)."""
        self.collected_params = [param.detach().clone() for param in parameters]

    @torch.no_grad()
    def restore(self, parameters: Iterable[torch.Tensor]) -> None:
        """Copy the values saved by :meth:`store` back into ``parameters`` (same order)."""
        for c_param, param in zip(self.collected_params, parameters, strict=True):
            param.copy_(c_param)
