"""Exponential moving average of a model's trainable parameters, kept as buffers (``model_ema.*`` in checkpoints)."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
import torch.nn as nn

logger = logging.getLogger(__name__)


class LitEma(nn.Module):
    """EMA shadow of ``model``: after each update ``s ← s − (1 − d)·(s − p)`` for every trainable ``p``.

    With ``use_num_upates`` (so spelled in configs) the decay warms up as ``d = min(decay, (1 + n)/(10 + n))``,
    ``n`` counting updates. Buffers: ``decay`` (float32, ``()``), ``num_updates`` (int32, ``()``; -1 disables
    the warm-up) and one per trainable parameter, named after it with the dots removed
    (``diffusion_model.out.2.weight`` -> ``diffusion_modelout2weight``).
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, use_num_upates: bool = True) -> None:
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"LitEma: decay must be between 0 and 1, got {decay}.")
        super().__init__()
        self.register_buffer("decay", torch.tensor(decay, dtype=torch.float32))
        self.register_buffer("num_updates", torch.tensor(0 if use_num_upates else -1, dtype=torch.int))
        trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
        # Buffer names cannot hold dots, so each shadow is named after its parameter without them.
        self.m_name2s_name: dict[str, str] = {name: name.replace(".", "") for name in trainable}
        for name, shadow_name in self.m_name2s_name.items():
            self.register_buffer(shadow_name, trainable[name].detach().clone())
        self.collected_params: list[torch.Tensor] = []

    @torch.no_grad()
    def reset_num_updates(self) -> None:
        """Restart the decay warm-up: ``num_updates`` becomes 0 (also when it was -1, i.e. warm-up disabled)."""
        self.num_updates.fill_(0)

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


@contextmanager
def ema_weights(ema: LitEma | None, module: nn.Module, label: str | None = None) -> Iterator[None]:
    """A block during which ``module``'s trainable parameters hold the averages kept by ``ema``.

    The trained values are saved on entry (``ema.store``) and put back on exit, also when the block raises.
    ``ema=None`` makes the block a no-op; ``label`` (when given) names the block in the two log lines.
    """
    if ema is None:
        yield
        return
    own = list(module.parameters())
    ema.store(own)
    ema.copy_to(module)
    if label:
        logger.info("%s: EMA weights in", label)
    try:
        yield
    finally:
        ema.restore(own)
        if label:
            logger.info("%s: trained weights back", label)
