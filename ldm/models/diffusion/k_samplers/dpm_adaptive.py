"""DPM-Solver-1/2/3 (Lu et al. 2022, "DPM-Solver", Algorithms 4–5) with fixed and adaptive step sizes.

In λ = −log σ the noise-prediction ODE of z = x_0 + σ ε has the exact solution
z(λ') = z(λ) − σ(λ') ∫ e^{λ'−τ} ε̂(z_τ, τ) dτ; with h = λ' − λ and ε̂ = (z − D(z, σ))/σ the solvers are

(1) first order:  z' = z − σ' (e^h − 1) ε̂_0                                  (DDIM),
(2) second order: z' = (1) − σ'/(2 r_1) (e^h − 1) (ε̂_1 − ε̂_0),  ε̂_1 at λ + r_1 h from (1),
(3) third order:  z' = (1) − σ'/r_2 φ(h) (ε̂_2 − ε̂_0),  φ(h) = (e^h − 1)/h − 1,  ε̂_1 at λ + h/3 from (1),
                  ε̂_2 at λ + 2h/3 from (1) − σ_2 (r_2/r_1) φ(r_2 h) (ε̂_1 − ε̂_0).

``sample_dpm_fast`` spends n model calls on ⌊n/3⌋ + 1 intervals uniform in λ (orders 3, ..., 3 and the rest);
``sample_dpm_adaptive`` pairs orders (1, 2) or (2, 3) sharing their evaluations, and a PID controller on the
scaled difference picks h. With η > 0 each step targets the ancestral σ_down and adds σ_up of fresh noise.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from tqdm import tqdm

from ldm.models.diffusion.k_samplers.common import SamplerRun, StepCallback, k_sampler
from ldm.models.diffusion.k_samplers.noise import NO_NOISE, NoiseOptions, default_noise_sampler, get_ancestral_step

__all__ = ["StepSizeController", "sample_dpm_adaptive", "sample_dpm_fast"]

def _sigma(lam: torch.Tensor) -> torch.Tensor:
    return (-lam).exp()


def _lambda(sigma: torch.Tensor) -> torch.Tensor:
    return -sigma.log()


def _phi(h: torch.Tensor) -> torch.Tensor:
    return torch.expm1(h) / h - 1


class _NoisePredictor:
    """ε̂(z, λ) = (z − D(z, e^{−λ}))/e^{−λ}, counting the calls on a progress bar."""

    def __init__(self, run: SamplerRun, bar: tqdm) -> None:
        self.run, self.bar = run, bar

    def __call__(self, x: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
        sigma = _sigma(lam)
        denoised = self.run.denoise(x, sigma)
        self.bar.update()
        return (x - denoised) / sigma


class _SolverStep:
    """One step of eqs. (1)–(3) from (z, λ) to λ', each ε̂ stage evaluated at most once for all orders."""

    def __init__(self, predict: _NoisePredictor, x: torch.Tensor, lam: torch.Tensor, lam_next: torch.Tensor) -> None:
        self.predict, self.x, self.lam, self.lam_next = predict, x, lam, lam_next
        self.h = lam_next - lam
        self.eps0 = predict(x, lam)
        self.denoised = x - _sigma(lam) * self.eps0
        self._stage: dict[str, torch.Tensor] = {}

    def first_order(self, lam_to: torch.Tensor, span: torch.Tensor) -> torch.Tensor:
        """Eq. (1) from z to ``lam_to`` = λ + ``span``."""
        return self.x - _sigma(lam_to) * torch.expm1(span) * self.eps0

    def predictor_eps(self, r: float) -> torch.Tensor:
        """ε̂ at λ + r h of the first-order predictor (cached per r)."""
        key = f"first:{r}"
        if key not in self._stage:
            lam_r = self.lam + r * self.h
            self._stage[key] = self.predict(self.first_order(lam_r, r * self.h), lam_r)
        return self._stage[key]

    def order1(self) -> torch.Tensor:
        return self.first_order(self.lam_next, self.h)

    def order2(self, r1: float = 1 / 2) -> torch.Tensor:
        """Eq. (2)."""
        change = self.predictor_eps(r1) - self.eps0
        return self.order1() - _sigma(self.lam_next) / (2 * r1) * torch.expm1(self.h) * change

    def order3(self, r1: float = 1 / 3, r2: float = 2 / 3) -> torch.Tensor:
        """Eq. (3)."""
        lam_2 = self.lam + r2 * self.h
        if "third" not in self._stage:
            bend = _sigma(lam_2) * (r2 / r1) * _phi(r2 * self.h) * (self.predictor_eps(r1) - self.eps0)
            self._stage["third"] = self.predict(self.first_order(lam_2, r2 * self.h) - bend, lam_2)
        return self.order1() - _sigma(self.lam_next) / r2 * _phi(self.h) * (self._stage["third"] - self.eps0)

    def of_order(self, order: int) -> torch.Tensor:
        return {1: self.order1, 2: self.order2, 3: self.order3}[order]()


