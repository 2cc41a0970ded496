"""First-stage autoencoders (perceptual compression): ``AutoencoderKL``, ``VQModel`` and their interfaces.

``AutoencoderKL``: ``x -> Encoder -> quant_conv -> N(mean, diag(var)) -> z -> post_quant_conv -> Decoder -> x̂``;
``VQModel``: the same with a nearest-codebook quantiser in place of the Gaussian. Both train against a
PatchGAN discriminator held by their loss module (``self.loss``): each training batch makes one autoencoder
update (``optimizer_idx=0``) and one discriminator update (``optimizer_idx=1``) with Lightning's manual
optimisation; ``trainer.global_step`` counts batches, so ``disc_start`` and ``max_steps`` are batch counts.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

import torch
import torch.nn.functional as F
from torch.optim.lr_scheduler import LambdaLR

from ldm.models.adversarial_autoencoder import AdversarialAutoencoder
from ldm.models.vae_tiling import tiled_decode
from ldm.modules.distributions.distributions import DiagonalGaussianDistribution
from ldm.modules.ema import LitEma, ema_weights
from ldm.modules.vqvae.quantize import VectorQuantizer2 as VectorQuantizer
from ldm.optim import adam
from ldm.util import instantiate_from_config

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------------------
# VQ autoencoder
# --------------------------------------------------------------------------------------------------------


class VQModel(AdversarialAutoencoder):
    """``x -> Encoder -> quant_conv -> VectorQuantizer -> post_quant_conv -> Decoder -> x̂``.

    ``batch_resize_range = (lo, hi)`` resizes each training batch to a random multiple of 16 in [lo, hi]
    (``hi`` for the first 5 steps); ``scheduler_config`` builds a LambdaLR schedule (its ``schedule`` method)
    for both optimizers; the autoencoder's rate is ``lr_g_factor × learning_rate``; ``use_ema`` keeps an
    exponential moving average of the weights (``ldm.modules.ema.LitEma``) used in ``ema_scope``.
    """

    def __init__(
        self,
        ddconfig: Mapping[str, Any],
        lossconfig: Mapping[str, Any],
        n_embed: int,
        embed_dim: int,
        ckpt_path: str | None = None,
        ignore_keys: Sequence[str] = (),
        image_key: str = "image",
        colorize_nlabels: int | None = None,
        monitor: str | None = None,
        batch_resize_range: Sequence[int] | None = None,
        scheduler_config: Mapping[str, Any] | None = None,
        lr_g_factor: float = 1.0,
        remap: str | None = None,
        sane_index_shape: bool = False,
        use_ema: bool = False,
    ) -> None:
        super().__init__()
        self.embed_dim, self.n_embed = embed_dim, n_embed
        self._build_autoencoder(ddconfig, lossconfig, embed_dim, moments=1)
        self.quantize = VectorQuantizer(n_embed, embed_dim, beta=0.25, remap=remap, sane_index_shape=sane_index_shape)
        self._setup_common(image_key, colorize_nlabels, monitor)
        self.scheduler_config, self.lr_g_factor = scheduler_config, lr_g_factor
        self.batch_resize_range = batch_resize_range
        if batch_resize_range is not None:
            logger.info("%s: each training batch resized to a size in %s", type(self).__name__, batch_resize_range)
        self.use_ema = use_ema
        if use_ema:  # built after every weight, so the average covers them all; before the checkpoint loads
            self.model_ema = LitEma(self)
            logger.info("%s: EMA over %d tensors", type(self).__name__, len(self.model_ema.m_name2s_name))
        if ckpt_path is not None:
            self.init_from_ckpt(ckpt_path, ignore_keys=ignore_keys)

    def ema_scope(self, context: str | None = None) -> AbstractContextManager[None]:
        """A block run with the EMA weights (when ``use_ema``); the training weights come back afterwards."""
        return ema_weights(self.model_ema if self.use_ema else None, self, context)

    def on_train_batch_end(self, *args: Any, **kwargs: Any) -> None:
        if self.use_ema:
            self.model_ema(self)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple]:
        """``(B, C, H, W) -> (quant (B, embed_dim, H/f, W/f), codebook loss, (perplexity, encodings, indices))``."""
        return self.quantize(self.encode_to_prequant(x))

    def encode_to_prequant(self, x: torch.Tensor) -> torch.Tensor:
        return self.quant_conv(self.encoder(x))

    def decode(self, quant: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(quant))

    def decode_code(self, code_b: torch.Tensor) -> torch.Tensor:
        """Decode codebook indices ``(B, h, w)`` (positions in ``used`` when ``remap`` is set) to images."""
        batch, height, width = code_b.shape
        quant = self.quantize.get_codebook_entry(code_b.reshape(-1), (batch, height, width, self.embed_dim))
        return self.decode(quant)

    def forward(self, input: torch.Tensor, return_pred_indices: bool = False) -> tuple[torch.Tensor, ...]:
        """``(x̂, codebook loss)``, plus the code indices with ``return_pred_indices``."""
        quant, diff, (_, _, ind) = self.encode(input)
        dec = self.decode(quant)
        if return_pred_indices:
            return dec, diff, ind
        return dec, diff

    def get_input(self, batch: Mapping[str, torch.Tensor], k: str) -> torch.Tensor:
        x = super().get_input(batch, k)
        if self.batch_resize_range is not None:
            lower, upper = self.batch_resize_range
            if self.global_step <= 4:  # the first batches at full size, so an out-of-memory shows at once
                size = upper
            else:
                sizes = torch.arange(lower, upper + 16, 16)
                size = int(sizes[torch.randint(len(sizes), ())])
            if size != x.shape[2]:
                x = F.interpolate(x, size=size, mode="bicubic")
            x = x.detach()
        return x

    def training_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> None:
        x = self.get_input(batch, self.image_key)
        xrec, qloss, ind = self(x, return_pred_indices=True)

        def loss_fn(optimizer_idx: int) -> tuple[torch.Tensor, Mapping[str, Any]]:
            loss, log = self.loss(qloss, x, xrec, optimizer_idx, self.global_step, last_layer=self.get_last_layer(),
                                  split="train", predicted_indices=ind if optimizer_idx == 0 else None)
            self.log_dict(log, prog_bar=False, logger=True, on_step=True, on_epoch=True)
            return loss, log

        aeloss, discloss = self._adversarial_step(batch_idx, loss_fn)
        self.log("aeloss", aeloss, prog_bar=True, logger=True, on_step=True, on_epoch=True)
        self.log("discloss", discloss, prog_bar=True, logger=True, on_step=True, on_epoch=True)

    def validation_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> None:
        self._validation_step(batch)
        if self.use_ema:
            with self.ema_scope():
                self._validation_step(batch, suffix="_ema")

    def _validation_step(self, batch: Mapping[str, torch.Tensor], suffix: str = "") -> None:
        """Both loss halves on one batch, logged under ``val{suffix}/``; rec_loss and aeloss on the progress bar."""
        x = self.get_input(batch, self.image_key)
        xrec, qloss, ind = self(x, return_pred_indices=True)
        split = f"val{suffix}"
        (aeloss, ae_terms), (_, disc_terms) = (
            self.loss(qloss, x, xrec, idx, self.global_step, last_layer=self.get_last_layer(), split=split,
                      predicted_indices=ind)
            for idx in (0, 1)
        )
        terms = {**ae_terms, **disc_terms}
        headline = {f"{split}/rec_loss": terms.pop(f"{split}/rec_loss"), f"{split}/aeloss": aeloss}
        for name, value in headline.items():
            self.log(name, value, prog_bar=True, logger=True, on_step=False, on_epoch=True, sync_dist=True)
        self.log_dict(terms)

    def configure_optimizers(self) -> tuple[list[torch.optim.Optimizer], list[dict[str, Any]]]:
        """Adam(β = (0.5, 0.9)) for encoder, decoder, quantizer and the 1×1 convs (``lr_g_factor × lr``) and
        for the discriminator (``lr``), with LambdaLR per step when ``scheduler_config`` is set."""
        lr_d = self._learning_rate()
        lr_g = self.lr_g_factor * lr_d
        logger.info("lr_d %s, lr_g %s", lr_d, lr_g)
        autoencoder = [self.encoder, self.decoder, self.quantize, self.quant_conv, self.post_quant_conv]
        parameters = [p for m in autoencoder for p in m.parameters()]
        opt_ae = adam(torch.optim.Adam, parameters, lr=lr_g, betas=(0.5, 0.9))
        opt_disc = adam(torch.optim.Adam, self._discriminator_parameters(), lr=lr_d, betas=(0.5, 0.9))
        if self.scheduler_config is None:
            return [opt_ae, opt_disc], []
        schedule = instantiate_from_config(self.scheduler_config, name="scheduler_config").schedule
        logger.info("Setting up LambdaLR scheduler...")
        schedulers = [
            {"scheduler": LambdaLR(opt, lr_lambda=schedule), "interval": "step", "frequency": 1}
            for opt in (opt_ae, opt_disc)
        ]
        return [opt_ae, opt_disc], schedulers

    @torch.no_grad()
    def log_images(self, batch: Mapping[str, torch.Tensor], only_inputs: bool = False, plot_ema: bool = False,
                   **kwargs: Any) -> dict[str, torch.Tensor]:
        """``inputs``, ``reconstructions`` and, with ``plot_ema``, ``reconstructions_ema``;
        segmentation maps are colorized."""
        x = self.get_input(batch, self.image_key).to(self.device)
        if only_inputs:
            return {"inputs": x}
        xrec, _ = self(x)
        log = {"inputs": x, "reconstructions": xrec}
        if plot_ema:
            with self.ema_scope():
                log["reconstructions_ema"], _ = self(x)
        if x.shape[1] > 3:
            log = {k: self.to_rgb(v) for k, v in log.items()}
        return log


class VQModelInterface(VQModel):
    """A VQModel as a latent-diffusion first stage: ``encode`` stops before the quantiser, ``decode`` quantises."""

    def __init__(self, embed_dim: int, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, embed_dim=embed_dim, **kwargs)
        self.embed_dim = embed_dim

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W) -> h (B, embed_dim, H/f, W/f)``, not yet quantised."""
        return self.encode_to_prequant(x)

    def decode(self, h: torch.Tensor, force_not_quantize: bool = False) -> torch.Tensor:
        quant = h if force_not_quantize else self.quantize(h)[0]
        return self.decoder(self.post_quant_conv(quant))


