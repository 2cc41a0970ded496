"""bench/train_step.py and bench/gemm_conv.py: the cached batch is the latent cache's (tiny model), the configs, the
switch of the GEMM route, a conv row's comparison."""

from __future__ import annotations

import torch

from bench import gemm_conv, run, train_step
from ldm.data.latent_cache import LatentCacheDataset, write_latent_cache
from ldm.data.shapes import ShapesDataset
from ldm.modules.fast.gemm_conv import swap_gemm_convs
from tests.test_latent_cache import IMAGE, build


def test_cached_batch_equals_the_cache_datasets_batch(tmp_path) -> None:
    model = build()
    data = ShapesDataset(size=IMAGE, length=3)
    write_latent_cache(model, data, tmp_path, batch_size=3, shard_size=3)
    raw = torch.utils.data.default_collate([data[i] for i in range(3)])
    from_cache = torch.utils.data.default_collate([LatentCacheDataset(tmp_path)[i] for i in range(3)])
    built = train_step.cached_batch(model, raw)
    assert "image" not in built and built["caption"] == from_cache["caption"]
    for name in ("cached_moments", "cached_cond"):
        torch.testing.assert_close(built[name], from_cache[name], rtol=1e-5, atol=1e-6)


def test_sd_like_config_is_sd_v1_at_smaller_widths() -> None:
    params = train_step.sd_like_config(unet_channels=64, vae_channels=32).params
    unet = params.unet_config.params
    assert (unet.model_channels, unet.use_checkpoint, unet.checkpoint_transformers) == (64, False, False)
    assert list(unet.channel_mult) == [1, 2, 4, 4] and unet.context_dim == 768
    assert params.first_stage_config.params.ddconfig.ch == 32
    assert "train_step" in run.BENCHMARKS


def test_sd_v1_widths_are_the_released_models() -> None:
    params = train_step.sd_like_config(*train_step.SD_V1_WIDTHS).params
    assert params.unet_config.params.model_channels == 320 and params.first_stage_config.params.ddconfig.ch == 128


def test_the_gemm_route_switch_turns_the_swapped_convs_off_and_back_on() -> None:
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 2, 3))
    swap_gemm_convs(model, max_positions=64, min_weight_bytes=0)
    on, off = train_step._gemm_route_switches(model)
    model[0].weight.grad = torch.ones_like(model[0].weight)
    off()
    assert model[0].max_positions == 0 and model[0].weight.grad is None
    on()
    assert model[0].max_positions == 64


def test_gemm_conv_rows_compare_outputs_and_gradients() -> None:
    row = gemm_conv.case_row(8, 16, 3, 2, 4, repeats=1)
    assert row.max_abs_diff < 1e-5 and row.ours_s > 0 and row.theirs_s > 0
    assert "3x3 8->16" in row.benchmark and "32 positions" in row.benchmark
    assert "gemm_conv" in run.BENCHMARKS
