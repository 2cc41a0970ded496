"""Ancestral (DDPM) sampling of a ``LatentDiffusion`` model, p(x_{t−1} | x_t, c), as functions of the model.

They bind the conditioning into ``model_fn(x_t, t)`` and hand it to
:meth:`~ldm.models.diffusion.gaussian_diffusion.GaussianDiffusion.p_sample_loop`; ``LatentDiffusion``'s
``p_mean_variance`` / ``p_sample`` / ``p_sample_loop`` / ``progressive_denoising`` are one-line calls of these.
DDIM and the other samplers live in :mod:`ldm.models.diffusion.ddim` and beside it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from ldm.models.diffusion.gaussian_diffusion import DenoisedFn, ModelFn
from ldm.util import SettingError


def conditioned_model_fn(
    model: Any,
    cond: Any,
    score_corrector: Any = None,
    corrector_kwargs: dict[str, Any] | None = None,
    renoise_cond: bool = False,
) -> ModelFn:
    """``model_fn(x_t, t) = apply_model(x_t, t, c)``, with ``score_corrector.modify_score`` applied to ε̂ if given.

    ``renoise_cond``: when the model diffuses its conditioning too (``num_timesteps_cond > 1``), every call first
    noises the conditioning of the previous call further to step t (as a sampling chain does).
    """
    if score_corrector is not None and model.parameterization != "eps":
        raise SettingError("score_corrector needs parameterization 'eps'.")
    current = {"cond": cond}

    def model_fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if renoise_cond and model.shorten_cond_schedule:
            current["cond"] = model._noised_cond(current["cond"], t)
        output = model.apply_model(x_t, t, current["cond"])
        if score_corrector is not None:
            output = score_corrector.modify_score(model, output, x_t, t, current["cond"], **(corrector_kwargs or {}))
        return output

    return model_fn


def codebook_snap(model: Any) -> DenoisedFn:
    """x̂_0 → its nearest codebook entries (VQ first stages: ``quantize_denoised``)."""
    return lambda x0: model.first_stage_model.quantize(x0)[0]


def ancestral_chain(
    model: Any,
    cond: Any,
    x_T: torch.Tensor,
    steps: int,
    *,
    quantize_denoised: bool = False,
    score_corrector: Any = None,
    corrector_kwargs: dict[str, Any] | None = None,
    callback: Callable[[int], None] | None = None,
    img_callback: Callable[[torch.Tensor, int], None] | None = None,
    **loop_options: Any,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The ancestral chain from x_T over ``steps`` steps with the conditioning bound in.

    The LatentDiffusion keywords become the chain's parts here (``quantize_denoised`` → codebook snap of x̂_0,
    ``score_corrector`` → the model function, ``callback(i)`` / ``img_callback(x, i)`` → one step hook); the rest
    (``record``, ``log_every_t``, ``progress``, ``mask``, ``x0``, ``temperature``, ``noise_dropout``,
    ``generator``) are :meth:`~ldm.models.diffusion.gaussian_diffusion.GaussianDiffusion.p_sample_loop`'s own.
    """

    def on_step(i: int, x: torch.Tensor, _: torch.Tensor) -> None:
        if callback:
            callback(i)
        if img_callback:
            img_callback(x, i)

    return model.diffusion.p_sample_loop(
        conditioned_model_fn(model, cond, score_corrector, corrector_kwargs, renoise_cond=True),
        x_T,
        steps=steps,
        clip_denoised=model.clip_denoised,
        denoised_fn=codebook_snap(model) if quantize_denoised else None,
        on_step=on_step,
        **loop_options,
    )


def initial_latents(
    model: Any, shape: Sequence[int], x_T: torch.Tensor | None, generator: torch.Generator | None
) -> torch.Tensor:
    """x_T: the given one, or N(0, I) of ``shape`` on the model's device."""
    if x_T is not None:
        return x_T
    return torch.randn(tuple(shape), device=model.betas.device, generator=generator)


def step_count(model: Any, timesteps: int | None, start_T: int | None) -> int:
    """How many ancestral steps to take: ``timesteps`` (default all T), at most ``start_T``."""
    steps = model.num_timesteps if timesteps is None else timesteps
    return steps if start_T is None else min(steps, start_T)

