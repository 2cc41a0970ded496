"""Does a loaded checkpoint predict ε or v? The check behind the scripts' warning for the most reported SD 2.x
mistake: a 768-v checkpoint sampled under ``v2-inference.yaml`` (ε), or a 512-base one under ``v2-inference-v.yaml``.
Both load strictly (the two configs have the same keys) and give noise.

The probe looks at the last timestep T−1, where ᾱ is smallest (a = √ᾱ_{T−1} ≈ 0.07 for the SD schedule) and
x_t = a·x_0 + s·n is almost pure noise. Feeding x_t = s·n with n ~ N(0, I) and the unconditional conditioning:

- an ε-model answers ε̂ = E[n | x_t] ≈ n, so the regression coefficient β = ⟨f, n⟩ / ⟨n, n⟩ is close to 1;
- a v-model answers v̂ = a·ε̂ − s·x̂_0 ≈ a·n − s·E[x_0 | x_t]: β ≈ a, far below 1.

A model whose β is neither close to 1 nor small (an untrained one, say) gives no verdict.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

logger = logging.getLogger(__name__)

#: β above this reads as an ε-model, below :data:`V_LIKE` as a v-model.
EPS_LIKE = 0.7
V_LIKE = 0.3
#: The released configs for each answer, named in the warning.
SD2_CONFIG_FOR = {
    "eps": "configs/stable-diffusion/v2-inference.yaml (SD 2.x 512-base)",
    "v": "configs/stable-diffusion/v2-inference-v.yaml (SD 2.x 768-v)",
}
#: Conditioning stages of the SD 2.x text-to-image family, whose 512-base and 768-v checkpoints share every key.
SD2_TEXT_ENCODERS = ("FrozenOpenCLIPEmbedder",)


def _probe_input(model: Any, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``(n, x_t = s·n)`` at the last timestep, ``(1, C, h, h)`` with h = min(image_size, 16)."""
    side = min(int(model.image_size), 16)
    noise = torch.randn((1, model.channels, side, side), generator=generator)
    s = model.sqrt_one_minus_alphas_cumprod[-1].float().cpu()
    return noise, s * noise


@torch.no_grad()
def noise_regression(model: Any, seed: int = 0) -> float:
    """β = ⟨f(x_t, T−1, c_∅), n⟩ / ⟨n, n⟩ for x_t = √(1 − ᾱ_{T−1})·n: ≈ 1 for ε-models, ≈ √ᾱ_{T−1} for v-models."""
    noise, x_t = _probe_input(model, torch.Generator().manual_seed(seed))
    device = model.sqrt_one_minus_alphas_cumprod.device
    t = torch.full((1,), model.num_timesteps - 1, device=device, dtype=torch.long)
    cond = model.get_learned_conditioning([""]) if getattr(model, "cond_stage_model", None) is not None else None
    output = model.apply_model(x_t.to(device), t, cond).float().cpu()
    return float((output * noise).sum() / (noise * noise).sum())


def probe_parameterization(model: Any, seed: int = 0) -> str | None:
    """``"eps"``, ``"v"`` or ``None`` (no clear answer) from :func:`noise_regression`."""
    beta = noise_regression(model, seed)
    if beta > EPS_LIKE:
        return "eps"
    return "v" if beta < V_LIKE else None


def is_sd2_text_model(model: Any) -> bool:
    """An ε- or v-model conditioned by the SD 2.x text encoder alone (where both kinds of checkpoint exist); the
    inpainting, depth and upscaling models also take an image conditioning, which the probe cannot give."""
    encoder = type(getattr(model, "cond_stage_model", None)).__name__
    text_only = getattr(getattr(model, "model", None), "conditioning_key", "crossattn") == "crossattn"
    return encoder in SD2_TEXT_ENCODERS and text_only and getattr(model, "parameterization", None) in ("eps", "v")


def warn_on_parameterization_mismatch(model: Any, ckpt: str, config: str) -> str | None:
    """Log one warning naming the fix when an SD 2.x checkpoint's outputs contradict the config's
    ``parameterization``; returns what the probe found (``None`` without a verdict or for other models)."""
    if not is_sd2_text_model(model):
        return None
    found = probe_parameterization(model)
    declared = model.parameterization
    if found is not None and found != declared:
        logger.warning(
            "--ckpt %s looks like a %s-prediction model, but --config %s says parameterization %r: the samples "
            "will be noise. Use --config %s, or --parameterization %s to keep the config's.",
            ckpt, found, config, declared, SD2_CONFIG_FOR[found], declared,
        )
    return found
