"""``model_wrapper``: any diffusion model as the continuous-time noise predictor ε̂(x, t) DPM-Solver integrates.

A model is called at its own time label, the step τ = N t − 1 of a discrete model (t_n = (n + 1)/N) or t itself
for a continuous one, and its output becomes ε̂ by the parameterization (``model_type``):

- ``"noise"``: ε̂ = output;  ``"score"``: ε̂ = −σ_t · output (ε = −σ_t ∇_x log p_t);
- ``"x_start"`` and ``"v"``: :func:`~ldm.models.diffusion.prediction.split_prediction` with a = α_t, s = σ_t.

Guidance (``guidance_type``) acts on ε̂ at fixed t:

- ``"classifier"`` (Dhariwal & Nichol 2021): ε̂ − w σ_t ∇_x log p_t(c | x);
- ``"classifier-free"`` (Ho & Salimans 2022): ε̂_u + w (ε̂_c − ε̂_u), one model call on the doubled batch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

import torch

from ldm.models.diffusion.dpm_solver.exp_integrator import expand_dims
from ldm.models.diffusion.prediction import split_prediction
from ldm.models.diffusion.sampler_core import concat_conditionings

MODEL_TYPES = ("noise", "x_start", "v", "score")
GUIDANCE_TYPES = ("uncond", "classifier", "classifier-free")
#: Our parameterization names of the wrapper's model types that :func:`split_prediction` converts.
SPLIT_KINDS = {"x_start": "x0", "v": "v"}
#: An empty, read-only keyword mapping: the default of ``model_kwargs`` and ``classifier_kwargs``.
NO_KWARGS: Mapping[str, Any] = MappingProxyType({})

#: ``model_fn(x, t_continuous) -> ε̂`` with x ``(B, ...)`` and t a ``(B,)`` or one-element tensor.
NoiseModel = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def model_input_time(noise_schedule: Any, t_continuous: torch.Tensor) -> torch.Tensor:
    """The model's time label: τ = N t − 1 on a discrete schedule (for N = 1000, the original's (t − 1/N)·1000),
    t on a continuous one."""
    if noise_schedule.schedule == "discrete":
        return noise_schedule.total_N * t_continuous - 1.0
    return t_continuous


def noise_from_output(
    model_type: str, output: torch.Tensor, x: torch.Tensor, noise_schedule: Any, t: torch.Tensor
) -> torch.Tensor:
    """ε̂ ``(B, ...)`` from a model output of ``model_type`` at x_t ``(B, ...)``, t ``(B,)`` (module docstring)."""
    if model_type == "noise":
        return output
    sigma = expand_dims(noise_schedule.marginal_std(t), x.dim())
    if model_type == "score":
        return -sigma * output
    alpha = expand_dims(noise_schedule.marginal_alpha(t), x.dim())
    return split_prediction(SPLIT_KINDS[model_type], x, output, alpha, sigma).eps


def _check_choices(model_type: str, guidance_type: str, classifier_fn: Any) -> None:
    if model_type not in MODEL_TYPES:
        raise ValueError(f"model_type must be one of {MODEL_TYPES}, got {model_type!r}.")
    if guidance_type not in GUIDANCE_TYPES:
        raise ValueError(f"guidance_type must be one of {GUIDANCE_TYPES}, got {guidance_type!r}.")
    if guidance_type == "classifier" and classifier_fn is None:
        raise ValueError("guidance_type='classifier' needs classifier_fn(x, t_input, condition) -> log p(c | x).")


def model_wrapper(
    model: Callable[..., torch.Tensor],
    noise_schedule: Any,
    model_type: str = "noise",
    model_kwargs: Mapping[str, Any] = NO_KWARGS,
    guidance_type: str = "uncond",
    condition: Any = None,
    unconditional_condition: Any = None,
    guidance_scale: float = 1.0,
    classifier_fn: Callable[..., torch.Tensor] | None = None,
    classifier_kwargs: Mapping[str, Any] = NO_KWARGS,
) -> NoiseModel:
    """``model_fn(x, t_continuous) -> ε̂`` for DPM-Solver (module docstring for the conversions and guidance).

    ``model(x, t_input, **model_kwargs)`` is called without guidance or with classifier guidance,
    ``model(x, t_input, cond, **model_kwargs)`` with classifier-free guidance (``cond`` a tensor, a list or a
    dict of them, as :func:`~ldm.models.diffusion.sampler_core.concat_conditionings` stacks them); with w = 1 or
    no ``unconditional_condition`` it is called once on ``condition``. ``classifier_fn(x, t_input, condition,
    **classifier_kwargs)`` returns log p(c | x) per sample ``(B,)``. Unlike the original, ``"score"`` models pass
    the type check.
    """
    _check_choices(model_type, guidance_type, classifier_fn)

    def predict_noise(x: torch.Tensor, t: torch.Tensor, *cond: Any) -> torch.Tensor:
        output = model(x, model_input_time(noise_schedule, t), *cond, **model_kwargs)
        return noise_from_output(model_type, output, x, noise_schedule, t)

    def log_likelihood_gradient(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            leaf = x.detach().requires_grad_(True)
            log_p = classifier_fn(leaf, model_input_time(noise_schedule, t), condition, **classifier_kwargs)
            return torch.autograd.grad(log_p.sum(), leaf)[0]

    def classifier_guided(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        sigma = expand_dims(noise_schedule.marginal_std(t), x.dim())
        return predict_noise(x, t) - guidance_scale * sigma * log_likelihood_gradient(x, t)

    def classifier_free(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if unconditional_condition is None or guidance_scale == 1.0:
            return predict_noise(x, t, condition)
        pair = concat_conditionings(unconditional_condition, condition)
        eps_u, eps_c = predict_noise(torch.cat([x, x]), torch.cat([t, t]), pair).chunk(2)
        return eps_u + guidance_scale * (eps_c - eps_u)

    guided = {"uncond": predict_noise, "classifier": classifier_guided, "classifier-free": classifier_free}

    def model_fn(x: torch.Tensor, t_continuous: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t_continuous, device=x.device)
        return guided[guidance_type](x, t.expand(x.shape[0]) if t.numel() == 1 else t)

    return model_fn
