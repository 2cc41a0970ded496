"""Learning-rate multipliers for ``torch.optim.lr_scheduler.LambdaLR`` (``scheduler_config`` in the configs).

Each scheduler is a callable ``step -> factor``; the optimiser's learning rate is ``base_lr · factor``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np

logger = logging.getLogger(__name__)


def _warm_up(n: float, warm_up_steps: float, start: float, peak: float) -> float:
    """Linear ramp from ``start`` at step 0 to ``peak`` at step ``warm_up_steps``."""
    return (peak - start) / warm_up_steps * n + start


def _cosine(t: float, low: float, high: float) -> float:
    """Half cosine from ``high`` (t = 0) to ``low`` (t ≥ 1): ``low + ½(high − low)(1 + cos(π·min(t, 1)))``."""
    return low + 0.5 * (high - low) * (1 + math.cos(min(t, 1.0) * math.pi))


def _log_progress(interval: int, n: int, last: float, cycle: int | None = None) -> None:
    """Log the step and the last factor every ``interval`` steps (never for ``interval <= 0``)."""
    if interval > 0 and n % interval == 0:
        where = "" if cycle is None else f" (cycle {cycle})"
        logger.info("lr schedule: step %s%s, last factor %s", n, where, last)


class LambdaWarmUpCosineScheduler:
    """Linear warm-up ``lr_start -> lr_max`` over ``warm_up_steps``, then cosine decay to ``lr_min`` at
    ``max_decay_steps`` (constant afterwards). Use with a base learning rate of 1.0.
    """

    def __init__(
        self,
        warm_up_steps: int,
        lr_min: float,
        lr_max: float,
        lr_start: float,
        max_decay_steps: int,
        verbosity_interval: int = 0,
    ) -> None:
        self.lr_warm_up_steps, self.lr_max_decay_steps = warm_up_steps, max_decay_steps
        self.lr_start, self.lr_max, self.lr_min = lr_start, lr_max, lr_min
        self.verbosity_interval = verbosity_interval
        self.last_lr = 0.0

    def schedule(self, n: int, **kwargs) -> float:
        _log_progress(self.verbosity_interval, n, self.last_lr)
        warm = self.lr_warm_up_steps
        if n >= warm:
            progress = (n - warm) / (self.lr_max_decay_steps - warm)
            self.last_lr = _cosine(progress, self.lr_min, self.lr_max)
        else:
            self.last_lr = _warm_up(n, warm, self.lr_start, self.lr_max)
        return self.last_lr

    def __call__(self, n: int, **kwargs) -> float:
        return self.schedule(n, **kwargs)


class LambdaWarmUpCosineScheduler2:
    """Repeated cycles, configured by lists (one entry per cycle): in cycle ``c`` (``cycle_lengths[c]`` steps)
    a linear warm-up ``f_start -> f_max`` over ``warm_up_steps``, then cosine decay to ``f_min`` at the cycle's
    end. Use with a base learning rate of 1.0.
    """

    def __init__(
        self,
        warm_up_steps: Sequence[int],
        f_min: Sequence[float],
        f_max: Sequence[float],
        f_start: Sequence[float],
        cycle_lengths: Sequence[int],
        verbosity_interval: int = 0,
    ) -> None:
        per_cycle = {"warm_up_steps": warm_up_steps, "f_min": f_min, "f_max": f_max, "f_start": f_start,
                     "cycle_lengths": cycle_lengths}
        if len({len(values) for values in per_cycle.values()}) > 1:
            sizes = ", ".join(f"{name}: {len(values)}" for name, values in per_cycle.items())
            raise ValueError(
                f"{type(self).__name__} takes one entry per cycle, so its lists must have the same length; got "
                f"{sizes}."
            )
        self.lr_warm_up_steps, self.cycle_lengths = warm_up_steps, cycle_lengths
        self.f_start, self.f_max, self.f_min = f_start, f_max, f_min
        self.cum_cycles = np.cumsum([0, *cycle_lengths])  # cycle c covers steps (cum_cycles[c], cum_cycles[c+1]]
        self.verbosity_interval = verbosity_interval
        self.last_f = 0.0

    def find_in_interval(self, n: int) -> int:
        """Index of the cycle holding step ``n``: cycle ``c`` covers ``(cum_c, cum_{c+1}]``, step 0 is in cycle 0."""
        for interval, end in enumerate(self.cum_cycles[1:]):
            if n <= end:
                return interval
        raise ValueError(
            f"{type(self).__name__}: step {n} is past the last cycle (cycle_lengths sum to {self.cum_cycles[-1]}); "
            "lengthen cycle_lengths in the scheduler_config."
        )

    def _locate(self, n: int) -> tuple[int, int]:
        """``(cycle, step within that cycle)``, logging every ``verbosity_interval`` steps."""
        cycle = self.find_in_interval(n)
        n = n - self.cum_cycles[cycle]
        _log_progress(self.verbosity_interval, n, self.last_f, cycle)
        return cycle, n

    def schedule(self, n: int, **kwargs) -> float:
        cycle, n = self._locate(n)
        if n < self.lr_warm_up_steps[cycle]:
            f = _warm_up(n, self.lr_warm_up_steps[cycle], self.f_start[cycle], self.f_max[cycle])
        else:
            t = (n - self.lr_warm_up_steps[cycle]) / (self.cycle_lengths[cycle] - self.lr_warm_up_steps[cycle])
            f = _cosine(t, self.f_min[cycle], self.f_max[cycle])
        self.last_f = f
        return f

    def __call__(self, n: int, **kwargs) -> float:
        return self.schedule(n, **kwargs)


class LambdaLinearScheduler(LambdaWarmUpCosineScheduler2):
    """As :class:`LambdaWarmUpCosineScheduler2`, but after the warm-up the factor falls linearly:
    ``f = f_min + (f_max − f_min)·(L − n)/L`` with ``L`` the cycle length and ``n`` the step within the cycle.
    """

    def schedule(self, n: int, **kwargs) -> float:
        cycle, n = self._locate(n)
        if n < self.lr_warm_up_steps[cycle]:
            f = _warm_up(n, self.lr_warm_up_steps[cycle], self.f_start[cycle], self.f_max[cycle])
        else:
            length = self.cycle_lengths[cycle]
            f = self.f_min[cycle] + (self.f_max[cycle] - self.f_min[cycle]) * (length - n) / length
        self.last_f = f
        return f
