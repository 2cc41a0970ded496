"""``LPIPSWithDiscriminator``: the KL-autoencoder loss (reconstruction NLL + KL + PatchGAN), as in latent-diffusion.

``DummyLoss``: the placeholder ``lossconfig`` of a first stage that is only ever used frozen.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from ldm.modules.losses.discriminator import PatchGANPerceptualLoss


class LPIPSWithDiscriminator(PatchGANPerceptualLoss):
    """Loss of ``AutoencoderKL``: reconstruction NLL with a learned scale, KL and a PatchGAN term.

    Generator step (``optimizer_idx=0``)::

        rec  = |x − x̂| + perceptual_weight · LPIPS(x, x̂)                      (B, C, H, W)
        nll  = rec / exp(logvar) + logvar          summed, divided by B (``weights`` multiply it first)
        loss = nll_w + kl_weight · KL(q(z|x) ‖ N(0, I)) / B + λ · disc_factor · (−mean D(x̂))

    with ``λ`` the adaptive weight (0 when ``disc_factor`` is 0 or there is no graph) and ``disc_factor`` 0 before
    ``disc_start``. While that product is 0 the discriminator runs without a graph (same update, far less work) and
    ``λ`` is logged as 0.
    Discriminator step (``optimizer_idx=1``): ``disc_factor · d_loss(D(x), D(x̂))``.
    ``logvar`` is a learnable scalar (key ``logvar``); ``AutoencoderKL`` keeps it out of its optimizers.

    ``perceptual_backbone``: where LPIPS' VGG16 weights come from — ``"pretrained"``
    (torchvision ImageNet weights from the torch hub cache, else downloaded; an error that says how to supply
    them when neither works), a path to a local VGG16 state dict, or ``"random"`` (explicit, logged as a
    warning). With ``perceptual_weight: 0`` nothing is loaded and LPIPS is never run; its keys stay.
    """

    def __init__(self, disc_start: int, logvar_init: float = 0.0, kl_weight: float = 1.0,
                 pixelloss_weight: float = 1.0, disc_num_layers: int = 3, disc_in_channels: int = 3,
                 disc_factor: float = 1.0, disc_weight: float = 1.0, perceptual_weight: float = 1.0,
                 use_actnorm: bool = False, disc_conditional: bool = False, disc_loss: str = "hinge",
                 perceptual_backbone: str | os.PathLike = "pretrained") -> None:
        super().__init__(disc_start=disc_start, disc_num_layers=disc_num_layers, disc_in_channels=disc_in_channels,
                         disc_factor=disc_factor, disc_weight=disc_weight, perceptual_weight=perceptual_weight,
                         use_actnorm=use_actnorm, disc_conditional=disc_conditional, disc_loss=disc_loss,
                         perceptual_backbone=perceptual_backbone)
        self.kl_weight = kl_weight
        self.pixel_weight = pixelloss_weight
        self.logvar = nn.Parameter(torch.ones(size=()) * logvar_init)

    def forward(self, inputs: torch.Tensor, reconstructions: torch.Tensor, posteriors, optimizer_idx: int,
                global_step: int, last_layer: torch.Tensor | None = None, cond: torch.Tensor | None = None,
                split: str = "train", weights: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
        """``inputs``, ``reconstructions``: ``(B, C, H, W)``; ``posteriors``: a ``DiagonalGaussianDistribution``.

        Returns ``(loss, log)``; ``last_layer`` is the decoder's last weight (for the adaptive weight).
        """
        if optimizer_idx == 1:
            return self.discriminator_step(inputs, reconstructions, global_step, cond, split)
        if optimizer_idx != 0:
            raise ValueError(f"optimizer_idx must be 0 (autoencoder) or 1 (discriminator), got {optimizer_idx}")

        rec_loss = torch.abs(inputs.contiguous() - reconstructions.contiguous())
        p_loss = self.perceptual(inputs, reconstructions)
        if p_loss is not None:
            rec_loss = rec_loss + self.perceptual_weight * p_loss
        nll_loss = rec_loss / torch.exp(self.logvar) + self.logvar
        weighted_nll_loss = nll_loss if weights is None else weights * nll_loss
        weighted_nll_loss = torch.sum(weighted_nll_loss) / weighted_nll_loss.shape[0]
        nll_loss = torch.sum(nll_loss) / nll_loss.shape[0]
        kl_loss = posteriors.kl()
        kl_loss = torch.sum(kl_loss) / kl_loss.shape[0]

        gan, gan_log = self.adversarial_term(nll_loss, reconstructions, cond, global_step, last_layer, split)
        loss = weighted_nll_loss + self.kl_weight * kl_loss + gan

        log = {
            f"{split}/total_loss": loss.clone().detach().mean(),
            f"{split}/logvar": self.logvar.detach(),
            f"{split}/kl_loss": kl_loss.detach().mean(),
            f"{split}/nll_loss": nll_loss.detach().mean(),
            f"{split}/rec_loss": rec_loss.detach().mean(),
            **gan_log,
        }
        return loss, log


class DummyLoss(nn.Module):
    """Placeholder ``lossconfig`` target for an autoencoder that is never trained (a frozen first stage).

    Named by the released ``models/ldm/inpainting_big`` config. It takes no parameters and owns no weights or
    buffers, so the first stage's checkpoint loads with no ``loss.*`` keys. Calling it is an error: there is no
    loss to compute.
    """

    def __init__(self) -> None:
        super().__init__()

    def forward(self, *args: object, **kwargs: object) -> tuple[torch.Tensor, dict]:
        raise RuntimeError(
            "DummyLoss is the lossconfig of a first stage meant to be used frozen, so it has no loss to compute. "
            "To train this autoencoder, set its lossconfig target to "
            "ldm.modules.losses.vqperceptual.VQLPIPSWithDiscriminator (VQ) or "
            "ldm.modules.losses.contperceptual.LPIPSWithDiscriminator (KL)."
        )