# --------------------------------------------------------------------------------------------------------
# KL autoencoder
# --------------------------------------------------------------------------------------------------------


class AutoencoderKL(AdversarialAutoencoder):
    """``x -> Encoder -> quant_conv -> N(mean, var) -> z -> post_quant_conv -> Decoder -> x̂``.

    ``quant_conv`` maps the encoder's ``2·z_channels`` moments to ``2·embed_dim`` (mean and log-variance);
    the latent ``z`` has ``embed_dim`` channels at ``1/f`` of the image size. ``vae_tiling = (tile, overlap)``
    (set by ``ldm.models.vae_tiling.set_vae_tiling``; None, the default, is off) makes ``decode`` work in tiles.
    """

    def __init__(
        self,
        ddconfig: Mapping[str, Any],
        lossconfig: Mapping[str, Any],
        embed_dim: int,
        ckpt_path: str | None = None,
        ignore_keys: Sequence[str] = (),
        image_key: str = "image",
        colorize_nlabels: int | None = None,
        monitor: str | None = None,
    ) -> None:
        if not ddconfig.get("double_z", True):
            raise ValueError("AutoencoderKL needs ddconfig.double_z: true (the encoder predicts mean and logvar).")
        super().__init__()
        self.embed_dim = embed_dim
        self._build_autoencoder(ddconfig, lossconfig, embed_dim, moments=2)
        self.vae_tiling: tuple[int, int] | None = None
        self._setup_common(image_key, colorize_nlabels, monitor)
        if ckpt_path is not None:
            self.init_from_ckpt(ckpt_path, ignore_keys=ignore_keys)

    def encode(self, x: torch.Tensor) -> DiagonalGaussianDistribution:
        """``(B, C, H, W)`` -> the posterior over ``z (B, embed_dim, H/f, W/f)``."""
        return DiagonalGaussianDistribution(self.quant_conv(self.encoder(x)))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """``z (B, embed_dim, h, w) -> (B, out_ch, h·f, w·f)``, in overlapping tiles when ``vae_tiling`` is set."""
        if self.vae_tiling is None:
            return self.decoder(self.post_quant_conv(z))
        tile, overlap = self.vae_tiling
        factor = 2 ** (self.decoder.num_resolutions - 1)
        return tiled_decode(lambda part: self.decoder(self.post_quant_conv(part)), z, factor, tile, overlap)

    def forward(
        self, input: torch.Tensor, sample_posterior: bool = True
    ) -> tuple[torch.Tensor, DiagonalGaussianDistribution]:
        """``(x̂, posterior)``, decoding a posterior sample (or its mode)."""
        posterior = self.encode(input)
        z = posterior.sample() if sample_posterior else posterior.mode()
        return self.decode(z), posterior

    def training_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> None:
        inputs = self.get_input(batch, self.image_key)
        reconstructions, posterior = self(inputs)

        def loss_fn(optimizer_idx: int) -> tuple[torch.Tensor, Mapping[str, Any]]:
            loss, log = self.loss(inputs, reconstructions, posterior, optimizer_idx, self.global_step,
                                  last_layer=self.get_last_layer(), split="train")
            self.log_dict(log, prog_bar=False, logger=True, on_step=True, on_epoch=False)
            return loss, log

        aeloss, discloss = self._adversarial_step(batch_idx, loss_fn)
        self.log("aeloss", aeloss, prog_bar=True, logger=True, on_step=True, on_epoch=True)
        self.log("discloss", discloss, prog_bar=True, logger=True, on_step=True, on_epoch=True)

    def validation_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> None:
        inputs = self.get_input(batch, self.image_key)
        reconstructions, posterior = self(inputs)
        kwargs = dict(last_layer=self.get_last_layer(), split="val")
        _, log_dict_ae = self.loss(inputs, reconstructions, posterior, 0, self.global_step, **kwargs)
        _, log_dict_disc = self.loss(inputs, reconstructions, posterior, 1, self.global_step, **kwargs)
        self.log_dict(log_dict_ae)
        self.log_dict(log_dict_disc)

    def configure_optimizers(self) -> tuple[list[torch.optim.Optimizer], list]:
        """Adam(lr, β = (0.5, 0.9)) for encoder, decoder and the 1×1 convs, and one for the discriminator (both
        fused where torch can: see :func:`ldm.optim.adam`).

        The loss's learned ``logvar`` is in neither.
        """
        lr = self._learning_rate()
        autoencoder = [self.encoder, self.decoder, self.quant_conv, self.post_quant_conv]
        parameters = [p for m in autoencoder for p in m.parameters()]
        opt_ae = adam(torch.optim.Adam, parameters, lr=lr, betas=(0.5, 0.9))
        opt_disc = adam(torch.optim.Adam, self._discriminator_parameters(), lr=lr, betas=(0.5, 0.9))
        return [opt_ae, opt_disc], []

    @torch.no_grad()
    def log_images(self, batch: Mapping[str, torch.Tensor], only_inputs: bool = False,
                   **kwargs: Any) -> dict[str, torch.Tensor]:
        """``inputs``, ``reconstructions`` and ``samples`` (decoded from ``z ~ N(0, I)``); maps are colorized.

        Random draws, in order: the posterior sample of the reconstruction, one more posterior
        sample (only its shape is used), then ``z``.
        """
        x = self.get_input(batch, self.image_key).to(self.device)
        if only_inputs:
            return {"inputs": x}
        xrec, posterior = self(x)
        samples = self.decode(torch.randn_like(posterior.sample()))
        log = {"inputs": x, "reconstructions": xrec, "samples": samples}
        if x.shape[1] > 3:
            log = {k: self.to_rgb(v) for k, v in log.items()}
        return log


class IdentityFirstStage(torch.nn.Module):
    """A pass-through first stage (diffusion directly in pixel space); ``vq_interface`` mimics VQ's quantize."""

    def __init__(self, *args: Any, vq_interface: bool = False, **kwargs: Any) -> None:
        super().__init__()
        self.vq_interface = vq_interface

    def encode(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return x

    def decode(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return x

    def quantize(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor | tuple:
        if self.vq_interface:
            return x, None, [None, None, None]
        return x

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return x


