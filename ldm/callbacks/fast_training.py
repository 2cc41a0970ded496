"""``FastTrainingConvs``: the diffusion model's large convs run as GEMMs when a fit runs on the CPU.

``main.py`` adds it to the default callbacks (``lightning.callbacks.fast_training``); set its ``enabled: false`` to
train through the reference convs only. The swap (``ldm.modules.fast.gemm_conv.swap_gemm_convs``) keeps every
parameter, module path and state-dict key, so checkpoints, EMA and resumption are unaffected, and the outputs and
gradients equal the reference convs' within float rounding.
"""

from __future__ import annotations

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.utilities import rank_zero_info

from ldm.models.diffusion.ddpm import DDPM
from ldm.modules.fast.gemm_conv import MAX_POSITIONS, MIN_WEIGHT_BYTES, swap_gemm_convs


class FastTrainingConvs(Callback):
    """At ``setup("fit")`` on a CPU device, swaps the convs of a ``DDPM``'s ``model`` (the UNet inside its
    ``DiffusionWrapper``) for ``GemmConv2d`` (thresholds as there). Does nothing on other devices, for other
    stages or modules, or when ``enabled`` is false."""

    def __init__(
        self, enabled: bool = True, max_positions: int = MAX_POSITIONS, min_weight_bytes: int = MIN_WEIGHT_BYTES
    ) -> None:
        super().__init__()
        self.enabled, self.max_positions, self.min_weight_bytes = enabled, max_positions, min_weight_bytes
        self.swapped = 0

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if not self.enabled or stage != "fit" or not isinstance(pl_module, DDPM):
            return
        if trainer.strategy.root_device.type != "cpu":
            return
        self.swapped = swap_gemm_convs(pl_module.model, self.max_positions, self.min_weight_bytes)
        if self.swapped:
            rank_zero_info(
                f"FastTrainingConvs: {self.swapped} convs of the diffusion model (weights >= "
                f"{self.min_weight_bytes / 2**20:.0f} MiB) run as GEMMs at <= {self.max_positions} output positions "
                "(lightning.callbacks.fast_training.params.enabled=false turns this off)"
            )
