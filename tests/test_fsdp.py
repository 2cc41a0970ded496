"""``lightning.trainer.strategy: fsdp`` (ldm/cli/fsdp.py): the wrap policy, the strategy main.py builds, and its
refusals. torch's FSDP refuses the CPU, so the sharded training itself is checked on GPUs only (docs/training.md
has the recipe); these tests check what can be checked without one."""

from __future__ import annotations

import types
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from pytorch_lightning.plugins.precision import FSDPPrecision
from torch.distributed.fsdp import ShardingStrategy

import main
from ldm.callbacks import ImageLogger
from ldm.callbacks.prompt_images import FixedPromptImageLogger
from ldm.cli.errors import UsageError
from ldm.cli.fsdp import (
    UNET_BLOCKS,
    LatentDiffusionFSDPStrategy,
    adapt_callbacks,
    check_fsdp_model,
    fsdp_options,
    switch_off_block_checkpointing,
    unet_wrap_policy,
    wants_fsdp,
)
from ldm.modules.attention import BasicTransformerBlock
from ldm.modules.diffusionmodules.openaimodel import ResBlock
from ldm.util import instantiate_from_config
from tests.test_prompt_images import TINY_TXT2IMG

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def unet() -> torch.nn.Module:
    return instantiate_from_config(OmegaConf.create(TINY_TXT2IMG["params"]["unet_config"]))


def test_the_policy_makes_every_unet_block_a_unit_and_nothing_else(unet) -> None:
    wrapped = unet_wrap_policy()._run_policy(unet, ignored_modules=set(), root_kwargs={})
    blocks = [m for m in unet.modules() if isinstance(m, UNET_BLOCKS)]
    assert set(wrapped) == set(blocks)
    kinds = sorted({type(m).__name__ for m in wrapped})
    assert kinds == ["BasicTransformerBlock", "ResBlock", "SpatialTransformer"]
    # the root unit keeps the time embedding, the input conv, the resampling convs and the output layer
    inside = {id(p) for m in blocks for p in m.parameters()}
    outside = [n for n, p in unet.named_parameters() if id(p) not in inside]
    resampling = {f"{n}.{k}" for n, m in unet.named_modules() if type(m).__name__ in ("Downsample", "Upsample")
                  for k, _ in m.named_parameters()}
    assert outside and all(n.startswith(("time_embed.", "input_blocks.0.", "out.")) or n in resampling
                           for n in outside)


def test_the_strategy_carries_the_policy_and_the_options() -> None:
    strategy = LatentDiffusionFSDPStrategy(activation_checkpointing=True, sharding_strategy="HYBRID_SHARD",
                                           state_dict_type="sharded")
    assert isinstance(strategy.kwargs["auto_wrap_policy"], type(unet_wrap_policy()))
    assert strategy.kwargs["use_orig_params"] is True
    assert strategy.sharding_strategy is ShardingStrategy.HYBRID_SHARD
    assert strategy._state_dict_type == "sharded"
    assert "auto_wrap_policy" in strategy._activation_checkpointing_kwargs
    plain = LatentDiffusionFSDPStrategy()
    assert plain._activation_checkpointing_kwargs == {} and plain.sharding_strategy is ShardingStrategy.FULL_SHARD


@pytest.mark.parametrize(("precision", "param_dtype"), [("bf16-mixed", torch.bfloat16), ("16-mixed", torch.float16),
                                                        ("32-true", torch.float32)])
def test_mixed_precision_keeps_buffers_and_reduction_in_float32(precision: str, param_dtype: torch.dtype) -> None:
    strategy = LatentDiffusionFSDPStrategy()
    strategy.precision_plugin = FSDPPrecision(precision)
    config = strategy.mixed_precision_config
    assert (config.param_dtype, config.reduce_dtype, config.buffer_dtype) == (param_dtype, torch.float32,
                                                                               torch.float32)


def test_fsdp_activation_checkpointing_replaces_the_blocks_own(unet) -> None:
    flags = [m.use_checkpoint for m in unet.modules() if isinstance(m, ResBlock)]
    flags += [m.checkpoint for m in unet.modules() if isinstance(m, BasicTransformerBlock)]
    assert all(flags)
    assert switch_off_block_checkpointing(unet) == len(flags)
    assert not any(m.use_checkpoint for m in unet.modules() if isinstance(m, ResBlock))
    assert not any(m.checkpoint for m in unet.modules() if isinstance(m, BasicTransformerBlock))


def test_options_come_from_lightning_fsdp() -> None:
    assert wants_fsdp({"strategy": "fsdp"}) and not wants_fsdp({"strategy": "ddp"}) and not wants_fsdp({})
    options = fsdp_options(OmegaConf.create({"fsdp": {"activation_checkpointing": True}}))
    assert options == {"activation_checkpointing": True, "sharding_strategy": "FULL_SHARD", "cpu_offload": False,
                       "state_dict_type": "full"}
    with pytest.raises(UsageError, match="lightning.fsdp.shard is not an FSDP option"):
        fsdp_options({"fsdp": {"shard": 1}})
    with pytest.raises(UsageError, match="sharding_strategy='FULL'"):
        fsdp_options({"fsdp": {"sharding_strategy": "FULL"}})


def test_ema_and_cpu_are_refused_with_the_fix() -> None:
    with pytest.raises(UsageError, match="keeps no EMA.*model.params.use_ema=false"):
        check_fsdp_model(types.SimpleNamespace(use_ema=True), {"accelerator": "gpu"})
    with pytest.raises(UsageError, match="needs CUDA GPUs.*accelerator=gpu"):
        check_fsdp_model(types.SimpleNamespace(use_ema=False), {"accelerator": "cpu"})
    check_fsdp_model(types.SimpleNamespace(use_ema=False), {"accelerator": "gpu"})


def test_the_batch_image_logger_is_switched_off_and_fixed_prompts_stay() -> None:
    batch_logger = ImageLogger(batch_frequency=10, max_images=2)
    fixed = FixedPromptImageLogger(prompts=["a cat"])
    adapt_callbacks([batch_logger, fixed])
    assert batch_logger.disabled and fixed.every_n_steps == 500


def test_main_refuses_fsdp_on_the_cpu_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    images = tmp_path / "images"
    images.mkdir()
    from PIL import Image

    Image.new("RGB", (8, 8)).save(images / "a.png")
    argv = ["-b", str(ROOT / "tests" / "configs" / "toy_autoencoder.yaml"), "-t", "-l", str(tmp_path / "logs"),
            "--strategy", "fsdp", "--accelerator", "cpu", f"data.params.train.params.root={images}",
            f"data.params.validation.params.root={images}"]
    assert main.main(argv) == 2
    assert "strategy=fsdp needs CUDA GPUs" in capsys.readouterr().err
