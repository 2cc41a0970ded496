"""The ``sample(S, batch_size, shape, conditioning, ...)`` call that every sampler class answers.

``DDIMSampler``, ``PLMSSampler``, ``DPMSolverSampler``, ``UniPCSampler`` and the named k-diffusion samplers take
the original DDIM sampler's arguments (the scripts and client code call them all alike) plus a few options of
their own. :class:`SamplerFrontEnd` declares that call once: it checks the keywords (an unknown one raises
``TypeError`` naming the closest valid one), gathers the arguments into a :class:`SamplingRequest` and hands it
to the subclass's :meth:`SamplerFrontEnd.run`, with the subclass's own options (``sample_options``) filled in.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ldm.models.diffusion.sampler_core import (
    Conditioning,
    DiffusionModel,
    checked_keywords,
    denoise,
    unexpected_keyword_error,
    warn_on_batch_mismatch,
)
from ldm.models.diffusion.schedule import DiscreteSchedule

#: What ``sample`` returns: the samples ``(B, *shape)`` and the logged ``{"x_inter": [...], "pred_x0": [...]}``.
SampleResult = tuple[torch.Tensor, dict[str, list[torch.Tensor]]]
#: ``on_step(i, x, x̂_0)`` after step i of a loop.
StepRecorder = Callable[[int, torch.Tensor, torch.Tensor], None]


@dataclass(frozen=True)
class SamplingRequest:
    """The arguments of one ``sample`` call; ``size`` is ``(batch_size, *shape)``."""

    steps: int
    size: tuple[int, ...]
    conditioning: Conditioning
    callback: Callable[[int], None] | None
    img_callback: Callable[[torch.Tensor, int], None] | None
    quantize_x0: bool
    eta: float | None
    mask: torch.Tensor | None
    x0: torch.Tensor | None
    temperature: float
    noise_dropout: float
    score_corrector: Any
    corrector_kwargs: dict | None
    verbose: bool
    x_T: torch.Tensor | None
    log_every_t: int
    unconditional_guidance_scale: float
    unconditional_conditioning: Conditioning
    generator: torch.Generator | None
    disable_progress: bool
    guidance_rescale: float = 0.0

    def loop_keywords(self) -> dict[str, Any]:
        """The keyword arguments of the original ``ddim_sampling`` / ``plms_sampling`` loops for this request."""
        return {
            "x_T": self.x_T, "callback": self.callback, "img_callback": self.img_callback,
            "quantize_denoised": self.quantize_x0, "mask": self.mask, "x0": self.x0,
            "log_every_t": self.log_every_t, "temperature": self.temperature, "noise_dropout": self.noise_dropout,
            "score_corrector": self.score_corrector, "corrector_kwargs": self.corrector_kwargs,
            "unconditional_guidance_scale": self.unconditional_guidance_scale,
            "unconditional_conditioning": self.unconditional_conditioning, "generator": self.generator,
            "disable_progress": self.disable_progress, "guidance_rescale": self.guidance_rescale,
        }  # fmt: skip

    def ddim_only_options(self) -> list[str]:
        """The options set in this request that only the DDIM loop implements (empty when none is)."""
        is_set = {
            "eta": self.eta not in (None, 0.0),
            "mask/x0": self.mask is not None or self.x0 is not None,
            "quantize_x0": self.quantize_x0,
            "temperature": self.temperature != 1.0,
            "noise_dropout": self.noise_dropout != 0.0,
            "score_corrector": self.score_corrector is not None,
        }
        return [name for name, value in is_set.items() if value]

    def reject_ddim_only_options(self, sampler: str, allowed: tuple[str, ...] = ()) -> None:
        """``ValueError`` naming every DDIM-only option set here, except those in ``allowed``."""
        names = [name for name in self.ddim_only_options() if name not in allowed]
        if names:
            raise ValueError(
                f"{sampler} does not support {', '.join(names)}; use DDIMSampler for these options."
            )

    def initial_noise(self, device: torch.device) -> torch.Tensor:
        """``x_T`` if given, else N(0, I) of ``size`` drawn from ``generator`` on ``device``."""
        if self.x_T is not None:
            return self.x_T
        return torch.randn(self.size, device=device, generator=self.generator)

    def data_prediction(
        self, model: DiffusionModel, schedule: DiscreteSchedule
    ) -> Callable[[torch.Tensor, float], torch.Tensor]:
        """``x̂_0(x, τ)``: the guided data prediction of ``model`` at x ``(B, ...)`` and model time τ (a float,
        fractional between the model's steps, α_τ and σ_τ read from ``schedule``)."""

        def predict(x: torch.Tensor, tau: float) -> torch.Tensor:
            t_in = torch.full((x.shape[0],), tau, device=x.device)
            alpha, sigma = float(schedule.alpha(tau)), float(schedule.sigma(tau))
            return denoise(
                model, x, t_in, self.conditioning, alpha, sigma, self.unconditional_conditioning,
                self.unconditional_guidance_scale, guidance_rescale=self.guidance_rescale,
            ).x0  # fmt: skip

        return predict

    def recorder(self, x_T: torch.Tensor) -> tuple[dict[str, list[torch.Tensor]], StepRecorder]:
        """The intermediates dict (starting at ``x_T``) and ``on_step(i, x, x̂_0)`` for a loop of ``steps``
        steps: it calls ``callback(i)`` and ``img_callback(x̂_0, i)`` and logs every ``log_every_t`` steps and
        after the last."""
        intermediates = {"x_inter": [x_T], "pred_x0": [x_T]}

        def on_step(i: int, x: torch.Tensor, pred_x0: torch.Tensor) -> None:
            if self.callback:
                self.callback(i)
            if self.img_callback:
                self.img_callback(pred_x0, i)
            if (i + 1) % self.log_every_t == 0 or i == self.steps - 1:
                intermediates["x_inter"].append(x)
                intermediates["pred_x0"].append(pred_x0)

        return intermediates, on_step


class SamplerFrontEnd:
    """A sampler over ``model``; tensors stored with :meth:`register_buffer` live on :attr:`device` (default: the
    model's, ``model.betas.device``).

    Subclasses implement :meth:`run` and list their own ``sample`` keywords with defaults in ``sample_options``.
    """

    #: The sampler's own keyword options of ``sample`` and their defaults.
    sample_options: ClassVar[dict[str, Any]] = {}
    #: The η a ``sample`` call without ``eta`` (or with ``eta=None``) asks for.
    default_eta: ClassVar[float | None] = 0.0

    @checked_keywords
    def __init__(self, model: DiffusionModel, device: torch.device | str | None = None) -> None:
        self.model = model
        self._device = None if device is None else torch.device(device)

    @property
    def device(self) -> torch.device:
        return self._device if self._device is not None else self.model.betas.device

    def register_buffer(self, name: str, attr: Any) -> None:
        """Store ``attr`` as ``self.<name>``, moving tensors to :attr:`device`."""
        if isinstance(attr, torch.Tensor):
            attr = attr.to(self.device)
        setattr(self, name, attr)

    @torch.no_grad()
    def sample(
        self,
        S: int,
        batch_size: int,
        shape: tuple[int, ...],
        conditioning: Conditioning = None,
        callback: Callable[[int], None] | None = None,
        normals_sequence: Any = None,
        img_callback: Callable[[torch.Tensor, int], None] | None = None,
        quantize_x0: bool = False,
        eta: float | None = None,
        mask: torch.Tensor | None = None,
        x0: torch.Tensor | None = None,
        temperature: float = 1.0,
        noise_dropout: float = 0.0,
        score_corrector: Any = None,
        corrector_kwargs: dict | None = None,
        verbose: bool = True,
        x_T: torch.Tensor | None = None,
        log_every_t: int = 100,
        unconditional_guidance_scale: float = 1.0,
        unconditional_conditioning: Conditioning = None,
        generator: torch.Generator | None = None,
        disable_progress: bool = False,
        guidance_rescale: float = 0.0,
        **options: Any,
    ) -> SampleResult:
        """Sample ``(batch_size, *shape)`` in S steps from x_T (default: N(0, I) drawn from ``generator``).

        ``conditioning`` and ``unconditional_conditioning`` (tensor, list or dict) with
        ``unconditional_guidance_scale`` w give classifier-free guidance (``guidance_rescale`` φ: see
        :func:`~ldm.models.diffusion.sampler_core.rescale_guidance`); ``callback(i)`` and
        ``img_callback(x̂_0, i)`` run after step i; ``normals_sequence`` is accepted and unused. The DDIM loop's
        options (η, mask/x0, quantize_x0, temperature, noise_dropout, score_corrector) are honoured where the
        sampler defines them and raise ``ValueError`` elsewhere; ``options`` are the sampler's own
        (``sample_options``); ``eta`` None is the class's ``default_eta``. Returns
        ``(samples, {"x_inter": [...], "pred_x0": [...]})``.
        """
        options = self.sampler_keywords(options)
        warn_on_batch_mismatch(conditioning, batch_size)
        eta = self.default_eta if eta is None else eta
        request = SamplingRequest(
            S, (batch_size, *shape), conditioning, callback, img_callback, quantize_x0, eta, mask, x0, temperature,
            noise_dropout, score_corrector, corrector_kwargs, verbose, x_T, log_every_t, unconditional_guidance_scale,
            unconditional_conditioning, generator, disable_progress, guidance_rescale,
        )  # fmt: skip
        return self.run(request, **options)

    def sampler_keywords(self, options: dict[str, Any]) -> dict[str, Any]:
        """``sample_options`` updated with ``options``; a name that is not among them raises the ``TypeError`` of
        :func:`~ldm.models.diffusion.sampler_core.unexpected_keyword_error` for ``sample``."""
        unknown = [name for name in options if name not in self.sample_options]
        if unknown:
            valid = [*_COMMON_KEYWORDS, *self.sample_options]
            raise unexpected_keyword_error(f"{type(self).__name__}.sample", unknown[0], valid)
        return {**self.sample_options, **options}

    def run(self, request: SamplingRequest, **options: Any) -> SampleResult:
        """Sample as ``request`` asks, with the sampler's ``options`` (every ``sample_options`` key given)."""
        raise NotImplementedError(f"{type(self).__name__} must implement run(request, **options).")


_COMMON_KEYWORDS = [
    name for name, p in inspect.signature(SamplerFrontEnd.sample).parameters.items()
    if p.kind is p.POSITIONAL_OR_KEYWORD
][1:]  # fmt: skip
