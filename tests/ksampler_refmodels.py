"""The weight-free test denoisers of ``tests/refdata/ksamplers`` rebuilt from their formulas, and case helpers.

Everything here follows ``tests/refdata/ksamplers/README.md``: the CompVis linear schedule, the per-element
three-component Gaussian-mixture data whose exact posterior gives ε̂ (``gmm-eps``), v̂ (``gmm-v``) or x̂_0
(``gmm-x0``, not in the reference file: the same data seen by an x0-model), the small convolutional perturbation
of it (``conv-eps``), AUTOMATIC1111's classifier-free-guidance wrapper :class:`CFG`, and the comparison rule
max|err| ≤ max(2e-4 · max|ref|, 3 · fp64 spread) (:func:`assert_matches_case`).

The case helpers (:func:`case_model`, :class:`ReplayNoise`, :func:`replayed_randn_like`) put a stored case's
recipe together: the wrapped denoiser, its ``extra_args``, and the recorded noise.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ldm.modules.diffusionmodules.util import timestep_embedding

REFDATA = Path(__file__).parent / "refdata" / "ksamplers" / "ksamplers.pt"
MODEL_NAMES = ("gmm-eps", "gmm-v", "gmm-x0", "conv-eps")
#: What each test model's ``apply_model`` returns.
PARAMETERIZATION = {"gmm-eps": "eps", "gmm-v": "v", "gmm-x0": "x0", "conv-eps": "eps"}
REL_TOL = 2e-4


@functools.lru_cache(maxsize=1)
def load_refdata() -> dict[str, Any]:
    """The reference file (groups ``common``, ``schedules``, ``wrapper``, ``cases``); cached: do not mutate."""
    return torch.load(REFDATA, weights_only=True)


def cases_of(sampler: str) -> dict[str, dict[str, Any]]:
    """Every stored case whose recipe names ``sampler`` (``"sample_euler"``, ...), by case name."""
    return {name: case for name, case in load_refdata()["cases"].items() if case.get("sampler") == sampler}


# --------------------------------------------------------------------------------------------------------
# The test models
# --------------------------------------------------------------------------------------------------------


class RefModel(torch.nn.Module):
    """A CompVis-like model (``alphas_cumprod``, ``betas``, ``apply_model``) with an exact, formula-defined output.

    ``apply_model(x, t, cond=None)``: x_t ``(B, 4, 8, 8)``, t ``(B,)`` or a scalar (integer or fractional model
    time), cond ``(B, 4)`` the per-channel shift of the data means (zeros when None). Computed in float64 and
    returned in ``x.dtype``.
    """

    def __init__(self, name: str) -> None:
        super().__init__()
        if name not in MODEL_NAMES:
            raise ValueError(f"unknown test model {name!r}; use one of {MODEL_NAMES}.")
        common = load_refdata()["common"]
        self.name = name
        self.parameterization = PARAMETERIZATION[name]
        acp = common["alphas_cumprod"].clone()
        self.register_buffer("alphas_cumprod", acp)
        self.register_buffer("alphas_cumprod_prev", torch.cat([acp.new_ones(1), acp[:-1]]))
        self.register_buffer("betas", common["betas"].clone())
        self.num_timesteps = int(acp.shape[0])
        gmm = common["gmm"]
        self.mu, self.sd, self.wt = (torch.tensor(gmm[key], dtype=torch.float64) for key in ("MU", "SD", "WT"))
        self.conv = {k: v.double() for k, v in common["conv_weights"].items()} if name == "conv-eps" else None

    @property
    def device(self) -> torch.device:
        return self.alphas_cumprod.device

    def vp_coefficients(self, t: torch.Tensor, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(a, b) = (1/√(1+σ²), σ/√(1+σ²)) at model time t, log σ linear between grid points; ``(batch,)`` each."""
        log_sigmas = (((1 - self.alphas_cumprod.double()) / self.alphas_cumprod.double()).sqrt()).log().cpu()
        t = torch.as_tensor(t).double().cpu().clamp(0, self.num_timesteps - 1).expand(batch)
        lo, hi = t.floor().long(), t.ceil().long()
        frac = t - lo
        sigma = ((1 - frac) * log_sigmas[lo] + frac * log_sigmas[hi]).exp()
        a = 1 / (1 + sigma**2).sqrt()
        return a, sigma * a

    def data_means(self, shift: torch.Tensor) -> torch.Tensor:
        """m_k = MU[c][k] + 0.25 cos(0.7h + 1.3w + 2.1c) + shift[n, c], ``(B, 4, 8, 8, 3)``."""
        c, h, w = torch.meshgrid(*(torch.arange(n, dtype=torch.float64) for n in (4, 8, 8)), indexing="ij")
        wiggle = 0.25 * torch.cos(0.7 * h + 1.3 * w + 2.1 * c)
        return self.mu[None, :, None, None, :] + (wiggle[None] + shift[:, :, None, None])[..., None]

    def posterior_mean(self, x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        """E[x_0 | x_t = x] for the mixture, float64 ``(B, 4, 8, 8)``; a, b ``(B,)``."""
        a, b = a[:, None, None, None, None], b[:, None, None, None, None]
        x = x[..., None]
        means = self.data_means(shift)
        var_data = self.sd[None, :, None, None, :] ** 2
        var = a**2 * var_data + b**2
        logits = self.wt.log()[None, :, None, None, :] - (x - a * means) ** 2 / (2 * var) - var.log() / 2
        weights = logits.softmax(dim=-1)
        return (weights * (means + a * var_data / var * (x - a * means))).sum(dim=-1)

    def conv_term(self, x: torch.Tensor, t: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        """0.2 tanh(conv2(silu(conv1(x) + W_t e(t) + b_t + W_c cond + b_c))), float64 ``(B, 4, 8, 8)``."""
        p = self.conv
        t = torch.as_tensor(t).float().cpu().expand(x.shape[0])
        emb = timestep_embedding(t, 8).double()
        bias = F.linear(emb, p["temb.weight"], p["temb.bias"]) + F.linear(shift, p["cemb.weight"], p["cemb.bias"])
        hidden = F.silu(F.conv2d(x, p["conv1.weight"], p["conv1.bias"], padding=1) + bias[:, :, None, None])
        return 0.2 * torch.tanh(F.conv2d(hidden, p["conv2.weight"], p["conv2.bias"], padding=1))

    def apply_model(self, x: torch.Tensor, t: torch.Tensor | float, cond: torch.Tensor | None = None) -> torch.Tensor:
        batch = x.shape[0]
        x64 = x.detach().double().cpu()
        shift = torch.zeros(batch, 4, dtype=torch.float64) if cond is None else cond.detach().double().cpu()
        a, b = self.vp_coefficients(t, batch)
        x0 = self.posterior_mean(x64, a, b, shift)
        a4, b4 = a[:, None, None, None], b[:, None, None, None]
        eps = (x64 - a4 * x0) / b4
        if self.conv is not None:
            eps = eps + self.conv_term(x64, t, shift)
        out = {"eps": eps, "x0": x0, "v": a4 * eps - b4 * x0}[self.parameterization]
        return out.to(device=x.device, dtype=x.dtype)


def make_model(name: str) -> RefModel:
    """The test model ``name`` (one of :data:`MODEL_NAMES`)."""
    return RefModel(name)


class CFG(torch.nn.Module):
    """AUTOMATIC1111's CFGDenoiser: D = D_u + s (D_c − D_u) on the denoised output, one doubled batch [cond; uncond]."""

    def __init__(self, denoiser: torch.nn.Module) -> None:
        super().__init__()
        self.inner_model = denoiser

    def forward(
        self, x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor, cond_scale: float
    ) -> torch.Tensor:
        both = self.inner_model(torch.cat([x, x]), torch.cat([sigma, sigma]), cond=torch.cat([cond, uncond]))
        d_cond, d_uncond = both.chunk(2)
        return d_uncond + (d_cond - d_uncond) * cond_scale


# --------------------------------------------------------------------------------------------------------
# Comparison
# --------------------------------------------------------------------------------------------------------


def case_tolerance(ref: torch.Tensor, fp64_spread: float) -> float:
    """max(2e-4 · max|ref|, 3 · the float32-vs-float64 spread of the reference)."""
    return max(REL_TOL * ref.abs().max().item(), 3 * float(fp64_spread))


def assert_matches_case(out: torch.Tensor, ref: torch.Tensor, fp64_spread: float, what: str = "out") -> float:
    """Assert max|out − ref| within :func:`case_tolerance`; returns the error."""
    assert out.shape == ref.shape, f"{what}: shape {tuple(out.shape)} != reference {tuple(ref.shape)}"
    err = (out.detach().double().cpu() - ref.double()).abs().max().item()
    tol = case_tolerance(ref, fp64_spread)
    assert err <= tol, f"{what}: max|err| {err:.3g} > tolerance {tol:.3g}"
    return err


def assert_sigmas_match(got: list[float] | torch.Tensor, ref: torch.Tensor, what: str, rtol: float = 1e-5) -> None:
    """The noise levels of model calls / callbacks agree in number and to ``rtol``."""
    got = torch.as_tensor(got, dtype=torch.float64)
    assert got.shape == ref.shape, f"{what}: {got.shape[0]} values, reference has {ref.shape[0]}"
    torch.testing.assert_close(got, ref.double(), rtol=rtol, atol=1e-7, msg=lambda m: f"{what}: {m}")


# --------------------------------------------------------------------------------------------------------
# Putting a case's recipe together
# --------------------------------------------------------------------------------------------------------


class SigmaRecorder(torch.nn.Module):
    """A denoiser that records the σ of batch element 0 at every call (``sigmas``), then passes the call on."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.inner_model = model
        self.sigmas: list[float] = []

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        self.sigmas.append(float(sigma.reshape(-1)[0]))
        return self.inner_model(x, sigma, **kwargs)


def case_wrapper(case: dict[str, Any]) -> torch.nn.Module:
    """The project's CompVisDenoiser / CompVisVDenoiser of the case's test model (``quantize`` as recorded)."""
    from ldm.models.diffusion.k_samplers.denoisers import CompVisDenoiser, CompVisVDenoiser

    kind = CompVisVDenoiser if case["denoiser"] == "gmm-v" else CompVisDenoiser
    return kind(make_model(case["denoiser"]), quantize=bool(case.get("quantize", False)))


def case_model(case: dict[str, Any]) -> tuple[SigmaRecorder, dict[str, Any]]:
    """``(model, extra_args)`` for a case: the wrapper, under :class:`CFG` when the case has ``cfg``, recorded."""
    common = load_refdata()["common"]
    model: torch.nn.Module = case_wrapper(case)
    extra_args: dict[str, Any] = {"cond": common["cond"]}
    if "cfg" in case:
        model = CFG(model)
        extra_args = {"cond": common["cond"], "uncond": common["uncond"], "cond_scale": float(case["cfg"])}
    return SigmaRecorder(model), extra_args


def case_sigmas(case: dict[str, Any]) -> torch.Tensor:
    """The case's stored noise-level schedule (``schedules[case["schedule"]]``)."""
    return load_refdata()["schedules"][case["schedule"]]


class ReplayNoise:
    """A ``noise_sampler(sigma, sigma_next)`` that hands out stored tensors in order and records each call."""

    def __init__(self, tensors: torch.Tensor) -> None:
        self.tensors = tensors
        self.calls: list[tuple[float, float]] = []

    def __call__(self, sigma: torch.Tensor | float, sigma_next: torch.Tensor | float) -> torch.Tensor:
        if len(self.calls) >= len(self.tensors):
            raise AssertionError(f"noise sampler called more than the {len(self.tensors)} recorded times")
        self.calls.append((float(sigma), float(sigma_next)))
        return self.tensors[len(self.calls) - 1].clone()


@contextlib.contextmanager
def replayed_randn_like(tensors: torch.Tensor) -> Iterator[list[int]]:
    """Within the block ``torch.randn_like`` returns ``tensors[0], tensors[1], ...``; yields a one-item call count."""
    count = [0]
    original = torch.randn_like

    def replay(like: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if count[0] >= len(tensors):
            raise AssertionError(f"torch.randn_like called more than the {len(tensors)} recorded times")
        count[0] += 1
        return tensors[count[0] - 1].to(like.device, like.dtype).clone()

    torch.randn_like = replay
    try:
        yield count
    finally:
        torch.randn_like = original


def callback_recorder() -> tuple[list[dict[str, Any]], Any]:
    """``(records, callback)``: the callback appends a copy of each step record's σ̂ and x̂_0."""
    records: list[dict[str, Any]] = []

    def callback(info: dict[str, Any]) -> None:
        records.append({"sigma_hat": float(info["sigma_hat"]), "denoised": info["denoised"].detach().clone()})

    return records, callback
