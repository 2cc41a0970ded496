"""bench/train_step.py: the cached batch it times is the batch the latent cache gives (tiny model), its config."""

from __future__ import annotations

import torch

from bench import run, train_step
from ldm.data.latent_cache import LatentCacheDataset, write_latent_cache
from ldm.data.shapes import ShapesDataset
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
