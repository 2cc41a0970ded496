"""The Lightning base both first-stage autoencoders share: batch input, checkpoint loading, the GAN step.

Each training batch makes one autoencoder update (``optimizer_idx=0``) and one discriminator update
(``optimizer_idx=1``) with Lightning's manual optimisation. ``trainer.global_step`` counts batches, so
``disc_start`` and ``max_steps`` are batch counts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

from ldm.modules.diffusionmodules.model import Decoder, Encoder
from ldm.util import instantiate_from_config

LossFn = Callable[[int], tuple[torch.Tensor, Mapping[str, Any]]]


class AdversarialAutoencoder(pl.LightningModule):
    """What both autoencoders share: batch input, checkpoint loading and the two-optimizer GAN step.

    ``learning_rate`` is set by ``main.py`` (base rate × GPUs × batch size × accumulation). Because Lightning
    refuses ``Trainer(accumulate_grad_batches>1)`` with manual optimisation, ``main.py`` moves that setting to
    the module's ``accumulate_grad_batches``: gradients of that many batches (each loss divided by their
    number, as Lightning does) are accumulated before each update, and ``global_step`` counts updates.
    """

    image_key: str
    accumulate_grad_batches: int = 1

    def _build_autoencoder(
        self, ddconfig: Mapping[str, Any], lossconfig: Mapping[str, Any], embed_dim: int, moments: int
    ) -> None:
        """``encoder``, ``decoder`` and ``loss`` from their configs, and the 1×1 convs between the encoder's
        ``moments·z_channels`` output and the ``moments·embed_dim`` latent moments (``quant_conv``) and from
        ``embed_dim`` back to the decoder's ``z_channels`` (``post_quant_conv``)."""
        z_channels = ddconfig["z_channels"]
        self.encoder = Encoder(**ddconfig)
        self.decoder = Decoder(**ddconfig)
        self.loss = instantiate_from_config(lossconfig, name="lossconfig")
        self.quant_conv = nn.Conv2d(moments * z_channels, moments * embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(embed_dim, z_channels, 1)

    def _setup_common(self, image_key: str, colorize_nlabels: int | None, monitor: str | None) -> None:
        self.automatic_optimization = False
        self.image_key = image_key
        if colorize_nlabels is not None:
            if not isinstance(colorize_nlabels, int):
                raise TypeError(f"colorize_nlabels must be an int (number of label channels), got {colorize_nlabels!r}")
            self.register_buffer("colorize", torch.randn(3, colorize_nlabels, 1, 1))
        if monitor is not None:
            self.monitor = monitor

    # ---- data and checkpoints ---------------------------------------------------------------------------

    def get_input(self, batch: Mapping[str, torch.Tensor], k: str) -> torch.Tensor:
        """``batch[k]`` as float ``(B, C, H, W)``, contiguous; the datasets give ``(B, H, W, C)`` or ``(B, H, W)``."""
        x = batch[k]
        if x.ndim == 3:
            x = x[..., None]
        return x.permute(0, 3, 1, 2).to(memory_format=torch.contiguous_format).float()

    def init_from_ckpt(self, path: str, ignore_keys: Sequence[str] = ()) -> None:
        """Load weights from a checkpoint (read safely), dropping keys that start with any of ``ignore_keys``."""
        from ldm.checkpoint import apply_state_dict, load_state_dict_file

        state_dict = load_state_dict_file(path, config_key="ckpt_path")
        apply_state_dict(self, state_dict, ignore_keys=ignore_keys, what=f"{type(self).__name__} from {path}")

    def get_last_layer(self) -> torch.Tensor:
        """The decoder's output conv weight: the adaptive GAN weight compares gradients there."""
        return self.decoder.conv_out.weight

    def _check_segmentation(self, x: torch.Tensor) -> None:
        if self.image_key != "segmentation":
            raise ValueError(
                f"to_rgb colorizes segmentation maps only; image_key is {self.image_key!r} and the input has "
                f"{x.shape[1]} channels. Use image_key 'segmentation' or RGB inputs."
            )

    def to_rgb(self, x: torch.Tensor) -> torch.Tensor:
        """Project a segmentation map ``(B, C, H, W)`` to RGB in [-1, 1] with a fixed random 1×1 conv."""
        self._check_segmentation(x)
        if not hasattr(self, "colorize"):  # a fixed random projection, drawn on first use
            self.register_buffer("colorize", torch.randn(3, x.shape[1], 1, 1).to(x))
        rgb = F.conv2d(x, weight=self.colorize)  # (B, 3, H, W)
        low, high = rgb.min(), rgb.max()
        return 2.0 * (rgb - low) / (high - low) - 1.0

    # ---- optimisation -----------------------------------------------------------------------------------

    def _learning_rate(self) -> float:
        rate = getattr(self, "learning_rate", None)
        if rate is None:
            raise AttributeError(
                f"{type(self).__name__}.learning_rate is not set; main.py sets it from model.base_learning_rate. "
                "Set `model.learning_rate = ...` before fitting."
            )
        return rate

    def _discriminator_parameters(self) -> Iterator[torch.nn.Parameter]:
        discriminator = getattr(self.loss, "discriminator", None)
        if discriminator is None:
            raise ValueError(
                f"lossconfig target {type(self.loss).__name__} has no discriminator, so the model cannot be "
                "trained; use ldm.modules.losses.LPIPSWithDiscriminator (KL) or "
                "ldm.modules.losses.vqperceptual.VQLPIPSWithDiscriminator (VQ) as lossconfig."
            )
        return discriminator.parameters()

    def _check_finite(self, loss: torch.Tensor, log: Mapping[str, Any], what: str) -> None:
        if torch.isfinite(loss).all():
            return
        bad = [k for k, v in log.items() if not torch.isfinite(torch.as_tensor(v, dtype=torch.float32)).all()]
        terms = ", ".join(f"{k}={float(torch.as_tensor(log[k]).float().mean())}" for k in bad) or "none logged"
        raise FloatingPointError(
            f"{what} loss is {float(loss.detach().float().mean())} at global step {self.global_step}; "
            f"non-finite terms: {terms}. Lower the learning rate, check the batch for NaN/Inf values, or resume "
            "from an earlier checkpoint."
        )

    def _step_uncounted(self, optimizer: Any) -> None:
        """Step ``optimizer`` without advancing ``trainer.global_step`` (Lightning counts every step).

        Lightning's manual loop counts steps through the LightningOptimizer's ``_on_before_step`` /
        ``_on_after_step`` hooks; they are bypassed for the discriminator so one batch is one global step.
        """
        hooks = getattr(optimizer, "_on_before_step", None), getattr(optimizer, "_on_after_step", None)
        if None in hooks:
            optimizer.step()
            return
        optimizer._on_before_step = optimizer._on_after_step = lambda: None
        try:
            optimizer.step()
        finally:
            optimizer._on_before_step, optimizer._on_after_step = hooks

    def _adversarial_step(self, batch_idx: int, loss_fn: LossFn) -> tuple[torch.Tensor, torch.Tensor]:
        """One autoencoder update (``loss_fn(0)``) then one discriminator update (``loss_fn(1)``).

        Each loss is back-propagated with only its optimizer's parameters trainable (``toggle_optimizer``),
        so the generator loss leaves no gradient on the discriminator and vice versa.
        """
        opt_ae, opt_disc = self.optimizers()
        accumulate = max(1, int(self.accumulate_grad_batches))
        update = (batch_idx + 1) % accumulate == 0 or self.trainer.is_last_batch
        losses = []
        for optimizer_idx, optimizer, what in ((0, opt_ae, "autoencoder"), (1, opt_disc, "discriminator")):
            with self.toggled_optimizer(optimizer):
                loss, log = loss_fn(optimizer_idx)
                self._check_finite(loss, log, what)
                if loss.requires_grad:
                    self.manual_backward(loss / accumulate)
                else:
                    _zero_gradients(optimizer)
                if update:
                    if optimizer_idx == 0:
                        optimizer.step()
                    else:
                        self._step_uncounted(optimizer)
                    optimizer.zero_grad(set_to_none=True)
            losses.append(loss.detach())
        if update:
            self._step_schedulers()
        return losses[0], losses[1]

    def _step_schedulers(self) -> None:
        schedulers = self.lr_schedulers()
        if schedulers is None:
            return
        for scheduler in schedulers if isinstance(schedulers, list) else [schedulers]:
            scheduler.step()


def _zero_gradients(optimizer: Any) -> None:
    """Give every parameter of ``optimizer`` a zero gradient: the update of a loss with no weight yet (the
    discriminator before ``disc_start``), which still advances the optimizer's state."""
    for group in optimizer.param_groups:
        for parameter in group["params"]:
            if parameter.grad is None:
                parameter.grad = torch.zeros_like(parameter)
