"""LoRA fine-tuning of a latent diffusion model: the base weights frozen, only low-rank adapters trained.

Every adapted layer computes ``W x + (α / r) · U D x`` (:mod:`ldm.lora.adapters`, peft), so the loss, sampling
and logging are LatentDiffusion's own; only the optimiser's parameters (U, D) and the checkpoints differ. Each
checkpoint Lightning saves is accompanied by the adapters as a kohya-layout LoRA file,
``<checkpoint folder>/lora.safetensors``, which ``--lora`` (scripts/txt2img.py, img2img.py) and
scripts/merge_lora.py apply to the base model.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ldm.checkpoint import apply_state_dict, load_state_dict_file
from ldm.lora.adapters import (
    LoraSettings,
    adapter_parameters,
    base_model_version,
    inject_lora,
    kohya_layers,
    kohya_metadata,
)
from ldm.lora.files import write_lora
from ldm.models.diffusion.latent_diffusion import LatentDiffusion
from ldm.modules.ema import LitEma

logger = logging.getLogger(__name__)

LORA_FILE_NAME = "lora.safetensors"


class LoraLatentDiffusion(LatentDiffusion):
    """``LatentDiffusion`` (all its parameters) whose weights, read from ``ckpt_path``, stay frozen while LoRA
    adapters chosen by ``lora_config`` (:class:`~ldm.lora.adapters.LoraSettings`: ``rank``, ``alpha``, ``dropout``,
    ``targets``, ``text_encoder``, ``text_encoder_targets``) are trained. With ``use_ema`` the EMA follows the
    UNet's adapters. ``lora_file_name``: the LoRA file written beside each checkpoint (None: none).
    ``ema_base``: the UNet starts from the checkpoint's EMA weights where it has them (``model_ema.*``: the weights
    the sampling scripts use, so the LoRA is trained on the model it will be applied to), else from its raw ones.
    """

    def __init__(self, *args: Any, lora_config: Any = None, lora_file_name: str | None = LORA_FILE_NAME,
                 ema_base: bool = True, **kwargs: Any) -> None:
        self.lora_settings = LoraSettings.from_config(lora_config)
        self.ema_base = ema_base
        ckpt_path = kwargs.get("ckpt_path")
        super().__init__(*args, **kwargs)
        self.lora_layers = inject_lora(self, self.lora_settings)
        logger.info("%s: LoRA rank %d on %d layers, %d trainable parameters", type(self).__name__,
                    self.lora_settings.rank, len(self.lora_layers), sum(p.numel() for p in adapter_parameters(self)))
        if self.use_ema:
            self.model_ema = LitEma(self.model)
        self.lora_file_name = lora_file_name
        self.base_model_name = Path(ckpt_path).name if ckpt_path else ""

    def init_from_ckpt(self, path: str | Path, ignore_keys: Sequence[str] = (), only_model: bool = False) -> None:
        """The base weights (non-strict, as LatentDiffusion reads them), with the EMA UNet weights swapped in when
        ``ema_base`` and the file has them."""
        state_dict = load_state_dict_file(path, use_ema=self.ema_base, config_key="model.params.ckpt_path")
        target = self.model if only_model else self
        self._fit_checkpoint(state_dict, target)
        apply_state_dict(target, state_dict, ignore_keys=tuple(ignore_keys), strict=False,
                         what=f"{type(self).__name__} base from {path}")

    def _optimized_parameters(self) -> list[torch.Tensor]:
        """The adapters' U and D only (and ``logvar`` when learned)."""
        params = adapter_parameters(self)
        if self.learn_logvar:
            params.append(self.logvar)
        return params

    def export_lora(self, path: str | Path, dtype: torch.dtype | None = None) -> None:
        """Write the adapters to ``path`` as a kohya-layout LoRA file with kohya's ``ss_*`` metadata."""
        metadata = kohya_metadata(self.lora_settings, base_model_version(self), self.base_model_name)
        write_lora(path, kohya_layers(self), metadata, dtype=dtype)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Beside the checkpoint, the adapters as ``<checkpoint folder>/<lora_file_name>`` (rank 0 only)."""
        super().on_save_checkpoint(checkpoint)
        trainer = self._trainer
        callback = getattr(trainer, "checkpoint_callback", None) if trainer is not None else None
        folder = getattr(callback, "dirpath", None)
        if self.lora_file_name is None or folder is None or not trainer.is_global_zero:
            return
        path = Path(folder) / self.lora_file_name
        self.export_lora(path)
        logger.info("LoRA adapters written to %s", path)
