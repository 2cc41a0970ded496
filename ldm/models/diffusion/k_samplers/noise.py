"""Noise sources of the ancestral and SDE samplers, and the ancestral split of a step.

A noise sampler is a callable ``noise(σ, σ_next) -> ξ`` returning a standard-normal tensor shaped like the
sampler's z for the step σ → σ_next. Three sources:

* :func:`default_noise_sampler`: independent draws, from the global generator or a given ``torch.Generator``;
* :class:`BrownianTreeNoiseSampler`: normalised increments ξ = (W(σ_next) − W(σ)) / √|σ_next − σ| of one Brownian
  path W over [σ_min, σ_max] fixed by a seed (``torchsde.BrownianTree``), so that the noise of an SDE sampler
  hardly depends on the step count (Kidger et al. 2021, "Efficient and accurate gradients for neural SDEs");
* :class:`RecordedNoise`: a stored sequence of tensors handed out in order (with :class:`NoiseRecorder`, which
  stores what another source gives), so that a run is reproduced exactly.
"""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torchsde

__all__ = [
    "ANCESTRAL_NOISE",
    "BrownianTreeNoiseSampler",
    "NO_NOISE",
    "NoiseOptions",
    "NoiseRecorder",
    "NoiseSampler",
    "RecordedNoise",
    "default_noise_sampler",
    "get_ancestral_step",
    "recorded_noise",
]

#: ``noise(sigma, sigma_next) -> ξ ~ N(0, I)`` shaped like the sampler's z ``(B, ...)``.
NoiseSampler = Callable[[torch.Tensor | float, torch.Tensor | float], torch.Tensor]
Level = torch.Tensor | float


@dataclass(frozen=True)
class NoiseOptions:
    """The noise of a stochastic step: σ_up from η (:func:`get_ancestral_step`), scaled by S_noise, times
    ξ = ``noise_sampler(σ, σ_next)`` (each sampler has its default source when None)."""

    eta: float = 1.0
    s_noise: float = 1.0
    noise_sampler: NoiseSampler | None = None


#: The ancestral and SDE samplers' defaults (η = 1).
ANCESTRAL_NOISE = NoiseOptions()
#: The DPM-Solver samplers' defaults (η = 0: no noise unless asked for).
NO_NOISE = NoiseOptions(eta=0.0)


def get_ancestral_step(sigma_from: Level, sigma_to: Level, eta: float = 1.0) -> tuple[Level, Level]:
    """(σ_down, σ_up) for an ancestral step σ_from → σ_to (Karras et al. 2022; Song et al. 2021's η):

    σ_up = min(σ_to, η √(σ_to² (σ_from² − σ_to²) / σ_from²)),  σ_down = √(σ_to² − σ_up²),

    so that a deterministic step to σ_down plus fresh noise of standard deviation σ_up lands on noise level σ_to.
    η = 1 gives the DDPM posterior's variance; η = 0 returns (σ_to, 0) exactly. Scalars or 0-dim tensors.
    """
    if not eta:
        return sigma_to, 0.0
    renewed_variance = sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2
    sigma_up = eta * renewed_variance**0.5
    if isinstance(sigma_up, torch.Tensor) or isinstance(sigma_to, torch.Tensor):
        sigma_up = torch.minimum(torch.as_tensor(sigma_up), torch.as_tensor(sigma_to))
    else:
        sigma_up = min(sigma_up, sigma_to)
    return (sigma_to**2 - sigma_up**2) ** 0.5, sigma_up


def default_noise_sampler(x: torch.Tensor, generator: torch.Generator | None = None) -> NoiseSampler:
    """Fresh N(0, I) draws shaped like ``x`` at every call, ignoring (σ, σ_next).

    Without ``generator`` each draw is ``torch.randn_like(x)`` on the global generator (k-diffusion's default, so
    ``torch.manual_seed`` reproduces its runs); with one, ``torch.randn(x.shape, generator=generator)``.
    """
    if generator is None:
        return lambda sigma, sigma_next: torch.randn_like(x)
    return lambda sigma, sigma_next: torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


