"""Pieces every k-sampler shares: the ODE derivative, the callback record and the argument defaults.

In the variance-exploding view z = x_0 + σ ε the probability-flow ODE is dz/dσ = (z − D(z, σ)) / σ
(Karras et al. 2022, eq. 4 with s(t) = 1), D the denoiser.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

__all__ = ["Denoiser", "StepCallback", "append_zero", "ode_derivative", "to_d", "report_step", "extra_arguments"]

#: ``model(z, sigma, **extra_args) -> x̂_0``: z ``(B, ...)``, sigma ``(B,)``.
Denoiser = Callable[..., torch.Tensor]
#: ``callback({"x", "i", "sigma", "sigma_hat", "denoised"})`` after each model evaluation of a step.
StepCallback = Callable[[dict[str, Any]], None]


def append_zero(sigmas: torch.Tensor) -> torch.Tensor:
    """``sigmas`` ``(n,)`` followed by a 0, ``(n + 1,)``."""
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def ode_derivative(z: torch.Tensor, sigma: torch.Tensor | float, denoised: torch.Tensor) -> torch.Tensor:
    """dz/dσ = (z − x̂_0) / σ, with σ a scalar or a ``(B,)`` tensor broadcast over z's trailing dims."""
    if isinstance(sigma, torch.Tensor) and sigma.ndim:
        sigma = sigma.reshape(sigma.shape + (1,) * (z.ndim - sigma.ndim))
    return (z - denoised) / sigma


#: k-diffusion's name for :func:`ode_derivative`.
to_d = ode_derivative


def report_step(
    callback: StepCallback | None,
    x: torch.Tensor,
    i: int,
    sigma: torch.Tensor,
    sigma_hat: torch.Tensor,
    denoised: torch.Tensor,
) -> None:
    """Call ``callback`` with k-diffusion's step record (no-op when it is None)."""
    if callback is not None:
        callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma_hat, "denoised": denoised})


def extra_arguments(extra_args: dict[str, Any] | None) -> dict[str, Any]:
    """The keyword arguments passed to every model call (an empty dict for None)."""
    return {} if extra_args is None else extra_args
