"""The adversarial half of the autoencoder losses: the PatchGAN discriminator, its d-losses and the shared base.

``NLayerDiscriminator`` keys, layer order and initialisation follow taming-transformers (``main.<idx>.*``).
:class:`PatchGANPerceptualLoss` holds what the KL and VQ losses share: LPIPS, the discriminator, the adaptive
weight ``λ = ‖∇L_rec‖ / (‖∇L_adv‖ + 1e-4)`` at the decoder's last layer and the discriminator step.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from ldm.modules.losses.lpips import LPIPS, Backbone

logger = logging.getLogger(__name__)


def weights_init(module: nn.Module) -> None:
    """For ``Module.apply``: conv weights ~ N(0, 0.02); BatchNorm weight ~ N(1, 0.02), bias 0.

    Conv biases keep PyTorch's default init and ActNorm is left alone.
    """
    if isinstance(module, nn.Conv2d):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.constant_(module.bias, 0.0)


def _as_image(x: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """``(B, C) -> (B, C, 1, 1)``, with whether it was flat; ``(B, C, H, W)`` passes through."""
    return (x[:, :, None, None], True) if x.ndim == 2 else (x, False)


class ActNorm(nn.Module):
    """Per-channel affine ``scale · (x + loc)`` with data-dependent init (Glow), on ``(B, C, H, W)`` or ``(B, C)``.

    The first forward in training mode sets ``loc = −mean`` and ``scale = 1 / (std + 1e-6)`` over ``(B, H, W)``
    of that batch, so its output is zero-mean, unit-std per channel; the ``initialized`` buffer records that it
    happened. With ``logdet`` the forward also returns ``H·W·Σ log|scale|`` per example; ``reverse`` (or
    ``forward(..., reverse=True)``) inverts the map and may initialise only with ``allow_reverse_init``.
    ``affine`` must stay True.
    """

    def __init__(
        self, num_features: int, logdet: bool = False, affine: bool = True, allow_reverse_init: bool = False
    ) -> None:
        if not affine:
            raise ValueError("ActNorm is always affine: drop affine=False.")
        super().__init__()
        per_channel = (1, num_features, 1, 1)
        self.loc = nn.Parameter(torch.zeros(per_channel))
        self.scale = nn.Parameter(torch.ones(per_channel))
        self.register_buffer("initialized", torch.tensor(0, dtype=torch.uint8))
        self.logdet = logdet
        self.allow_reverse_init = allow_reverse_init

    @torch.no_grad()
    def initialize(self, x: torch.Tensor) -> None:
        """Data-dependent init from ``x (B, C, H, W)``: ``loc = −mean_c``, ``scale = 1 / (std_c + 1e-6)``."""
        by_channel = x.movedim(1, 0).flatten(1)  # (C, B·H·W)
        self.loc.copy_(-by_channel.mean(dim=1).view_as(self.loc))
        self.scale.copy_(1.0 / (by_channel.std(dim=1) + 1e-6).view_as(self.scale))

    def _initialize_on_first_training_batch(self, x: torch.Tensor) -> None:
        if self.training and not self.initialized.item():
            self.initialize(x)
            self.initialized.fill_(1)

    def forward(
        self, x: torch.Tensor, reverse: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if reverse:
            return self.reverse(x)
        image, flat = _as_image(x)  # (B, C, H, W)
        self._initialize_on_first_training_batch(image)
        out = self.scale * (image + self.loc)
        out = out.flatten(1) if flat else out
        if not self.logdet:
            return out
        height, width = image.shape[2:]
        log_abs_det = height * width * self.scale.abs().log().sum()
        return out, log_abs_det * image.new_ones(image.shape[0])

    def reverse(self, y: torch.Tensor) -> torch.Tensor:
        """``y / scale − loc``, the inverse of the forward map."""
        if self.training and not self.initialized.item() and not self.allow_reverse_init:
            raise RuntimeError(
                "ActNorm.reverse() would run the data-dependent init on an uninitialised layer; build it with "
                "allow_reverse_init=True to allow that, or run a forward pass first."
            )
        image, flat = _as_image(y)  # (B, C, H, W)
        self._initialize_on_first_training_batch(image)
        out = image / self.scale - self.loc
        return out.flatten(1) if flat else out


class NLayerDiscriminator(nn.Module):
    """PatchGAN: ``(B, input_nc, H, W) -> (B, 1, H', W')`` logits, one per overlapping patch.

    4x4 convs: one stride-2 ``input_nc -> ndf``, ``n_layers − 1`` stride-2 and one stride-1 normalised convs
    (widths ``ndf · min(2^n, 8)``), then a stride-1 conv to 1 channel; LeakyReLU(0.2) throughout. The normalised
    convs are bias-free with BatchNorm, or biased with ActNorm (``use_actnorm``).
    """

    def __init__(self, input_nc: int = 3, ndf: int = 64, n_layers: int = 3, use_actnorm: bool = False) -> None:
        super().__init__()
        norm_layer = ActNorm if use_actnorm else nn.BatchNorm2d
        use_bias = use_actnorm
        kw, padw = 4, 1
        sequence: list[nn.Module] = [nn.Conv2d(input_nc, ndf, kw, stride=2, padding=padw), nn.LeakyReLU(0.2, True)]
        widths = [ndf * min(2**n, 8) for n in range(n_layers + 1)]
        blocks = [(widths[n - 1], widths[n], 2) for n in range(1, n_layers)]
        blocks.append((widths[max(n_layers - 1, 0)], widths[-1], 1))
        for c_in, c_out, stride in blocks:
            sequence += [
                nn.Conv2d(c_in, c_out, kw, stride=stride, padding=padw, bias=use_bias),
                norm_layer(c_out),
                nn.LeakyReLU(0.2, True),
            ]
        sequence.append(nn.Conv2d(widths[-1], 1, kw, stride=1, padding=padw))
        self.main = nn.Sequential(*sequence)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return self.main(input)


def adopt_weight(weight: float, global_step: int, threshold: int = 0, value: float = 0.0) -> float:
    """``value`` before ``threshold`` steps, ``weight`` from then on (switches the GAN term on at disc_start)."""
    return value if global_step < threshold else weight


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """``½ (mean relu(1 − D(x)) + mean relu(1 + D(x̂)))``."""
    return 0.5 * (torch.mean(F.relu(1.0 - logits_real)) + torch.mean(F.relu(1.0 + logits_fake)))


def vanilla_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """``½ (mean softplus(−D(x)) + mean softplus(D(x̂)))``, the non-saturating BCE loss on logits."""
    return 0.5 * (torch.mean(F.softplus(-logits_real)) + torch.mean(F.softplus(logits_fake)))


D_LOSSES = {"hinge": hinge_d_loss, "vanilla": vanilla_d_loss}


class PatchGANPerceptualLoss(nn.Module):
    """What :class:`LPIPSWithDiscriminator` and :class:`VQLPIPSWithDiscriminator` share.

    A frozen LPIPS ``perceptual_loss`` (built even when ``perceptual_weight`` is 0, as its keys are in the
    released checkpoints; its backbone is then not loaded), the PatchGAN ``discriminator`` with its d-loss, the
    adaptive generator weight and the discriminator step. ``perceptual_backbone``: see
    :class:`~ldm.modules.losses.lpips.LPIPS`.
    """

    def __init__(self, disc_start: int, disc_num_layers: int, disc_in_channels: int, disc_factor: float,
                 disc_weight: float, perceptual_weight: float, use_actnorm: bool, disc_conditional: bool,
                 disc_loss: str, perceptual_backbone: Backbone, disc_ndf: int = 64) -> None:
        super().__init__()
        if disc_loss not in D_LOSSES:
            raise ValueError(f"lossconfig.params.disc_loss={disc_loss!r}: use one of {sorted(D_LOSSES)}")
        if perceptual_backbone is None and perceptual_weight > 0:
            raise ValueError("lossconfig.params.perceptual_backbone is null: use 'pretrained' (the default), a path to "
                             "a VGG16 state dict, or 'random' for an explicitly untrained backbone")
        if perceptual_weight <= 0:
            logger.info("perceptual_weight is %s: LPIPS is kept for its checkpoint keys but never evaluated, and its "
                        "backbone weights are not loaded", perceptual_weight)
        self.perceptual_loss = LPIPS(backbone=perceptual_backbone if perceptual_weight > 0 else None)
        self.perceptual_weight = perceptual_weight
        self.discriminator = NLayerDiscriminator(
            input_nc=disc_in_channels, ndf=disc_ndf, n_layers=disc_num_layers, use_actnorm=use_actnorm
        ).apply(weights_init)
        self.discriminator_iter_start = disc_start
        self.disc_loss = D_LOSSES[disc_loss]
        self.disc_factor = disc_factor
        self.discriminator_weight = disc_weight
        self.disc_conditional = disc_conditional

    def calculate_adaptive_weight(self, nll_loss: torch.Tensor, g_loss: torch.Tensor,
                                  last_layer: torch.Tensor | None) -> torch.Tensor:
        """``λ = clamp(‖∇_w L_nll‖ / (‖∇_w L_g‖ + 1e-4), 0, 1e4) · disc_weight``, detached; ``w = last_layer``.

        Falls back to 0 when the losses carry no graph (validation under ``no_grad``).
        """
        if not (torch.is_grad_enabled() and nll_loss.requires_grad and g_loss.requires_grad):
            return torch.zeros((), device=nll_loss.device)
        if last_layer is None:
            raise ValueError("the adaptive GAN weight needs `last_layer`: pass the decoder's last weight "
                             "(`model.get_last_layer()`) to the loss")
        nll_grads = torch.autograd.grad(nll_loss, last_layer, retain_graph=True)[0]
        g_grads = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
        d_weight = torch.norm(nll_grads) / (torch.norm(g_grads) + 1e-4)
        return torch.clamp(d_weight, 0.0, 1e4).detach() * self.discriminator_weight

    def perceptual(self, inputs: torch.Tensor, reconstructions: torch.Tensor) -> torch.Tensor | None:
        """LPIPS ``(B, 1, 1, 1)``, or None when ``perceptual_weight`` is 0 (then it is not computed)."""
        if self.perceptual_weight > 0:
            return self.perceptual_loss(inputs.contiguous(), reconstructions.contiguous())
        return None

    def _disc_input(self, images: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        return images.contiguous() if cond is None else torch.cat((images.contiguous(), cond), dim=1)

    @property
    def discriminator_used(self) -> bool:
        """False when ``disc_factor`` is 0: the GAN terms have no weight at any step, so the discriminator is never
        run, and what only it produces (``g_loss``, ``logits_real``, ``logits_fake``) is not logged."""
        return self.disc_factor != 0.0

    def gan_active(self, global_step: int) -> bool:
        """Whether the GAN terms have any weight at ``global_step``: ``disc_factor`` > 0 and ``disc_start`` reached.

        While they have none (the first ``disc_start`` steps, or ``disc_factor: 0``) both
        GAN terms are multiplied by 0, so their gradients are exactly zero: the discriminator then runs without a
        graph (its outputs are still logged; with ``disc_factor: 0`` it does not run at all, see
        :attr:`discriminator_used`) and the update is the one zero gradients give.
        """
        return adopt_weight(self.disc_factor, global_step, threshold=self.discriminator_iter_start) != 0.0

    def generator_loss(self, reconstructions: torch.Tensor, cond: torch.Tensor | None,
                       global_step: int) -> torch.Tensor:
        """``−mean D(x̂)`` (``D(x̂ ⊕ cond)`` when ``disc_conditional``); without a graph while the GAN is not
        active at ``global_step``."""
        if (cond is not None) != self.disc_conditional:
            raise ValueError(f"disc_conditional is {self.disc_conditional} but cond is "
                             f"{'given' if cond is not None else 'None'}: pass cond exactly when "
                             "lossconfig.params.disc_conditional is true")
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.gan_active(global_step)):
            return -torch.mean(self.discriminator(self._disc_input(reconstructions, cond)))

    def adversarial_term(self, nll_loss: torch.Tensor, reconstructions: torch.Tensor, cond: torch.Tensor | None,
                         global_step: int, last_layer: torch.Tensor | None,
                         split: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The generator's GAN term ``d_weight · disc_factor · g_loss`` and its log (``d_weight``, ``disc_factor``,
        and ``g_loss`` when the discriminator runs); a zero term, without running it, when it is never used.

        A negative ``disc_factor`` (meaningless) gets the adaptive weight too.
        """
        disc_factor = adopt_weight(self.disc_factor, global_step, threshold=self.discriminator_iter_start)
        zero = torch.zeros((), device=nll_loss.device)
        log = {f"{split}/d_weight": zero, f"{split}/disc_factor": torch.tensor(float(disc_factor))}
        if not self.discriminator_used:
            return zero, log
        g_loss = self.generator_loss(reconstructions, cond, global_step)
        d_weight = self.calculate_adaptive_weight(nll_loss, g_loss, last_layer)
        log |= {f"{split}/d_weight": d_weight.detach(), f"{split}/g_loss": g_loss.detach().mean()}
        return d_weight * disc_factor * g_loss, log

    def discriminator_step(self, inputs: torch.Tensor, reconstructions: torch.Tensor, global_step: int,
                           cond: torch.Tensor | None, split: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``disc_factor · d_loss(D(x), D(x̂))`` on detached images, and its log dict (a loss without a graph
        while the GAN is not active: its gradients would be zero; 0 without running D when it is never used)."""
        if not self.discriminator_used:
            d_loss = torch.zeros((), device=inputs.device)
            return d_loss, {f"{split}/disc_loss": d_loss}
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.gan_active(global_step)):
            logits_real = self.discriminator(self._disc_input(inputs.detach(), cond))
            logits_fake = self.discriminator(self._disc_input(reconstructions.detach(), cond))
            disc_factor = adopt_weight(self.disc_factor, global_step, threshold=self.discriminator_iter_start)
            d_loss = disc_factor * self.disc_loss(logits_real, logits_fake)
        log = {
            f"{split}/disc_loss": d_loss.clone().detach().mean(),
            f"{split}/logits_real": logits_real.detach().mean(),
            f"{split}/logits_fake": logits_fake.detach().mean(),
        }
        return d_loss, log
