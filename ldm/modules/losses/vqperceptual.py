"""``VQLPIPSWithDiscriminator``: the VQ-autoencoder loss (pixel + LPIPS + codebook + PatchGAN), latent-diffusion's."""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from ldm.modules.losses.discriminator import PatchGANPerceptualLoss, adopt_weight, hinge_d_loss, vanilla_d_loss

__all__ = ["VQLPIPSWithDiscriminator", "adopt_weight", "hinge_d_loss", "hinge_d_loss_with_exemplar_weights",
           "vanilla_d_loss", "l1", "l2", "measure_perplexity"]


def l1(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``|x − y|`` elementwise."""
    return torch.abs(x - y)


def l2(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``(x − y)²`` elementwise."""
    return torch.pow(x - y, 2)


PIXEL_LOSSES = {"l1": l1, "l2": l2}


def hinge_d_loss_with_exemplar_weights(
    logits_real: torch.Tensor, logits_fake: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """Hinge d-loss with one weight per example: ``½ (Σ w_b r_b / Σ w + Σ w_b f_b / Σ w)`` where
    ``r_b = mean relu(1 − D(x)_b)`` and ``f_b = mean relu(1 + D(x̂)_b)`` over ``(C, H, W)``."""
    if not weights.shape[0] == logits_real.shape[0] == logits_fake.shape[0]:
        raise ValueError(
            f"weights {tuple(weights.shape)}, logits_real {tuple(logits_real.shape)} and logits_fake "
            f"{tuple(logits_fake.shape)} must share the batch size."
        )
    loss_real = (weights * torch.mean(F.relu(1.0 - logits_real), dim=[1, 2, 3])).sum() / weights.sum()
    loss_fake = (weights * torch.mean(F.relu(1.0 + logits_fake), dim=[1, 2, 3])).sum() / weights.sum()
    return 0.5 * (loss_real + loss_fake)


def measure_perplexity(predicted_indices: torch.Tensor, n_embed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Codebook perplexity ``exp(−Σ_k p_k log(p_k + 1e-10))`` of the code frequencies ``p``, and the number of used
    codes. Perplexity equals ``n_embed`` when every code is used equally often."""
    avg_probs = F.one_hot(predicted_indices, n_embed).float().reshape(-1, n_embed).mean(0)
    perplexity = torch.exp(-torch.sum(avg_probs * torch.log(avg_probs + 1e-10)))
    return perplexity, torch.sum(avg_probs > 0)


class VQLPIPSWithDiscriminator(PatchGANPerceptualLoss):
    """Loss of ``VQModel``, latent-diffusion's parameters and defaults plus ``perceptual_backbone``.

    Generator step (``optimizer_idx=0``)::

        rec  = pixel_loss(x, x̂) + perceptual_weight · LPIPS(x, x̂)     pixel_loss: "l1" |x − x̂| or "l2" (x − x̂)²
        nll  = mean(rec)
        loss = nll + λ · disc_factor · (−mean D(x̂)) + codebook_weight · mean(codebook_loss)

    ``λ`` is the adaptive weight (0 without a graph, as before ``disc_start``, when the discriminator runs without
    one because its terms have no weight), ``disc_factor`` is 0 before ``disc_start``. Given
    ``predicted_indices`` and ``n_classes`` (the codebook size), the codebook perplexity and cluster usage are
    logged; without ``n_classes`` they are skipped. Discriminator step (``optimizer_idx=1``):
    ``disc_factor · d_loss(D(x), D(x̂))``. ``pixelloss_weight`` is stored but not applied.
    ``perceptual_backbone``: see ``LPIPSWithDiscriminator``.
    """

    def __init__(self, disc_start: int, codebook_weight: float = 1.0, pixelloss_weight: float = 1.0,
                 disc_num_layers: int = 3, disc_in_channels: int = 3, disc_factor: float = 1.0,
                 disc_weight: float = 1.0, perceptual_weight: float = 1.0, use_actnorm: bool = False,
                 disc_conditional: bool = False, disc_ndf: int = 64, disc_loss: str = "hinge",
                 n_classes: int | None = None, perceptual_loss: str = "lpips", pixel_loss: str = "l1",
                 perceptual_backbone: str | os.PathLike = "pretrained") -> None:
        if perceptual_loss != "lpips":
            raise ValueError(f"lossconfig.params.perceptual_loss={perceptual_loss!r}: only 'lpips' is available")
        if pixel_loss not in PIXEL_LOSSES:
            raise ValueError(f"lossconfig.params.pixel_loss={pixel_loss!r}: use one of {sorted(PIXEL_LOSSES)}")
        super().__init__(disc_start=disc_start, disc_num_layers=disc_num_layers, disc_in_channels=disc_in_channels,
                         disc_factor=disc_factor, disc_weight=disc_weight, perceptual_weight=perceptual_weight,
                         use_actnorm=use_actnorm, disc_conditional=disc_conditional, disc_loss=disc_loss,
                         perceptual_backbone=perceptual_backbone, disc_ndf=disc_ndf)
        self.codebook_weight = codebook_weight
        self.pixel_weight = pixelloss_weight
        self.pixel_loss = PIXEL_LOSSES[pixel_loss]
        self.n_classes = n_classes

    def forward(self, codebook_loss: torch.Tensor | None, inputs: torch.Tensor, reconstructions: torch.Tensor,
                optimizer_idx: int, global_step: int, last_layer: torch.Tensor | None = None,
                cond: torch.Tensor | None = None, split: str = "train",
                predicted_indices: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
        """``inputs``, ``reconstructions``: ``(B, C, H, W)``; ``codebook_loss`` from the quantizer (None -> 0).

        Returns ``(loss, log)``; ``last_layer`` is the decoder's last weight (for the adaptive weight).
        """
        if optimizer_idx == 1:
            return self.discriminator_step(inputs, reconstructions, global_step, cond, split)
        if optimizer_idx != 0:
            raise ValueError(f"optimizer_idx must be 0 (autoencoder) or 1 (discriminator), got {optimizer_idx}")
        if codebook_loss is None:
            codebook_loss = torch.zeros(1, device=inputs.device)

        rec_loss = self.pixel_loss(inputs.contiguous(), reconstructions.contiguous())
        p_loss = self.perceptual(inputs, reconstructions)
        if p_loss is not None:
            rec_loss = rec_loss + self.perceptual_weight * p_loss
        else:
            p_loss = torch.zeros(1, device=inputs.device)
        nll_loss = torch.mean(rec_loss)

        gan, gan_log = self.adversarial_term(nll_loss, reconstructions, cond, global_step, last_layer, split)
        loss = nll_loss + gan + self.codebook_weight * codebook_loss.mean()

        log = {
            f"{split}/total_loss": loss.clone().detach().mean(),
            f"{split}/quant_loss": codebook_loss.detach().mean(),
            f"{split}/nll_loss": nll_loss.detach().mean(),
            f"{split}/rec_loss": rec_loss.detach().mean(),
            f"{split}/p_loss": p_loss.detach().mean(),
            **gan_log,
        }
        if predicted_indices is not None and self.n_classes is not None:
            with torch.no_grad():
                perplexity, cluster_usage = measure_perplexity(predicted_indices, self.n_classes)
            log[f"{split}/perplexity"] = perplexity
            log[f"{split}/cluster_usage"] = cluster_usage.float()  # a float, so loggers reduce it without warning
        return loss, log
