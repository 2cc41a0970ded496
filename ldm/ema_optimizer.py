"""``AdamWwithEMAandWings`` (the SD 2.x ``ldm.util`` name): AdamW that also keeps an exponential moving average of
every parameter in the optimizer state, so EMA weights come with the optimizer instead of a separate ``LitEma``.

After each AdamW step, for a parameter θ at step k: θ̄ ← d_k·θ̄ + (1 − d_k)·θ with
d_k = min(ema_decay, 1 − k^(−ema_power)) (θ̄ starts as θ, and d_1 = 0). With ``ema_power`` 1 and a large
``ema_decay`` this is the running mean of the iterates until 1 − 1/k reaches ``ema_decay``. The average lives in
``state["param_exp_avg"]`` (float32).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch


class AdamWwithEMAandWings(torch.optim.AdamW):
    """``torch.optim.AdamW`` plus the parameter average θ̄ above; ``param_names`` is kept in the groups (unused)."""

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1.0e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1.0e-8,
        weight_decay: float = 1.0e-2,
        amsgrad: bool = False,
        ema_decay: float = 0.9999,
        ema_power: float = 1.0,
        param_names: Sequence[str] = (),
    ) -> None:
        if not 0.0 <= ema_decay <= 1.0:
            raise ValueError(f"ema_decay {ema_decay} must lie in [0, 1]")
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad)
        for group in self.param_groups:
            group.setdefault("ema_decay", ema_decay)
            group.setdefault("ema_power", ema_power)
            group.setdefault("param_names", tuple(param_names))

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """One AdamW step, then the average update of every parameter that had a gradient."""
        loss = super().step(closure)
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                state = self.state[param]
                average = state.setdefault("param_exp_avg", param.detach().float().clone())
                step = float(state["step"])
                decay = min(group["ema_decay"], 1.0 - step ** -group["ema_power"])
                average.mul_(decay).add_(param.float(), alpha=1.0 - decay)
        return loss
