"""Pieces every k-sampler shares: the one sampler signature, the ODE derivative and the callback record.

In the variance-exploding view z = x_0 + σ ε the probability-flow ODE is dz/dσ = (z − D(z, σ)) / σ
(Karras et al. 2022, eq. 4 with s(t) = 1), D the denoiser.

Every sampler is written as ``body(run, x, <noise levels>, <options>)`` and published by :func:`k_sampler` with
k-diffusion's signature ``sample_<name>(model, x, <noise levels>, extra_args=None, callback=None, disable=None,
<options>)``; an option that is a dataclass (a group such as η, S_noise and the noise sampler) stands in the public
signature as its fields.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable, Iterable
from typing import Any

import torch

from ldm.models.diffusion.sampler_core import checked_function_keywords, progress

__all__ = [
    "Denoiser", "SamplerRun", "StepCallback", "append_zero", "extra_arguments", "k_sampler", "ode_derivative",
    "report_step", "to_d",
]  # fmt: skip

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


@dataclasses.dataclass(frozen=True)
class SamplerRun:
    """One call of a k-sampler: the denoiser ``model`` with its ``extra_args``, the ``callback`` and the progress
    bar (titled ``label``, hidden with ``disable``)."""

    model: Denoiser
    extra_args: dict[str, Any]
    callback: StepCallback | None
    disable: bool | None
    label: str

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        """D(x, σ): the denoiser at one noise level ``sigma`` (0-dim) for every batch element of ``x`` ``(B, ...)``."""
        return self.model(x, sigma * x.new_ones([x.shape[0]]), **self.extra_args)

    def steps(self, count: int) -> Iterable[int]:
        """0, ..., ``count`` − 1 on the progress bar."""
        return progress(range(count), self.label, count, self.disable)

    def report(
        self, x: torch.Tensor, i: int, sigma: torch.Tensor, sigma_hat: torch.Tensor, denoised: torch.Tensor
    ) -> None:
        """:func:`report_step` to this run's callback."""
        report_step(self.callback, x, i, sigma, sigma_hat, denoised)


_KEYWORD = inspect.Parameter.POSITIONAL_OR_KEYWORD
#: The arguments every sampler takes after its noise levels, as k-diffusion names them.
_RUN_PARAMETERS = [
    inspect.Parameter("extra_args", _KEYWORD, default=None, annotation="dict[str, Any] | None"),
    inspect.Parameter("callback", _KEYWORD, default=None, annotation="StepCallback | None"),
    inspect.Parameter("disable", _KEYWORD, default=None, annotation="bool | None"),
]


def _public_options(option: inspect.Parameter) -> list[inspect.Parameter]:
    """A body's option as public parameters: its own, or the fields of a dataclass default (a group)."""
    group = option.default
    if not dataclasses.is_dataclass(group):
        return [option]
    return [inspect.Parameter(f.name, _KEYWORD, default=getattr(group, f.name), annotation=f.type)
            for f in dataclasses.fields(group)]  # fmt: skip


def _gathered(group: Any, values: dict[str, Any]) -> Any:
    """``group`` with the values of its fields taken out of ``values``."""
    return dataclasses.replace(group, **{f.name: values.pop(f.name) for f in dataclasses.fields(group)})


def k_sampler(label: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Publish ``body(run: SamplerRun, x, <levels>, <options>)`` as the sampler
    ``body.__name__(model, x, <levels>, extra_args=None, callback=None, disable=None, <options>)``.

    ``<levels>`` are the body's parameters without default (``sigmas``, or ``sigma_min, sigma_max``), ``<options>``
    those with one; a dataclass default is a group whose fields are public options, gathered back into the
    dataclass for the body. The sampler runs without gradients and rejects an unknown keyword with a
    ``TypeError`` naming the closest valid one. ``label`` titles the progress bar.
    """

    def publish(body: Callable[..., Any]) -> Callable[..., Any]:
        own = list(inspect.signature(body).parameters.values())[1:]
        levels = [p for p in own if p.default is p.empty]
        options = [p for p in own if p.default is not p.empty]
        groups = {p.name: p.default for p in options if dataclasses.is_dataclass(p.default)}
        model = inspect.Parameter("model", _KEYWORD, annotation="Denoiser")
        public = [model, *levels, *_RUN_PARAMETERS, *(q for p in options for q in _public_options(p))]
        signature = inspect.Signature(public, return_annotation=inspect.signature(body).return_annotation)

        @functools.wraps(body)
        def sampler(*args: Any, **kwargs: Any) -> Any:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            values = dict(bound.arguments)
            run = SamplerRun(values.pop("model"), extra_arguments(values.pop("extra_args")), values.pop("callback"),
                             values.pop("disable"), label)  # fmt: skip
            for name, group in groups.items():
                values[name] = _gathered(group, values)
            with torch.no_grad():
                return body(run, **values)

        sampler.__signature__ = signature  # type: ignore[attr-defined]
        return checked_function_keywords(sampler)

    return publish
