"""``lightning.trainer.strategy: fsdp`` for latent diffusion: Lightning's ``FSDPStrategy`` with every UNet block its
own FSDP unit.

FSDP shards parameters, gradients and AdamW moments across the ranks; a block's parameters are gathered only while
it runs. Units (the auto-wrap policy): ``ResBlock``, ``SpatialTransformer`` and ``BasicTransformerBlock``; the rest
(the UNet's time embedding and first/last layers, the frozen autoencoder and text encoder) lives in the root unit,
gathered for the whole training step. Options in ``lightning.fsdp`` (all optional)::

    lightning:
      trainer: {strategy: fsdp, accelerator: gpu, devices: 8, precision: bf16-mixed}
      fsdp:
        activation_checkpointing: false   # wrap every unit in torch's checkpoint_wrapper (the blocks' own
                                          # use_checkpoint / checkpoint_transformers are then switched off)
        sharding_strategy: FULL_SHARD     # or SHARD_GRAD_OP, HYBRID_SHARD (shard within a node), NO_SHARD
        cpu_offload: false
        state_dict_type: full             # checkpoints as one file with the usual keys (sharded: a folder)

Decisions: ``use_orig_params=True`` (the frozen and trainable parameters of the root unit share one flat
parameter); mixed precision computes in bf16/fp16 but keeps buffers (the diffusion schedule) in float32 and reduces
gradients in float32; the EMA (``LitEma``, a full unsharded copy of the UNet) is refused under FSDP
(:func:`check_fsdp_model`), and the batch image logger is switched off (its sampling would need every parameter on
every rank); ``ldm.callbacks.prompt_images.FixedPromptImageLogger`` samples under ``summon_full_params``.
FSDP needs CUDA GPUs (torch's FSDP refuses the CPU).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from pytorch_lightning.strategies import FSDPStrategy
from torch.distributed.fsdp import MixedPrecision, ShardingStrategy
from torch.distributed.fsdp.wrap import ModuleWrapPolicy

from ldm.callbacks.image_logger import ImageLogger
from ldm.cli.errors import UsageError
from ldm.modules.attention import BasicTransformerBlock, SpatialTransformer
from ldm.modules.diffusionmodules.openaimodel import ResBlock

logger = logging.getLogger(__name__)

#: The strategy name in ``lightning.trainer.strategy`` that selects :class:`LatentDiffusionFSDPStrategy`.
FSDP_NAME = "fsdp"
#: The UNet blocks that become FSDP units (and activation-checkpointing units).
UNET_BLOCKS: tuple[type[torch.nn.Module], ...] = (ResBlock, SpatialTransformer, BasicTransformerBlock)
#: ``lightning.fsdp`` keys and their defaults.
FSDP_OPTIONS: dict[str, Any] = {
    "activation_checkpointing": False, "sharding_strategy": "FULL_SHARD", "cpu_offload": False,
    "state_dict_type": "full",
}
_HALF = {"16-mixed": torch.float16, "bf16-mixed": torch.bfloat16, "16-true": torch.float16,
         "bf16-true": torch.bfloat16}


def unet_wrap_policy() -> ModuleWrapPolicy:
    """Every :data:`UNET_BLOCKS` instance its own FSDP unit."""
    return ModuleWrapPolicy(set(UNET_BLOCKS))


class LatentDiffusionFSDPStrategy(FSDPStrategy):
    """``FSDPStrategy`` with the UNet-block wrap policy, ``use_orig_params`` and float32 buffers and gradient
    reduction under mixed precision.

    :param activation_checkpointing: recompute each unit's activations in the backward pass (torch's
        ``checkpoint_wrapper``) instead of the blocks' own checkpointing.
    :param sharding_strategy: a ``torch.distributed.fsdp.ShardingStrategy`` name.
    :param cpu_offload: keep the sharded parameters (and their gradients) in host memory.
    :param state_dict_type: ``"full"`` (one checkpoint file, gathered on rank 0) or ``"sharded"``.
    """

    def __init__(
        self,
        activation_checkpointing: bool = False,
        sharding_strategy: str = "FULL_SHARD",
        cpu_offload: bool = False,
        state_dict_type: str = "full",
        **kwargs: Any,
    ) -> None:
        policy = unet_wrap_policy()
        super().__init__(
            auto_wrap_policy=policy,
            activation_checkpointing_policy=unet_wrap_policy() if activation_checkpointing else None,
            sharding_strategy=ShardingStrategy[sharding_strategy],
            cpu_offload=cpu_offload,
            state_dict_type=state_dict_type,
            use_orig_params=True,
            **kwargs,
        )
        self.activation_checkpointing = activation_checkpointing

    @property
    def mixed_precision_config(self) -> MixedPrecision | None:
        """Lightning's choice for the precision, except that buffers stay float32 (the schedule buffers
        ``alphas_cumprod`` ... lose digits in half precision) and gradients are reduced in float32."""
        config = super().mixed_precision_config
        if config is None or config.param_dtype not in (torch.float16, torch.bfloat16):
            return config
        return MixedPrecision(param_dtype=config.param_dtype, reduce_dtype=torch.float32, buffer_dtype=torch.float32)

    def _setup_model(self, model: torch.nn.Module) -> torch.nn.Module:
        if self.activation_checkpointing:
            switch_off_block_checkpointing(model)
        return super()._setup_model(model)


def switch_off_block_checkpointing(model: torch.nn.Module) -> int:
    """Turn off the UNet blocks' own gradient checkpointing (FSDP's checkpoint wrapper takes over); returns how many
    blocks were switched."""
    count = 0
    for module in model.modules():
        if isinstance(module, ResBlock) and module.use_checkpoint:
            module.use_checkpoint, count = False, count + 1
        elif isinstance(module, BasicTransformerBlock) and module.checkpoint:
            module.checkpoint, count = False, count + 1
    return count


def fsdp_options(lightning_config: Mapping[str, Any]) -> dict[str, Any]:
    """``lightning.fsdp`` over :data:`FSDP_OPTIONS`; an unknown key or sharding strategy is a :class:`UsageError`."""
    given = dict(lightning_config.get("fsdp") or {})
    unknown = sorted(set(given) - set(FSDP_OPTIONS))
    if unknown:
        raise UsageError(f"lightning.fsdp.{unknown[0]} is not an FSDP option; known: {sorted(FSDP_OPTIONS)}")
    options = {**FSDP_OPTIONS, **given}
    if options["sharding_strategy"] not in ShardingStrategy.__members__:
        raise UsageError(f"lightning.fsdp.sharding_strategy={options['sharding_strategy']!r} is not one of "
                         f"{sorted(ShardingStrategy.__members__)}")
    if options["state_dict_type"] not in ("full", "sharded"):
        raise UsageError(f"lightning.fsdp.state_dict_type={options['state_dict_type']!r}: use 'full' or 'sharded'")
    return options


def wants_fsdp(trainer_kwargs: Mapping[str, Any]) -> bool:
    """Whether ``lightning.trainer.strategy`` names FSDP."""
    return trainer_kwargs.get("strategy") == FSDP_NAME


def check_fsdp_model(model: torch.nn.Module, trainer_kwargs: Mapping[str, Any]) -> None:
    """:class:`UsageError` for what FSDP cannot train here: an EMA copy, or no GPU accelerator."""
    if getattr(model, "use_ema", False):
        raise UsageError("lightning.trainer.strategy=fsdp keeps no EMA (LitEma holds a full, unsharded copy of the "
                         "UNet on every rank); set model.params.use_ema=false (and reset_ema=false), or use "
                         "strategy=ddp to keep the EMA.")
    if trainer_kwargs.get("accelerator") not in ("gpu", "cuda"):
        raise UsageError("lightning.trainer.strategy=fsdp needs CUDA GPUs (torch's FSDP refuses the CPU); set "
                         "lightning.trainer.accelerator=gpu, or use strategy=ddp.")


def fsdp_strategy(model: torch.nn.Module, trainer_kwargs: Mapping[str, Any],
                  lightning_config: Mapping[str, Any]) -> LatentDiffusionFSDPStrategy:
    """The strategy for ``strategy: fsdp``, after :func:`check_fsdp_model`, with the ``lightning.fsdp`` options."""
    check_fsdp_model(model, trainer_kwargs)
    options = fsdp_options(lightning_config)
    logger.info("FSDP: UNet blocks (%s) as units, %s", ", ".join(c.__name__ for c in UNET_BLOCKS), options)
    return LatentDiffusionFSDPStrategy(**options)


def adapt_callbacks(callbacks: Iterable[Any]) -> None:
    """Switch off the batch :class:`ImageLogger` (its ``log_images`` would run the UNet outside the FSDP forward,
    on sharded parameters)."""
    for callback in callbacks:
        if type(callback) is ImageLogger and not callback.disabled:
            callback.disabled = True
            logger.warning("FSDP: the batch image logger is off (sharded weights); use "
                           "ldm.callbacks.prompt_images.FixedPromptImageLogger for samples during training.")
