"""What every sampler needs from a model: the guided model call and its conversion to (x̂_0, ε̂).

A sampler sees a model through :class:`DiffusionModel` and asks one question of it, :func:`denoise`:

(1) o = o_u + w (o_c − o_u) with o_c = f(x_t, t, c), o_u = f(x_t, t, c_u), one call on the doubled batch
    (classifier-free guidance, Ho & Salimans 2022, applied to the raw output f of any parameterization);
(2) (x̂_0, ε̂) = :func:`~ldm.models.diffusion.prediction.split_prediction` (o), the only conversion.

Guidance on the raw output equals guidance on ε̂ at fixed t for eps, x0 and v models alike, because (2) is affine
in o with coefficients that depend on t only. :func:`checked_keywords` makes ``sample`` reject misspelt keywords.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import logging
from collections.abc import Callable, Iterable
from typing import Any, Protocol, TypeVar

import torch
from tqdm import tqdm

from ldm.models.diffusion.prediction import Prediction, split_prediction
from ldm.util import SettingError

logger = logging.getLogger(__name__)

#: A conditioning as the model takes it: a tensor, a list of tensors, or a dict of those (``c_crossattn``, ...).
Conditioning = Any
#: A per-sample coefficient broadcastable to x_t: a ``(B, 1, ..., 1)`` tensor or a Python float.
Coefficient = torch.Tensor | float

F = TypeVar("F", bound=Callable[..., Any])


class DiffusionModel(Protocol):
    """The model interface of the samplers (``LatentDiffusion``, ``DDPM`` and the test fakes provide it).

    ``parameterization`` is optional (``"eps"`` when absent); ``first_stage_model.quantize`` is used by
    ``quantize_x0`` and ``q_sample(x0, t)`` by masked sampling only.
    """

    num_timesteps: int
    betas: torch.Tensor
    alphas_cumprod: torch.Tensor
    alphas_cumprod_prev: torch.Tensor

    def apply_model(self, x: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor: ...


# --------------------------------------------------------------------------------------------------------
# Keyword checking
# --------------------------------------------------------------------------------------------------------


def unexpected_keyword_error(where: str, name: str, valid: Iterable[str]) -> TypeError:
    """The ``TypeError`` for keyword ``name`` passed to ``where``, suggesting the closest of ``valid``."""
    guesses = difflib.get_close_matches(name, list(valid), n=1)
    hint = f"; did you mean {guesses[0]!r}?" if guesses else ""
    return TypeError(f"{where}() got an unexpected keyword argument {name!r}{hint}")


def declared_keywords(fn: Callable[..., Any]) -> list[str]:
    """The parameters of ``fn`` that may be passed by keyword, in order."""
    return [
        name
        for name, p in inspect.signature(fn).parameters.items()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    ]


def _reject_unknown(where: str, kwargs: dict[str, Any], accepted: list[str]) -> None:
    for name in kwargs:
        if name not in accepted:
            raise unexpected_keyword_error(where, name, accepted)


def checked_keywords(method: F) -> F:
    """Decorate a method so that a keyword it does not declare raises :func:`unexpected_keyword_error`.

    The message names the class of the instance (``DDIMSampler.sample()``), not the class defining the method.
    """
    accepted = declared_keywords(method)[1:]  # drop self

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        _reject_unknown(f"{type(self).__name__}.{method.__name__}", kwargs, accepted)
        return method(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


def checked_function_keywords(function: F) -> F:
    """:func:`checked_keywords` for a plain function (``sample_euler(..., s_nosie=1)`` names ``s_noise``)."""
    accepted = declared_keywords(function)

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _reject_unknown(function.__name__, kwargs, accepted)
        return function(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------------------
# Conditioning and the guided model call
# --------------------------------------------------------------------------------------------------------


def concat_conditionings(uc: Conditioning, c: Conditioning) -> Conditioning:
    """``[uc, c]`` stacked along the batch: tensors are concatenated, lists element-wise, dicts per key."""
    if isinstance(c, dict):
        if not isinstance(uc, dict) or set(uc) != set(c):
            raise TypeError(
                "unconditional_conditioning must be a dict with the same keys as the conditioning "
                f"({sorted(c)}), got {sorted(uc) if isinstance(uc, dict) else type(uc).__name__}."
            )
        return {key: concat_conditionings(uc[key], c[key]) for key in c}
    if isinstance(c, (list, tuple)):
        if not isinstance(uc, (list, tuple)) or len(uc) != len(c):
            raise TypeError(
                f"unconditional_conditioning must be a list of {len(c)} tensors like the conditioning, got "
                f"{type(uc).__name__}."
            )
        return [concat_conditionings(u, v) for u, v in zip(uc, c)]
    return torch.cat([uc, c])


def guided_model_output(
    model: DiffusionModel,
    x: torch.Tensor,
    t: torch.Tensor,
    cond: Conditioning,
    unconditional_conditioning: Conditioning = None,
    unconditional_guidance_scale: float = 1.0,
    guidance_rescale: float = 0.0,
) -> torch.Tensor:
    """Eq. (1): the raw output ``(B, ...)`` at x_t ``(B, ...)``, t ``(B,)``, guided when there is a c_u and w ≠ 1.

    Without ``unconditional_conditioning`` or with w = 1 the model runs once on ``(x, t, cond)``; otherwise once
    on the batch ``[x, x]`` with conditioning ``[c_u, c]`` (see :func:`concat_conditionings`). A
    ``guidance_rescale`` φ > 0 then applies :func:`rescale_guidance`.
    """
    if unconditional_conditioning is None or unconditional_guidance_scale == 1.0:
        return model.apply_model(x, t, cond)
    cond_in = concat_conditionings(unconditional_conditioning, cond)
    out_u, out_c = model.apply_model(torch.cat([x, x]), torch.cat([t, t]), cond_in).chunk(2)
    guided = out_u + unconditional_guidance_scale * (out_c - out_u)
    return rescale_guidance(guided, out_c, guidance_rescale) if guidance_rescale else guided


def rescale_guidance(guided: torch.Tensor, conditional: torch.Tensor, phi: float) -> torch.Tensor:
    """Guidance rescale (Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps are Flawed", §3.4).

    With per-sample standard deviations over all but the batch dimension,
    o ← φ · o · std(o_c)/std(o) + (1 − φ) · o: the guided output ``guided`` (B, ...) brought back towards the
    spread of the conditional output ``conditional``, which large w inflates (over-exposed images).

    Applied to the raw network output o, before :func:`~ldm.models.diffusion.prediction.split_prediction`: v for a
    v-model (the paper's Algorithm 2, written for the zero-terminal-SNR v-models it targets), ε for an ε-model
    (as diffusers' ``guidance_rescale`` does), x̂_0 for an x0-model. Rescaling before the conversion keeps every
    sampler unchanged, and φ = 0 returns ``guided`` itself.
    """
    if not 0.0 <= phi <= 1.0:
        raise ValueError(f"guidance_rescale must lie in [0, 1] (0 = off, 0.7 as in the paper), got {phi}.")
    dims = tuple(range(1, guided.ndim))
    ratio = conditional.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True)
    return guided * (phi * ratio + (1.0 - phi))


def parameterization_of(model: Any) -> str:
    """What ``model`` predicts: its ``parameterization`` attribute, ``"eps"`` when it has none."""
    return getattr(model, "parameterization", "eps")


def denoise(
    model: DiffusionModel,
    x: torch.Tensor,
    t: torch.Tensor,
    cond: Conditioning,
    sqrt_alpha_bar: Coefficient,
    sqrt_one_minus_alpha_bar: Coefficient,
    unconditional_conditioning: Conditioning = None,
    unconditional_guidance_scale: float = 1.0,
    score_corrector: Any = None,
    corrector_kwargs: dict | None = None,
    guidance_rescale: float = 0.0,
) -> Prediction:
    """Eqs. (1)–(2): (x̂_0, ε̂) at x_t ``(B, ...)``, model time ``t`` ``(B,)`` (integer or fractional).

    ``sqrt_alpha_bar``/``sqrt_one_minus_alpha_bar`` are √ᾱ_t and √(1 − ᾱ_t) at ``t``, broadcastable to ``x``.
    ``score_corrector.modify_score(model, ε, x, t, cond, **corrector_kwargs)`` replaces the guided output of an
    ε-predicting model before the conversion.
    """
    out = guided_model_output(
        model, x, t, cond, unconditional_conditioning, unconditional_guidance_scale, guidance_rescale
    )
    kind = parameterization_of(model)
    if score_corrector is not None:
        if kind != "eps":
            raise SettingError(f"score_corrector needs an ε-predicting model, but this one predicts {kind!r}.")
        out = score_corrector.modify_score(model, out, x, t, cond, **(corrector_kwargs or {}))
    return split_prediction(kind, x, out, sqrt_alpha_bar, sqrt_one_minus_alpha_bar)


# --------------------------------------------------------------------------------------------------------
# Small shared pieces
# --------------------------------------------------------------------------------------------------------


def warn_on_batch_mismatch(conditioning: Conditioning, batch_size: int) -> None:
    """Log a warning when the conditioning's batch differs from ``batch_size`` (sampling goes on)."""
    if conditioning is None:
        return
    first = conditioning
    while isinstance(first, (dict, list, tuple)):
        first = next(iter(first.values())) if isinstance(first, dict) else first[0]
    if isinstance(first, torch.Tensor) and first.shape[0] != batch_size:
        logger.warning("Got %d conditionings but batch-size is %d", first.shape[0], batch_size)


def progress(iterable: Iterable, desc: str, total: int, disable: bool = False) -> Iterable:
    """A tqdm progress bar over ``iterable`` (``disable`` turns it off)."""
    return tqdm(iterable, desc=desc, total=total, disable=disable)


def batch_coefficient(value: float | torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``value`` as a float32 ``(B, 1, ..., 1)`` tensor on ``x``'s device."""
    return torch.full((x.shape[0],) + (1,) * (x.ndim - 1), float(value), device=x.device)
