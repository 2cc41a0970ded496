"""The fixed-variance Gaussian diffusion schedule: every per-timestep constant ``DDPM`` keeps as a buffer.

All constants are computed in float64 from β_1..β_T and stored as float32 ``(T,)`` tensors, on the CPU
whatever the default device is (so that models built under ``torch.device("meta")`` still get real values).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ldm.modules.diffusionmodules.util import make_beta_schedule, make_ddim_timesteps
from ldm.util import SettingError

#: The buffers that are part of a checkpoint, in the order ``register_schedule`` registers them.
PERSISTENT_BUFFERS = (
    "betas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
)
#: Recomputed at construction and never saved (``persistent=False``).
NON_PERSISTENT_BUFFERS = ("lvlb_weights",)

PARAMETERIZATIONS = ("eps", "x0", "v")

#: The ᾱ that stands in for an exact ᾱ_T = 0 (a zero-terminal-SNR schedule) wherever a reciprocal or a logarithm of
#: ᾱ is taken: 2^-24, an SNR of 6e-8 (σ = √((1 − ᾱ)/ᾱ) ≈ 4096), the value diffusers' zero-SNR Euler scheduler uses.
TERMINAL_ALPHA_BAR = 2.0**-24


def _float32(array: np.ndarray | torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(np.asarray(array), dtype=torch.float32, device="cpu").clone()


def make_betas(
    given_betas: Sequence[float] | np.ndarray | None,
    beta_schedule: str,
    timesteps: int,
    linear_start: float,
    linear_end: float,
    cosine_s: float,
) -> np.ndarray:
    """β_1..β_T as float64: ``given_betas`` when set, else :func:`make_beta_schedule`."""
    if given_betas is not None:
        return np.asarray(given_betas, dtype=np.float64)
    with torch.device("cpu"):  # real values even while a model is built under torch.device("meta")
        return make_beta_schedule(
            beta_schedule, timesteps, linear_start=linear_start, linear_end=linear_end, cosine_s=cosine_s
        )


def rescale_zero_terminal_snr(betas: np.ndarray) -> np.ndarray:
    """β_1..β_T rescaled to zero terminal SNR (Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps
    are Flawed", Algorithm 1), float64 ``(T,)``.

    With s_t = √ᾱ_t of ``betas``: s'_t = (s_t − s_T) · s_1 / (s_1 − s_T), an affine map of √ᾱ that keeps s'_1 = s_1
    and sends s'_T to 0; then ᾱ'_t = s'_t², α'_t = ᾱ'_t / ᾱ'_{t−1} (α'_1 = ᾱ'_1) and β'_t = 1 − α'_t. So β'_1 = β_1,
    β'_T = 1 and every β' lies in (0, 1].
    """
    betas = np.asarray(betas, dtype=np.float64)
    if betas.ndim != 1 or betas.shape[0] < 2:
        raise SettingError(f"zero_terminal_snr needs a schedule of at least 2 steps, got betas of shape {betas.shape}.")
    root = np.sqrt(np.cumprod(1.0 - betas))
    first, last = root[0], root[-1]
    if not first > last:
        raise SettingError("zero_terminal_snr needs a schedule whose ᾱ decreases (β_t > 0); check given_betas.")
    rescaled = (root - last) * (first / (first - last))
    alphas_cumprod = rescaled**2
    alphas = np.append(alphas_cumprod[0], alphas_cumprod[1:] / alphas_cumprod[:-1])
    rescaled_betas = 1.0 - alphas
    rescaled_betas[-1] = 1.0  # exactly: ᾱ'_T = 0
    return rescaled_betas


def nonzero_alphas_cumprod(alphas_cumprod: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """``alphas_cumprod`` with exact zeros (the last step of a zero-terminal-SNR schedule) replaced by
    min(:data:`TERMINAL_ALPHA_BAR`, half the smallest positive ᾱ), so that 1/ᾱ and log ᾱ stay finite and ᾱ stays
    decreasing. Schedules without a zero come back unchanged (numpy or torch, as given)."""
    positive = alphas_cumprod[alphas_cumprod > 0]
    if positive.shape[0] == alphas_cumprod.shape[0]:
        return alphas_cumprod
    stand_in = min(TERMINAL_ALPHA_BAR, float(positive.min()) / 2) if positive.shape[0] else TERMINAL_ALPHA_BAR
    if isinstance(alphas_cumprod, torch.Tensor):
        return torch.where(alphas_cumprod > 0, alphas_cumprod, torch.full_like(alphas_cumprod, stand_in))
    return np.where(alphas_cumprod > 0, alphas_cumprod, stand_in)


def schedule_buffers(betas: np.ndarray, v_posterior: float, parameterization: str) -> dict[str, torch.Tensor]:
    """Every schedule constant for β = ``betas`` (float64 ``(T,)``), as float32 ``(T,)`` tensors.

    With α_t = 1 − β_t and ᾱ_t = ∏_{s≤t} α_s:

    - forward process q(x_t | x_0) = N(√ᾱ_t x_0, (1 − ᾱ_t) I), and x_0 = √(1/ᾱ_t) x_t − √(1/ᾱ_t − 1) ε;
    - posterior q(x_{t−1} | x_t, x_0) = N(c1_t x_0 + c2_t x_t, β̃_t I) with
      c1_t = β_t √ᾱ_{t−1} / (1 − ᾱ_t), c2_t = (1 − ᾱ_{t−1}) √α_t / (1 − ᾱ_t),
      β̃_t = (1 − v) β_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t) + v β_t (``v = v_posterior``), its log clipped at 1e-20;
    - ``lvlb_weights`` turn the simple loss into the VLB term: β_t² / (2 β̃_t α_t (1 − ᾱ_t)) for ε-prediction,
      ½ √ᾱ_t / (2 − ᾱ_t) for x0-prediction, 1 for v-prediction; entry 0 is copied from entry 1.

    A zero-terminal-SNR schedule (β_T = 1, so ᾱ_T = 0; :func:`rescale_zero_terminal_snr`) keeps ᾱ_T = 0 in every
    buffer of the forward process and the posterior (x_T is pure noise); only the reciprocals
    ``sqrt_recip_alphas_cumprod`` / ``sqrt_recipm1_alphas_cumprod`` read ᾱ_T as :func:`nonzero_alphas_cumprod`'s
    stand-in, so no buffer holds inf or NaN. ε-prediction is undefined there (x̂_0 = (x_T − ε̂)/0): it raises
    :class:`~ldm.util.SettingError`.
    """
    if parameterization not in PARAMETERIZATIONS:
        raise ValueError(f"parameterization {parameterization!r} is not supported; use one of {PARAMETERIZATIONS}.")
    betas = np.asarray(betas, dtype=np.float64)
    alphas = 1.0 - betas
    alphas_cumprod = np.cumprod(alphas, axis=0)
    if alphas_cumprod[-1] <= 0.0 and parameterization == "eps":
        raise SettingError(
            "the schedule ends at zero SNR (ᾱ_T = 0: model.params.zero_terminal_snr, or a last given_betas of 1), "
            "where an ε-prediction determines no x̂_0; set model.params.parameterization: v (or x0)."
        )
    safe_alphas_cumprod = nonzero_alphas_cumprod(alphas_cumprod)
    alphas_cumprod_prev = np.append(1.0, alphas_cumprod[:-1])
    posterior_variance = (1 - v_posterior) * betas * (1.0 - alphas_cumprod_prev) / (
        1.0 - alphas_cumprod
    ) + v_posterior * betas
    buffers = {
        "betas": _float32(betas),
        "alphas_cumprod": _float32(alphas_cumprod),
        "alphas_cumprod_prev": _float32(alphas_cumprod_prev),
        "sqrt_alphas_cumprod": _float32(np.sqrt(alphas_cumprod)),
        "sqrt_one_minus_alphas_cumprod": _float32(np.sqrt(1.0 - alphas_cumprod)),
        "log_one_minus_alphas_cumprod": _float32(np.log(1.0 - alphas_cumprod)),
        "sqrt_recip_alphas_cumprod": _float32(np.sqrt(1.0 / safe_alphas_cumprod)),
        "sqrt_recipm1_alphas_cumprod": _float32(np.sqrt(1.0 / safe_alphas_cumprod - 1)),
        "posterior_variance": _float32(posterior_variance),
        "posterior_log_variance_clipped": _float32(np.log(np.maximum(posterior_variance, 1e-20))),
        "posterior_mean_coef1": _float32(betas * np.sqrt(alphas_cumprod_prev) / (1.0 - alphas_cumprod)),
        "posterior_mean_coef2": _float32((1.0 - alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - alphas_cumprod)),
    }
    # The VLB weights come from the float32 buffers, computed in float32.
    if parameterization == "v":
        lvlb_weights = torch.ones_like(buffers["betas"])
    elif parameterization == "eps":
        lvlb_weights = buffers["betas"] ** 2 / (
            2 * buffers["posterior_variance"] * _float32(alphas) * (1 - buffers["alphas_cumprod"])
        )
    else:
        alphas_cumprod32 = buffers["alphas_cumprod"]
        # numpy's float32 square root is the correctly rounded one.
        lvlb_weights = 0.5 * torch.from_numpy(np.sqrt(alphas_cumprod32.numpy())) / (2.0 - alphas_cumprod32)
    lvlb_weights[0] = lvlb_weights[1]
    if torch.isnan(lvlb_weights).all():
        raise ValueError("the beta schedule gives NaN VLB weights everywhere; check given_betas / linear_start.")
    buffers["lvlb_weights"] = lvlb_weights
    return buffers


def cond_schedule_ids(num_timesteps: int, num_timesteps_cond: int) -> torch.Tensor:
    """Timestep at which the conditioning is noised for each diffusion step, ``(T,)`` int64.

    The first ``num_timesteps_cond`` entries spread evenly over [0, T − 1]; the rest are T − 1.
    """
    cond_ids = torch.full((num_timesteps,), num_timesteps - 1, dtype=torch.long, device="cpu")
    cond_ids[:num_timesteps_cond] = torch.round(
        torch.linspace(0, num_timesteps - 1, num_timesteps_cond, device="cpu")
    ).long()
    return cond_ids


#: The DDIM-family sub-schedules: the original two (``make_ddim_timesteps``) and ``trailing``.
TIMESTEP_SPACINGS = ("uniform", "quad", "trailing")


def trailing_timesteps(num_steps: int, num_timesteps: int) -> np.ndarray:
    """The "trailing" sub-schedule of S = ``num_steps`` of T = ``num_timesteps`` steps, int64 ascending ``(S,)``:
    t_k = round(T − k·T/S) − 1 for k = 0..S−1 (Lin et al. 2024, §3.3; numpy rounding, halves to even).

    The first sampling step is t = T − 1, the last noise level a zero-terminal-SNR model was trained on; for
    T = 1000, S = 10 these are [99, 199, ..., 999].
    """
    if not 1 <= num_steps <= num_timesteps:
        raise ValueError(f"ddim_num_steps={num_steps} is out of range; use 1 <= S <= {num_timesteps} (the model's "
                         "num_timesteps).")
    descending = np.round(num_timesteps - np.arange(num_steps) * (num_timesteps / num_steps)).astype(np.int64) - 1
    return descending[::-1].copy()


def sampler_timesteps(spacing: str, num_steps: int, num_timesteps: int, verbose: bool = True) -> np.ndarray:
    """The DDPM timesteps (int64, ascending) a DDIM-family sampler visits in ``num_steps`` steps: ``uniform`` /
    ``quad`` as the original (``make_ddim_timesteps``: ``[1, 1 + T/S, ...]``), or :func:`trailing_timesteps`."""
    if spacing == "trailing":
        return trailing_timesteps(num_steps, num_timesteps)
    if spacing not in TIMESTEP_SPACINGS:
        raise ValueError(f"timestep spacing {spacing!r} is unknown; use one of {', '.join(TIMESTEP_SPACINGS)}.")
    return make_ddim_timesteps(spacing, num_steps, num_timesteps, verbose=verbose)


def ddim_sigma(alpha_bar: torch.Tensor, alpha_bar_prev: torch.Tensor, eta: float) -> torch.Tensor:
    """σ = η √((1 − ᾱ_prev)/(1 − ᾱ) · (1 − ᾱ/ᾱ_prev)) (DDIM, Song et al. 2021, eq. 16), elementwise."""
    return eta * torch.sqrt((1 - alpha_bar_prev) / (1 - alpha_bar) * (1 - alpha_bar / alpha_bar_prev))


def interpolate(x: torch.Tensor, xp: torch.Tensor, fp: torch.Tensor) -> torch.Tensor:
    """The piecewise-linear function through (``xp``, ``fp``) at ``x``, constant beyond the ends (like ``np.interp``).

    ``xp`` ``(N,)`` is ascending; ``x`` has any shape; the result has ``x``'s shape and ``fp``'s dtype.
    """
    x = x.to(fp.dtype)
    right = torch.searchsorted(xp, x.clamp(xp[0], xp[-1]), right=True).clamp(1, len(xp) - 1)
    x_lo, x_hi, f_lo, f_hi = xp[right - 1], xp[right], fp[right - 1], fp[right]
    weight = ((x - x_lo) / (x_hi - x_lo)).clamp(0.0, 1.0)
    return f_lo + weight * (f_hi - f_lo)


def loglinear_timestep(sigma: torch.Tensor, log_grid: torch.Tensor, quantize: bool = False) -> torch.Tensor:
    """Model time t of noise level σ on a grid with log σ linear in t between the integer steps.

    ``log_grid`` ``(N,)`` is log σ_0 < ... < log σ_{N−1}; ``sigma`` has any shape. Returns t of ``sigma``'s shape:
    t = (1 − w) n + w (n + 1), w = (log σ_n − log σ)/(log σ_n − log σ_{n+1}) ∈ [0, 1] on [σ_n, σ_{n+1}] (so t is
    clamped to [0, N − 1]; float, in ``log_grid``'s dtype); with ``quantize`` the n minimising |log σ − log σ_n|
    (int64).
    """
    log_sigma = sigma.to(log_grid.dtype).log()
    lower = (torch.searchsorted(log_grid, log_sigma.contiguous(), right=True) - 1).clamp(0, len(log_grid) - 2)
    below, above = log_grid[lower], log_grid[lower + 1]
    if quantize:
        return lower + ((above - log_sigma).abs() < (log_sigma - below).abs()).long()
    weight = ((below - log_sigma) / (below - above)).clamp(0, 1)
    return (1 - weight) * lower + weight * (lower + 1)


def loglinear_noise_level(t: torch.Tensor, log_grid: torch.Tensor) -> torch.Tensor:
    """σ at model time t (any shape, fractional allowed, clamped to [0, N − 1]):
    log σ = (1 − w) log σ_⌊t⌋ + w log σ_⌈t⌉ with w = t − ⌊t⌋."""
    t = t.to(log_grid.dtype).clamp(0, len(log_grid) - 1)
    floor = t.floor()
    weight = t - floor
    return ((1 - weight) * log_grid[floor.long()] + weight * log_grid[t.ceil().long()]).exp()


class DiscreteSchedule:
    """A model's discrete variance-preserving schedule ᾱ_0..ᾱ_{N−1}, read at any model time τ ∈ [0, N − 1].

    With x_τ = α_τ x_0 + σ_τ ε:

    (1) α_τ = √ᾱ_τ,  σ_τ = √(1 − ᾱ_τ);
    (2) λ_τ = log α_τ − log σ_τ (half the log signal-to-noise ratio);
    (3) s_τ = σ_τ / α_τ = √((1 − ᾱ_τ)/ᾱ_τ) = e^{−λ_τ}, the noise level of x_τ / α_τ = x_0 + s_τ ε.

    Between integer τ, log ᾱ is linear in τ (the discrete-time convention of DPM-Solver, Lu et al. 2022).
    Continuous quantities are float64 tensors on the CPU; :meth:`sampler_tables` are the float32 per-step
    tables the DDIM-family samplers store.
    """

    def __init__(self, alphas_cumprod: torch.Tensor) -> None:
        # A zero-terminal-SNR ᾱ_T = 0 is read as a tiny positive ᾱ (every table here takes 1/ᾱ or log ᾱ).
        self.alphas_cumprod32 = nonzero_alphas_cumprod(alphas_cumprod.detach().to("cpu", torch.float32).clone())
        self.alphas_cumprod = self.alphas_cumprod32.double()
        self.num_timesteps = int(self.alphas_cumprod.shape[0])
        self.timesteps = torch.arange(self.num_timesteps, dtype=torch.float64)
        self._log_alpha = 0.5 * self.alphas_cumprod.log()

    @classmethod
    def from_model(cls, model: object) -> DiscreteSchedule:
        """The schedule of a model's ``alphas_cumprod`` buffer, checked against its ``num_timesteps``."""
        alphas_cumprod = model.alphas_cumprod  # type: ignore[attr-defined]
        expected = getattr(model, "num_timesteps", alphas_cumprod.shape[0])
        if alphas_cumprod.shape[0] != expected:
            raise ValueError(
                f"model.alphas_cumprod has {alphas_cumprod.shape[0]} entries but model.num_timesteps is {expected}; "
                "the schedule must define ᾱ for every timestep."
            )
        return cls(alphas_cumprod)

    # -- float32 tables at the integer steps --------------------------------------------------------------

    def sampler_tables(self) -> dict[str, torch.Tensor]:
        """ᾱ_n and its square-root/log forms at n = 0..N−1, float32 ``(N,)``, computed in float32 from ᾱ_n."""
        ac = self.alphas_cumprod32
        return {
            "alphas_cumprod": ac.clone(),
            "sqrt_alphas_cumprod": ac.sqrt(),
            "sqrt_one_minus_alphas_cumprod": (1.0 - ac).sqrt(),
            "log_one_minus_alphas_cumprod": (1.0 - ac).log(),
            "sqrt_recip_alphas_cumprod": (1.0 / ac).sqrt(),
            "sqrt_recipm1_alphas_cumprod": (1.0 / ac - 1).sqrt(),
        }

    # -- continuous quantities at model time τ ---------------------------------------------------------------

    def log_alpha(self, tau: torch.Tensor | float) -> torch.Tensor:
        """log α_τ = ½ log ᾱ_τ, linear in τ between the integer steps."""
        return interpolate(torch.as_tensor(tau, dtype=torch.float64), self.timesteps, self._log_alpha)

    def alpha(self, tau: torch.Tensor | float) -> torch.Tensor:
        """Eq. (1): α_τ."""
        return self.log_alpha(tau).exp()

    def sigma(self, tau: torch.Tensor | float) -> torch.Tensor:
        """Eq. (1): σ_τ = √(1 − α_τ²)."""
        return torch.sqrt(-torch.expm1(2.0 * self.log_alpha(tau)))

    def lambda_(self, tau: torch.Tensor | float) -> torch.Tensor:
        """Eq. (2): λ_τ."""
        log_alpha = self.log_alpha(tau)
        return log_alpha - 0.5 * torch.log(-torch.expm1(2.0 * log_alpha))

    def noise_level(self, tau: torch.Tensor | float) -> torch.Tensor:
        """Eq. (3): s_τ = e^{−λ_τ}."""
        return torch.exp(-self.lambda_(tau))

    def timestep_from_lambda(self, lambda_: torch.Tensor | float) -> torch.Tensor:
        """τ with λ_τ = ``lambda_``: log α = −½ log(1 + e^{−2λ}), then τ by the inverse of the linear map."""
        lambda_ = torch.as_tensor(lambda_, dtype=torch.float64)
        log_alpha = -0.5 * torch.logaddexp(torch.zeros_like(lambda_), -2.0 * lambda_)
        return interpolate(log_alpha, self._log_alpha.flip(0), self.timesteps.flip(0))

    def timestep_from_noise_level(self, noise_level: torch.Tensor | float) -> torch.Tensor:
        """τ with s_τ = ``noise_level`` (eq. 3 inverted)."""
        return self.timestep_from_lambda(-torch.as_tensor(noise_level, dtype=torch.float64).log())

    # -- the noise-level grid of the variance-exploding view (k-diffusion's discrete convention) -------------

    @property
    def noise_level_grid(self) -> torch.Tensor:
        """Eq. (3) at the integer steps in float32: σ_n = √((1 − ᾱ_n)/ᾱ_n), ascending ``(N,)``."""
        ac = self.alphas_cumprod32
        return ((1 - ac) / ac).sqrt()

    @property
    def log_noise_level_grid(self) -> torch.Tensor:
        """log σ_n of :attr:`noise_level_grid`, float32 ``(N,)``."""
        return self.noise_level_grid.log()

    def grid_timestep(self, noise_level: torch.Tensor, quantize: bool = False) -> torch.Tensor:
        """Model time of a noise level with log σ linear between grid points (:func:`loglinear_timestep`).

        Unlike :meth:`timestep_from_noise_level` (log ᾱ linear, float64) this is k-diffusion's ``sigma_to_t``.
        """
        return loglinear_timestep(noise_level, self.log_noise_level_grid, quantize)

    def grid_noise_level(self, tau: torch.Tensor) -> torch.Tensor:
        """σ at model time τ with log σ linear between grid points (:func:`loglinear_noise_level`), float32."""
        return loglinear_noise_level(tau, self.log_noise_level_grid)
