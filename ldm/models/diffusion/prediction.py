"""What the network predicts, and the one place where that prediction becomes x̂_0 and ε̂.

With a = √ᾱ_t and s = √(1 − ᾱ_t) (so a² + s² = 1) the forward process is x_t = a·x_0 + s·ε, and a network may
predict one of three equivalent quantities:

- ``eps``: ε, so x̂_0 = (x_t − s·ε̂) / a;
- ``x0``:  x_0, so ε̂ = (x_t − a·x̂_0) / s;
- ``v``:   v = a·ε − s·x_0 (Salimans & Ho 2022), so x̂_0 = a·x_t − s·v̂ and ε̂ = s·x_t + a·v̂.

Every sampler and the training loss go through :func:`split_prediction` / :func:`training_target`; none of them
looks at the parameterization itself.
"""

from __future__ import annotations

import enum
from typing import NamedTuple

import torch

from ldm.util import SettingError


class Parameterization(str, enum.Enum):
    """The network's output type; the value is the config string (``model.params.parameterization``)."""

    EPS = "eps"
    X0 = "x0"
    V = "v"


def parse_parameterization(value: str | Parameterization) -> Parameterization:
    """``value`` as a :class:`Parameterization`; a :class:`~ldm.util.SettingError` naming the choices otherwise."""
    try:
        return Parameterization(value)
    except ValueError:
        choices = ", ".join(repr(p.value) for p in Parameterization)
        raise SettingError(f"parameterization {value!r} is not supported; use one of {choices}.") from None


class Prediction(NamedTuple):
    """A prediction seen both ways: ``x0`` (x̂_0) and ``eps`` (ε̂), each shaped like x_t."""

    x0: torch.Tensor
    eps: torch.Tensor


def split_prediction(
    parameterization: str | Parameterization,
    x_t: torch.Tensor,
    model_output: torch.Tensor,
    sqrt_alpha_bar: torch.Tensor,
    sqrt_one_minus_alpha_bar: torch.Tensor,
) -> Prediction:
    """(x̂_0, ε̂) from a network output ``(B, ...)`` at x_t ``(B, ...)``.

    :param sqrt_alpha_bar: a = √ᾱ_t, broadcastable to ``x_t`` (e.g. ``(B, 1, 1, 1)``).
    :param sqrt_one_minus_alpha_bar: s = √(1 − ᾱ_t), same shape.
    """
    a, s = sqrt_alpha_bar, sqrt_one_minus_alpha_bar
    kind = parse_parameterization(parameterization)
    if kind is Parameterization.EPS:
        return Prediction(x0=(x_t - s * model_output) / a, eps=model_output)
    if kind is Parameterization.X0:
        return Prediction(x0=model_output, eps=(x_t - a * model_output) / s)
    return Prediction(x0=a * x_t - s * model_output, eps=s * x_t + a * model_output)


def training_target(
    parameterization: str | Parameterization,
    x0: torch.Tensor,
    noise: torch.Tensor,
    sqrt_alpha_bar: torch.Tensor,
    sqrt_one_minus_alpha_bar: torch.Tensor,
) -> torch.Tensor:
    """What the network should output for x_t = a·x_0 + s·ε: ε, x_0 or v = a·ε − s·x_0 (shaped like ``x0``)."""
    kind = parse_parameterization(parameterization)
    if kind is Parameterization.EPS:
        return noise
    if kind is Parameterization.X0:
        return x0
    return sqrt_alpha_bar * noise - sqrt_one_minus_alpha_bar * x0