def _ancestral_target(
    lam: torch.Tensor, lam_next: torch.Tensor, lam_end: torch.Tensor, eta: float
) -> tuple[torch.Tensor, torch.Tensor | float]:
    """(λ of σ_down capped at ``lam_end``, σ_up) for a step σ → σ' with ancestral noise η (λ', 0 when η = 0).

    σ_up = min(σ', η √(σ'² (σ² − σ'²)/σ²)), σ_down = √(σ'² − σ_up²); σ_up is then recomputed from the capped
    target so that σ_down² + σ_up² = σ'² holds exactly.
    """
    if not eta:
        return lam_next, 0.0
    sigma_next = _sigma(lam_next)
    sigma_down, _ = get_ancestral_step(_sigma(lam), sigma_next, eta)
    target = torch.minimum(lam_end, _lambda(sigma_down))
    return target, (sigma_next**2 - _sigma(target) ** 2).sqrt()


def _check_range(sigma_min: float, sigma_max: float) -> None:
    if not 0 < sigma_min < sigma_max:
        raise ValueError(
            f"need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}; use the positive "
            "end points of the schedule (e.g. denoiser.sigma_min and denoiser.sigma_max)."
        )


def _report(
    callback: StepCallback | None, x: torch.Tensor, i: int, lam: torch.Tensor, denoised: torch.Tensor, **more: Any
) -> None:
    if callback is not None:
        sigma = _sigma(lam)
        callback(
            {"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma, "t": lam, "t_up": lam, "denoised": denoised, **more}
        )


def fast_orders(n: int) -> list[int]:
    """Orders of DPM-Solver-fast's intervals for n model calls: 3, ..., 3 then 2, 1 (3 | n) or n mod 3."""
    intervals = n // 3 + 1
    if n % 3 == 0:
        return [3] * (intervals - 2) + [2, 1]
    return [3] * (intervals - 1) + [n % 3]


@k_sampler("DPM fast")
def sample_dpm_fast(
    run: SamplerRun, x: torch.Tensor, sigma_min: float, sigma_max: float, n: int, noise: NoiseOptions = NO_NOISE
) -> torch.Tensor:
    """DPM-Solver-fast (Lu et al. 2022, §3.4): n model calls over :func:`fast_orders` intervals uniform in λ from
    σ_max to σ_min (no final denoising). ``x``: z at σ_max ``(B, ...)``. The noise sampler is called after every
    interval (its sample is multiplied by σ_up = 0 when η = 0)."""
    _check_range(sigma_min, sigma_max)
    noise_sampler = default_noise_sampler(x) if noise.noise_sampler is None else noise.noise_sampler
    lam_end = _lambda(torch.tensor(sigma_min))
    orders = fast_orders(n)
    grid = torch.linspace(float(_lambda(torch.tensor(sigma_max))), float(lam_end), len(orders) + 1, device=x.device)
    with tqdm(total=n, disable=run.disable) as bar:
        predict = _NoisePredictor(run, bar)
        for i, order in enumerate(orders):
            target, sigma_up = _ancestral_target(grid[i], grid[i + 1], lam_end, noise.eta)
            step = _SolverStep(predict, x, grid[i], target)
            _report(run.callback, x, i, grid[i], step.denoised)
            x = step.of_order(order)
            x = x + sigma_up * noise.s_noise * noise_sampler(_sigma(grid[i]), _sigma(grid[i + 1]))
    return x


class StepSizeController:
    """PID step-size control (Söderlind 2003) with the arctan limiter: after a step with scaled error e,
    h ← h · L(ε_n^{β_1} ε_{n−1}^{β_2} ε_{n−2}^{β_3}), ε = 1/(e + 10⁻⁸), L(f) = 1 + atan(f − 1), where
    β_1 = (k_P + k_I + k_D)/k, β_2 = −(k_P + 2 k_D)/k, β_3 = k_D/k for a method of order k; the step is
    accepted when L(...) ≥ ``accept_safety``, and only accepted steps enter the history."""

    def __init__(
        self,
        h: float,
        pcoeff: float,
        icoeff: float,
        dcoeff: float,
        order: float,
        accept_safety: float = 0.81,
        eps: float = 1e-8,
    ) -> None:
        self.h = h
        self.exponents = ((pcoeff + icoeff + dcoeff) / order, -(pcoeff + 2 * dcoeff) / order, dcoeff / order)
        self.accept_safety = accept_safety
        self.eps = eps
        self.history: list[float] = []  # inverse errors of the last accepted steps, newest first

    def propose_step(self, error: float | torch.Tensor) -> bool:
        """Scale :attr:`h` for the error of the step just tried; True when that step is accepted."""
        inverse = 1 / (float(error) + self.eps)
        earlier = self.history[:2] if self.history else [inverse, inverse]
        factor = math.prod(e**b for e, b in zip([inverse, *earlier], self.exponents))
        factor = 1 + math.atan(factor - 1)
        accepted = factor >= self.accept_safety
        if accepted:
            self.history = [inverse, *earlier][:2]
        elif not self.history:
            self.history = [inverse, inverse]
        self.h *= factor
        return accepted


@k_sampler("DPM adaptive")
def sample_dpm_adaptive(
    run: SamplerRun,
    x: torch.Tensor,
    sigma_min: float,
    sigma_max: float,
    order: int = 3,
    rtol: float = 0.05,
    atol: float = 0.0078,
    h_init: float = 0.05,
    pcoeff: float = 0.0,
    icoeff: float = 1.0,
    dcoeff: float = 0.0,
    accept_safety: float = 0.81,
    noise: NoiseOptions = NO_NOISE,
    return_info: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, dict[str, int]]:
    """DPM-Solver-12 / -23 (Lu et al. 2022, Algorithm 5): from σ_max to σ_min in λ, the order-(k−1) and order-k
    solutions z_lo, z_hi of each trial step (k = ``order``, sharing evaluations) give the scaled error
    ‖(z_lo − z_hi)/δ‖_RMS, δ = max(atol, rtol · max(|z_lo|, |z_lo of the last accepted step|)), which drives
    :class:`StepSizeController`. Returns z at σ_min, and ``{steps, nfe, n_accept, n_reject}`` with ``return_info``.
    """
    _check_range(sigma_min, sigma_max)
    if order not in (2, 3):
        raise ValueError(f"sample_dpm_adaptive supports order 2 or 3, got order={order}.")
    eta, noise_sampler = noise.eta, default_noise_sampler(x) if noise.noise_sampler is None else noise.noise_sampler
    lam, lam_end = _lambda(torch.tensor(sigma_max)), _lambda(torch.tensor(sigma_min))
    control = StepSizeController(abs(h_init), pcoeff, icoeff, dcoeff, 1.5 if eta else order, accept_safety)
    atol_t, rtol_t = torch.tensor(atol), torch.tensor(rtol)
    info = {"steps": 0, "nfe": 0, "n_accept": 0, "n_reject": 0}
    last_low = x
    with tqdm(disable=run.disable) as bar:
        predict = _NoisePredictor(run, bar)
        while lam < lam_end - 1e-5:
            lam_next = torch.minimum(lam_end, lam + control.h)
            target, sigma_up = _ancestral_target(lam, lam_next, lam_end, eta)
            step = _SolverStep(predict, x, lam, target)
            low, high = step.order1() if order == 2 else step.order2(1 / 3), step.of_order(order)
            scale = torch.maximum(atol_t, rtol_t * torch.maximum(low.abs(), last_low.abs()))
            error = torch.linalg.vector_norm((low - high) / scale) / math.sqrt(x.numel())
            if control.propose_step(error):
                last_low = low
                x = high + sigma_up * noise.s_noise * noise_sampler(_sigma(lam), _sigma(lam_next))
                lam = lam_next
                info["n_accept"] += 1
            else:
                info["n_reject"] += 1
            info["nfe"] += order
            info["steps"] += 1
            _report(run.callback, x, info["steps"] - 1, lam, step.denoised, error=error, h=control.h, **info)
    return (x, info) if return_info else x
