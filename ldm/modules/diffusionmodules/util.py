"""Small building blocks of the diffusion models: noise schedules, timestep embeddings, layers.

Everything here is shared by the UNet, ``DDPM``/``LatentDiffusion`` and the samplers.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.utils.checkpoint

from ldm.modules.diffusionmodules.checkpoint_function import CheckpointFunction  # noqa: F401  (original name)
from ldm.util import instantiate_from_config

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------------------
# Noise schedules
# --------------------------------------------------------------------------------------------------------


def _betas_from_alpha_bar(alpha_bar: torch.Tensor, max_beta: float, min_beta: float | None = None) -> torch.Tensor:
    """β_t = 1 − ᾱ_{t+1}/ᾱ_t for a table ᾱ_0..ᾱ_T ``(T + 1,)``, clipped to [``min_beta``, ``max_beta``]."""
    return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(min=min_beta, max=max_beta)


def _cosine_betas(n: int, start: float, end: float, offset: float) -> torch.Tensor:
    """Nichol & Dhariwal 2021, eq. 17: ᾱ(u) = f(u)/f(0), f(u) = cos²((u + s)/(1 + s) · π/2), u = t/T; β ≤ 0.999."""
    u = torch.arange(n + 1, dtype=torch.float64) / n + offset
    f = torch.cos(u / (1 + offset) * math.pi / 2).pow(2)
    return _betas_from_alpha_bar(f / f[0], max_beta=0.999, min_beta=0.0)


def _evenly(start: float, end: float, n: int) -> torch.Tensor:
    return torch.linspace(start, end, n, dtype=torch.float64)


#: name -> β(n, β_start, β_end, cosine offset s), float64 ``(n,)``.
BETA_SCHEDULES: dict[str, Callable[[int, float, float, float], torch.Tensor]] = {
    "linear": lambda n, start, end, _: _evenly(start**0.5, end**0.5, n) ** 2,  # evenly spaced in √β
    "cosine": _cosine_betas,
    "sqrt_linear": lambda n, start, end, _: _evenly(start, end, n),  # evenly spaced in β
    "sqrt": lambda n, start, end, _: _evenly(start, end, n) ** 0.5,  # the square roots of those
    # Karlo's (unCLIP noise augmentation): cosine with s = 0.008, β ≤ 0.999, no lower clip.
    "squaredcos_cap_v2": lambda n, *_: torch.from_numpy(
        betas_for_alpha_bar(n, lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2)
    ),
}


def make_beta_schedule(
    schedule: str,
    n_timestep: int,
    linear_start: float = 1e-4,
    linear_end: float = 2e-2,
    cosine_s: float = 8e-3,
) -> np.ndarray:
    """β_1..β_T of the schedule named ``schedule`` (a key of :data:`BETA_SCHEDULES`), float64 ``(n_timestep,)``.

    - ``linear``: β_t = (linspace(√β_start, √β_end))², the latent-diffusion default;
    - ``cosine``: ᾱ(t) = cos²((t/T + s)/(1 + s) · π/2) / cos²(s/(1 + s) · π/2), β_t = 1 − ᾱ_t/ᾱ_{t−1} ≤ 0.999;
    - ``sqrt_linear``: β_t = linspace(β_start, β_end);
    - ``sqrt``: β_t = linspace(β_start, β_end)^½;
    - ``squaredcos_cap_v2``: β_t = min(1 − ᾱ((t+1)/T)/ᾱ(t/T), 0.999), ᾱ(u) = cos²((u + 0.008)/1.008 · π/2).
    """
    make = BETA_SCHEDULES.get(schedule)
    if make is None:
        raise ValueError(f"beta_schedule {schedule!r} is unknown; use one of {', '.join(map(repr, BETA_SCHEDULES))}.")
    return make(n_timestep, linear_start, linear_end, cosine_s).numpy()


def betas_for_alpha_bar(
    num_diffusion_timesteps: int, alpha_bar: Callable[[float], float], max_beta: float = 0.999
) -> np.ndarray:
    """β_t = min(1 − ᾱ((t+1)/T) / ᾱ(t/T), max_beta), t = 0..T−1, for a continuous ``alpha_bar`` on [0, 1]."""
    grid = [alpha_bar(k / num_diffusion_timesteps) for k in range(num_diffusion_timesteps + 1)]
    return _betas_from_alpha_bar(torch.tensor(grid, dtype=torch.float64), max_beta=max_beta).numpy()


def make_ddim_timesteps(
    ddim_discr_method: str, num_ddim_timesteps: int, num_ddpm_timesteps: int, verbose: bool = True
) -> np.ndarray:
    """The DDPM timesteps (int64, ascending) a DDIM sampler visits, each shifted by +1.

    ``uniform``: every ``T // S``-th step, ``[0, c, 2c, ...] + 1`` (``[1, 101, ..., 901]`` for S=10, T=1000;
    ``range(0, T, c)`` holds more than S entries when S does not divide T);
    ``quad``: ``⌊linspace(0, √(0.8 T), S)²⌋ + 1``.
    """
    if num_ddim_timesteps < 1 or num_ddim_timesteps > num_ddpm_timesteps:
        raise ValueError(
            f"ddim_num_steps={num_ddim_timesteps} is out of range; use 1 <= S <= {num_ddpm_timesteps} (the model's "
            "num_timesteps)."
        )
    if ddim_discr_method == "uniform":
        stride = num_ddpm_timesteps // num_ddim_timesteps
        steps = np.asarray(list(range(0, num_ddpm_timesteps, stride)), dtype=np.int64)
    elif ddim_discr_method == "quad":
        steps = (np.linspace(0, np.sqrt(num_ddpm_timesteps * 0.8), num_ddim_timesteps) ** 2).astype(np.int64)
    else:
        raise NotImplementedError(f"ddim_discretize {ddim_discr_method!r} is unknown; use 'uniform' or 'quad'.")
    steps_out = steps + 1
    if steps_out[-1] >= num_ddpm_timesteps:
        raise ValueError(
            f"ddim_num_steps={num_ddim_timesteps} with {ddim_discr_method!r} spacing needs timestep {steps_out[-1]}, "
            f"past the model's last step {num_ddpm_timesteps - 1}; choose another S, e.g. a divisor of "
            f"{num_ddpm_timesteps} that is at most {num_ddpm_timesteps // 2}."
        )
    if verbose:
        logger.info("Selected timesteps for ddim sampler: %s", steps_out)
    return steps_out


def make_ddim_sampling_parameters(
    alphacums: torch.Tensor | np.ndarray, ddim_timesteps: np.ndarray, eta: float, verbose: bool = True
) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """σ_t, ᾱ_t and ᾱ_{t_prev} of a DDIM schedule.

    σ_t = η · √((1 − ᾱ_prev)/(1 − ᾱ_t) · (1 − ᾱ_t/ᾱ_prev)) (DDIM paper, eq. 16), ᾱ_prev of the first step = ᾱ_0.
    Returns ``(sigmas, alphas, alphas_prev)``: ``alphas`` a tensor in the dtype of ``alphacums`` (float32 for the
    model's buffer), ``alphas_prev`` a float64 numpy array, ``sigmas`` a float64 tensor with 1/(1 − ᾱ_t) taken in
    the dtype of ``alphacums`` and numpy's square root (the rounding tests/refdata records).
    """
    alphacums = torch.as_tensor(alphacums).cpu()
    index = torch.as_tensor(np.asarray(ddim_timesteps, dtype=np.int64))
    alphas = alphacums[index]
    alphas_prev = np.asarray([float(alphacums[0])] + alphacums[index[:-1]].tolist(), dtype=np.float64)
    prev = torch.from_numpy(alphas_prev)
    ratio = torch.reciprocal(1 - alphas).double() * (1 - prev) * (1 - alphas.double() / prev)
    sigmas = eta * torch.from_numpy(np.sqrt(ratio.numpy()))
    if verbose:
        logger.info("Selected alphas for ddim sampler: a_t: %s; a_(t-1): %s", alphas, alphas_prev)
        logger.info("For eta=%s this gives the sigma_t schedule %s", eta, sigmas)
    return sigmas, alphas, alphas_prev


def extract_into_tensor(a: torch.Tensor, t: torch.Tensor, x_shape: Sequence[int]) -> torch.Tensor:
    """``a[t]`` reshaped to ``(B, 1, ..., 1)`` so that it broadcasts against a tensor of shape ``x_shape``."""
    out = a.gather(-1, t)
    return out.reshape(t.shape[0], *((1,) * (len(x_shape) - 1)))


def noise_like(
    shape: Sequence[int],
    device: torch.device | str,
    repeat: bool = False,
    generator: torch.Generator | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Standard normal noise of ``shape``; with ``repeat`` one draw shared by the whole batch."""
    if repeat:
        noise = torch.randn((1, *shape[1:]), device=device, generator=generator, dtype=dtype)
        return noise.repeat(shape[0], *((1,) * (len(shape) - 1)))
    return torch.randn(tuple(shape), device=device, generator=generator, dtype=dtype)


# --------------------------------------------------------------------------------------------------------
# Timestep embedding and gradient checkpointing
# --------------------------------------------------------------------------------------------------------


def sinusoid_frequencies(count: int, max_period: float, device: torch.device | str) -> torch.Tensor:
    """ω_i = max_period^(−i/count) for i = 0..count−1, float32 ``(count,)``."""
    return torch.exp(-math.log(max_period) * torch.arange(count, dtype=torch.float32, device=device) / count)


def timestep_embedding(
    timesteps: torch.Tensor, dim: int, max_period: int = 10000, repeat_only: bool = False
) -> torch.Tensor:
    """Sinusoidal embedding ``(B,) -> (B, dim)``: [cos(t·ω_i), sin(t·ω_i)] with ω_i = max_period^(−i/⌊dim/2⌋),
    and one zero column when ``dim`` is odd; ``repeat_only`` gives t repeated ``dim`` times instead."""
    if repeat_only:
        return timesteps.unsqueeze(1).repeat(1, dim)
    omega = sinusoid_frequencies(dim // 2, max_period, timesteps.device)
    phases = timesteps.float().unsqueeze(1) * omega.unsqueeze(0)  # (B, dim // 2)
    parts = [phases.cos(), phases.sin()] + ([phases.new_zeros(len(phases), 1)] if dim % 2 else [])
    return torch.cat(parts, dim=1)


def checkpoint(
    func: Callable[..., torch.Tensor], inputs: Sequence[torch.Tensor], params: Iterable[torch.Tensor], flag: bool
) -> torch.Tensor:
    """Run ``func(*inputs)``, recomputing its activations in the backward pass when ``flag`` is set.

    Uses non-reentrant ``torch.utils.checkpoint``, which saves memory and handles ``params`` itself (the
    argument is kept for the original call signature). Checkpointing only applies while gradients are on.
    """
    if flag and torch.is_grad_enabled():
        return torch.utils.checkpoint.checkpoint(func, *inputs, use_reentrant=False)
    return func(*inputs)


# --------------------------------------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------------------------------------


def zero_module(module: nn.Module) -> nn.Module:
    """Zero every parameter of ``module`` and return it."""
    for p in module.parameters():
        p.detach().zero_()
    return module


def scale_module(module: nn.Module, scale: float) -> nn.Module:
    """Multiply every parameter of ``module`` by ``scale`` and return it."""
    for p in module.parameters():
        p.detach().mul_(scale)
    return module


def mean_flat(tensor: torch.Tensor) -> torch.Tensor:
    """Mean over every dimension but the batch one: ``(B, ...) -> (B,)``."""
    return tensor.mean(dim=list(range(1, tensor.ndim)))


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 whatever the input dtype, cast back afterwards."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).type(x.dtype)


def normalization(channels: int) -> nn.Module:
    """The UNet's normalisation layer: ``GroupNorm32(32, channels)``."""
    return GroupNorm32(32, channels)


class SiLU(nn.SiLU):
    """x · σ(x); kept under its original name."""


def conv_nd(dims: int, *args, **kwargs) -> nn.Module:
    """A 1-, 2- or 3-D convolution."""
    layers = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
    if dims not in layers:
        raise ValueError(f"unsupported dimensions: {dims}")
    return layers[dims](*args, **kwargs)


def linear(*args, **kwargs) -> nn.Module:
    return nn.Linear(*args, **kwargs)


def avg_pool_nd(dims: int, *args, **kwargs) -> nn.Module:
    """A 1-, 2- or 3-D average pooling."""
    layers = {1: nn.AvgPool1d, 2: nn.AvgPool2d, 3: nn.AvgPool3d}
    if dims not in layers:
        raise ValueError(f"unsupported dimensions: {dims}")
    return layers[dims](*args, **kwargs)


class HybridConditioner(nn.Module):
    """Two conditioners built from configs: ``forward(c_concat, c_crossattn)`` returns
    ``{"c_concat": [concat_conditioner(c_concat)], "c_crossattn": [crossattn_conditioner(c_crossattn)]}``."""

    def __init__(self, c_concat_config: Mapping[str, Any], c_crossattn_config: Mapping[str, Any]) -> None:
        super().__init__()
        self.concat_conditioner = instantiate_from_config(c_concat_config, name="c_concat_config")
        self.crossattn_conditioner = instantiate_from_config(c_crossattn_config, name="c_crossattn_config")

    def forward(self, c_concat: Any, c_crossattn: Any) -> dict[str, list[Any]]:
        return {
            "c_concat": [self.concat_conditioner(c_concat)],
            "c_crossattn": [self.crossattn_conditioner(c_crossattn)],
        }
