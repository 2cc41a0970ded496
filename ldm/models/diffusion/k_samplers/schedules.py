"""Noise-level schedules σ_0 > σ_1 > ... > σ_{n−1} > σ_n = 0 for the k-samplers, float32 ``(n + 1,)``.

Parametric ones take (σ_min, σ_max) as Python floats (as AUTOMATIC1111 passes them); the grid-based ones read a
:class:`~ldm.models.diffusion.k_samplers.denoisers.CompVisDenoiser`'s σ grid. :func:`schedule_sigmas` is the one
entry point by name.
"""

from __future__ import annotations

import difflib
import math
from typing import Any

import torch

from ldm.models.diffusion.k_samplers.common import append_zero
from ldm.modules.diffusionmodules.util import make_ddim_timesteps

__all__ = [
    "SCHEDULE_NAMES",
    "get_sigmas_ddim_uniform",
    "get_sigmas_exponential",
    "get_sigmas_karras",
    "get_sigmas_polyexponential",
    "get_sigmas_simple",
    "get_sigmas_vp",
    "schedule_sigmas",
]


def _ramp(start: float, end: float, n: int, device: str | torch.device) -> torch.Tensor:
    return torch.linspace(start, end, n, dtype=torch.float32, device=device)


def get_sigmas_karras(
    n: int, sigma_min: float, sigma_max: float, rho: float = 7.0, device: str | torch.device = "cpu"
) -> torch.Tensor:
    """Karras et al. 2022, eq. 5: σ_i = (σ_max^{1/ρ} + i/(n−1) (σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ, i < n; then 0."""
    top, bottom = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    return append_zero((top + _ramp(0, 1, n, device) * (bottom - top)) ** rho)


def get_sigmas_exponential(
    n: int, sigma_min: float, sigma_max: float, device: str | torch.device = "cpu"
) -> torch.Tensor:
    """log σ_i evenly spaced from log σ_max to log σ_min (n values), then 0."""
    return append_zero(_ramp(math.log(sigma_max), math.log(sigma_min), n, device).exp())


def get_sigmas_polyexponential(
    n: int, sigma_min: float, sigma_max: float, rho: float = 1.0, device: str | torch.device = "cpu"
) -> torch.Tensor:
    """log σ_i = log σ_min + (1 − i/(n−1))^ρ (log σ_max − log σ_min); ρ = 1 is :func:`get_sigmas_exponential`."""
    log_min, log_max = math.log(sigma_min), math.log(sigma_max)
    return append_zero((log_min + _ramp(1, 0, n, device) ** rho * (log_max - log_min)).exp())


def get_sigmas_vp(
    n: int, beta_d: float = 19.9, beta_min: float = 0.1, eps_s: float = 1e-3, device: str | torch.device = "cpu"
) -> torch.Tensor:
    """The continuous VP schedule (Song et al. 2021): σ(t) = √(exp(β_d t²/2 + β_min t) − 1), t from 1 to ε_s."""
    t = _ramp(1, eps_s, n, device)
    return append_zero(torch.expm1(beta_d * t**2 / 2 + beta_min * t).sqrt())


def get_sigmas_simple(denoiser: Any, n: int) -> torch.Tensor:
    """ComfyUI's "simple": grid noise levels σ_{N−1−⌊iN/n⌋}, i = 0..n−1 (every (N/n)-th from the top), then 0."""
    grid = denoiser.sigmas
    top = len(grid) - 1
    index = top - torch.floor(torch.arange(n, dtype=torch.float64) * (len(grid) / n)).long()
    return append_zero(grid[index.to(grid.device)])


def get_sigmas_ddim_uniform(denoiser: Any, n: int) -> torch.Tensor:
    """DDIM's integer timesteps (``make_ddim_timesteps("uniform")``: 1, 1 + c, 1 + 2c, ..., c = ⌊N/n⌋) as grid
    noise levels from the top, then 0; more than n values when n does not divide N, as in DDIM."""
    grid = denoiser.sigmas
    steps = torch.from_numpy(make_ddim_timesteps("uniform", n, len(grid), verbose=False).copy())
    return append_zero(grid[steps.flip(0).to(grid.device)])


def _grid_normal(denoiser: Any, n: int) -> torch.Tensor:
    return denoiser.get_sigmas(n)


def _parametric(maker: Any) -> Any:
    def schedule(denoiser: Any, n: int) -> torch.Tensor:
        device = denoiser.sigmas.device
        return maker(n, float(denoiser.sigma_min), float(denoiser.sigma_max), device=device)

    return schedule


_SCHEDULES = {
    "normal": _grid_normal,
    "uniform": _grid_normal,
    "karras": _parametric(get_sigmas_karras),
    "exponential": _parametric(get_sigmas_exponential),
    "polyexponential": _parametric(get_sigmas_polyexponential),
    "simple": get_sigmas_simple,
    "ddim_uniform": get_sigmas_ddim_uniform,
}
#: The names :func:`schedule_sigmas` accepts ("uniform" is another name for "normal").
SCHEDULE_NAMES = tuple(_SCHEDULES)


def schedule_sigmas(name: str, n: int, denoiser: Any) -> torch.Tensor:
    """The ``n``-step schedule ``name`` for ``denoiser`` (its σ grid, σ_min, σ_max), float32 ending in 0.

    ``normal``/``uniform``: ``denoiser.get_sigmas(n)``; ``karras`` (ρ = 7), ``exponential``, ``polyexponential``
    (ρ = 1) between the grid's σ_min and σ_max; ``simple``, ``ddim_uniform``: grid points.
    """
    if n < 1:
        raise ValueError(f"a schedule needs at least one step, got n={n}.")
    key = name.strip().lower().replace(" ", "_").replace("-", "_")
    if key not in _SCHEDULES:
        guesses = difflib.get_close_matches(key, SCHEDULE_NAMES, n=1, cutoff=0.4)
        hint = f"; did you mean {guesses[0]!r}?" if guesses else ""
        raise ValueError(f"unknown schedule {name!r}{hint} Valid schedules: {', '.join(SCHEDULE_NAMES)}.")
    return _SCHEDULES[key](denoiser, n).to(torch.float32)