class BrownianTreeNoiseSampler:
    """Normalised Brownian increments ξ = ±(W(u') − W(u)) / √|u' − u|, u = ``transform``(σ), u' = ``transform``(σ').

    ``x``: ``(B, ...)``, gives shape, dtype and device. ``sigma_min``/``sigma_max``: the range the path covers
    (torchsde clamps queries outside it; it warns unless they are off by no more than rounding, as the round
    trips σ → λ → σ of the SDE samplers are). ``seed``: an int for one path over the whole of
    ``x``, or a sequence of B ints for one path per batch element (each ``x[0]``-shaped, so a sample's noise does
    not depend on its batch); None draws one with ``torch.randint`` from the global generator. The sign is + when
    ``transform`` increases and − when it decreases, k-diffusion's convention, so a seed gives its exact noise.
    """

    def __init__(
        self,
        x: torch.Tensor,
        sigma_min: Level,
        sigma_max: Level,
        seed: int | Sequence[int] | None = None,
        transform: Callable[[torch.Tensor], torch.Tensor] = lambda s: s,
    ) -> None:
        self.transform = transform
        ends = sorted(float(transform(torch.as_tensor(s))) for s in (sigma_min, sigma_max))
        rising = transform(torch.as_tensor(sigma_min)) < transform(torch.as_tensor(sigma_max))
        self.orientation = 1.0 if rising else -1.0
        if seed is None:
            seed = int(torch.randint(0, 2**63 - 1, []).item())
        self.per_sample = not _is_single_seed(seed)
        if self.per_sample:
            seeds = [int(s) for s in seed]  # type: ignore[union-attr]
            if len(seeds) != x.shape[0]:
                raise ValueError(
                    f"BrownianTreeNoiseSampler got {len(seeds)} seeds for a batch of {x.shape[0]}; pass one int, "
                    "or one seed per batch element."
                )
            start = torch.zeros_like(x[0])
        else:
            seeds, start = [int(seed)], torch.zeros_like(x)  # type: ignore[arg-type]
        self.ends = (ends[0], ends[1])
        self.paths = [torchsde.BrownianTree(ends[0], start, ends[1], entropy=s) for s in seeds]

    def _increment(self, u: float, u_next: float) -> torch.Tensor:
        """W(u_next) − W(u) of every path (stacked over the batch when there is one path per sample)."""
        lo, hi = min(u, u_next), max(u, u_next)
        with warnings.catch_warnings():
            if self._within_rounding(lo, hi):  # torchsde rounds its ends to 1e-6 and warns about round trips
                warnings.filterwarnings("ignore", message="Should have t", category=UserWarning)
            parts = [path(lo, hi) for path in self.paths]
        rise = torch.stack(parts) if self.per_sample else parts[0]
        return rise if u_next >= u else -rise

    def _within_rounding(self, lo: float, hi: float) -> bool:
        """Whether [lo, hi] lies in the path's range up to torchsde's rounding (1e-6) and float32's (≈ 6e-8 rel.)."""
        start, end = self.ends
        return lo >= start - 1e-6 - 1e-6 * abs(start) and hi <= end + 1e-6 + 1e-6 * abs(end)

    def __call__(self, sigma: Level, sigma_next: Level) -> torch.Tensor:
        u, u_next = self.transform(torch.as_tensor(sigma)), self.transform(torch.as_tensor(sigma_next))
        step = self._increment(float(u), float(u_next)) * self.orientation
        return step / (u_next - u).abs().sqrt()


def _is_single_seed(seed: object) -> bool:
    if isinstance(seed, torch.Tensor):
        return seed.ndim == 0
    return isinstance(seed, numbers.Integral)


class RecordedNoise:
    """Replays ``tensors`` (a sequence or a ``(K, B, ...)`` tensor) one per call, whatever (σ, σ_next) is asked.

    ``calls`` lists the (σ, σ_next) of each call as floats. A call past the end raises ``IndexError``.
    """

    def __init__(self, tensors: Sequence[torch.Tensor] | torch.Tensor) -> None:
        self.tensors = tensors
        self.calls: list[tuple[float, float]] = []

    def __call__(self, sigma: Level, sigma_next: Level) -> torch.Tensor:
        if len(self.calls) >= len(self.tensors):
            raise IndexError(
                f"the recorded noise holds {len(self.tensors)} tensors and the sampler asked for one more (call "
                f"{len(self.calls) + 1}, sigma {float(sigma):.6g} -> {float(sigma_next):.6g}); record the run with "
                "the same sampler, schedule and eta."
            )
        self.calls.append((float(sigma), float(sigma_next)))
        return self.tensors[len(self.calls) - 1].clone()


def recorded_noise(tensors: Sequence[torch.Tensor] | torch.Tensor) -> RecordedNoise:
    """A noise sampler that returns ``tensors[0], tensors[1], ...`` in call order (see :class:`RecordedNoise`)."""
    return RecordedNoise(tensors)


class NoiseRecorder:
    """Wraps a noise sampler and keeps what it returned (``tensors``) and for which (σ, σ_next) (``calls``).

    ``recorded_noise(recorder.tensors)`` then reproduces the run.
    """

    def __init__(self, source: NoiseSampler) -> None:
        self.source = source
        self.tensors: list[torch.Tensor] = []
        self.calls: list[tuple[float, float]] = []

    def __call__(self, sigma: Level, sigma_next: Level) -> torch.Tensor:
        drawn = self.source(sigma, sigma_next)
        self.tensors.append(drawn.detach().clone())
        self.calls.append((float(sigma), float(sigma_next)))
        return drawn
