"""The latent cache (ldm/data/latent_cache.py, scripts/cache_latents.py) and training from it
(ldm/models/diffusion/cached_inputs.py): the loss of a cached batch is the loss of encoding it on the fly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open
from torch.utils.data import default_collate

from ldm.data.latent_cache import (
    UNCOND_FILE,
    CacheIndex,
    LatentCacheDataset,
    encode_batch,
    shard_name,
    write_latent_cache,
)
from ldm.data.shapes import ShapesDataset
from ldm.models.diffusion import cached_inputs
from ldm.models.diffusion.conditioning import drop_conditioning
from ldm.util import ConfigError, SettingError, instantiate_from_config

IMAGE = 16


def tiny_ldm_config(**params) -> dict:
    """AutoencoderKL 16 px -> 8x8x4, a one-level UNet with cross-attention, a frozen 1-layer text transformer."""
    return {
        "target": "ldm.models.diffusion.ddpm.LatentDiffusion",
        "params": {
            "timesteps": 100, "linear_start": 0.00085, "linear_end": 0.012, "first_stage_key": "image",
            "cond_stage_key": "caption", "image_size": 8, "channels": 4, "conditioning_key": "crossattn",
            "cond_stage_trainable": False, "scale_factor": 0.5, "use_ema": False, "monitor": None,
            "ucg_training": {"caption": {"p": 0.5, "val": ""}},
            "unet_config": {"target": "ldm.modules.diffusionmodules.openaimodel.UNetModel", "params": {
                "image_size": 8, "in_channels": 4, "out_channels": 4, "model_channels": 32,
                "attention_resolutions": [1], "num_res_blocks": 1, "channel_mult": [1], "num_head_channels": 16,
                "use_spatial_transformer": True, "context_dim": 16, "legacy": False}},
            "first_stage_config": {"target": "ldm.models.autoencoder.AutoencoderKL", "params": {
                "embed_dim": 4, "lossconfig": {"target": "torch.nn.Identity"},
                "ddconfig": {"double_z": True, "z_channels": 4, "resolution": IMAGE, "in_channels": 3, "out_ch": 3,
                             "ch": 32, "ch_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [],
                             "dropout": 0.0}}},
            "cond_stage_config": {"target": "ldm.modules.encoders.modules.BERTEmbedder", "params": {
                "n_embed": 16, "n_layer": 1, "tokenizer": "clip", "vocab_size": 49408, "max_seq_len": 8,
                "device": "cpu"}},
            **params,
        },
    }


def build(**params) -> torch.nn.Module:
    """The tiny model with every weight random and non-zero (the UNet's zero-initialised output conv included, so
    that the loss depends on z and c)."""
    torch.manual_seed(0)
    model = instantiate_from_config(tiny_ldm_config(**params))
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return model.eval()


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return build()


@pytest.fixture(scope="module")
def data() -> ShapesDataset:
    return ShapesDataset(size=IMAGE, length=7, split="train")


@pytest.fixture(scope="module")
def cache(model, data, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cache")
    write_latent_cache(model, data, root, batch_size=3, shard_size=4, limit=6, hflip=True)
    return root


def collate(dataset, rows) -> dict:
    return default_collate([dataset[i] for i in rows])


def seeded_loss(model, batch, seed: int) -> tuple[torch.Tensor, list]:
    """The training step's loss (conditioning dropout, then get_input and p_losses) with the global RNG at ``seed``."""
    torch.manual_seed(seed)
    batch = drop_conditioning(batch, model.ucg_training)
    z, c = model.get_input(batch, model.first_stage_key)
    loss, _ = model(z, c)
    return loss, batch["caption"]


def test_cached_loss_equals_on_the_fly_loss(model, data, cache) -> None:
    """Same batch, same RNG (caption drops, posterior ε, t and diffusion noise): the same loss, dropped captions
    taking the stored embedding of "" exactly as the encoder gives it."""
    rows = [4, 5, 0, 1]  # across both shards
    raw, cached = collate(data, rows), collate(LatentCacheDataset(cache), rows)
    assert cached["caption"] == raw["caption"] and cached_inputs.CACHED_MOMENTS in cached and "image" not in cached
    seed = 5
    loss_raw, captions = seeded_loss(model, raw, seed)
    loss_cached, cached_captions = seeded_loss(model, cached, seed)
    assert cached_captions == captions and "" in captions and any(captions)  # some dropped, some kept
    torch.testing.assert_close(loss_cached, loss_raw, rtol=1e-5, atol=1e-6)
    # The conditioning matters to this model: another seed (other drops, noise and t) gives another loss.
    assert abs(seeded_loss(model, cached, seed + 1)[0] - loss_cached) > 1e-4


def test_get_input_from_cache_matches_encoding(model, data, cache) -> None:
    rows = [0, 1, 2]
    raw, cached = collate(data, rows), collate(LatentCacheDataset(cache), rows)
    raw["caption"][1] = cached["caption"][1] = ""
    outputs = {}
    for name, batch in (("raw", raw), ("cached", cached)):
        torch.manual_seed(3)
        outputs[name] = model.get_input(batch, "image", return_original_cond=True, bs=2)
    (z_raw, c_raw, xc_raw), (z_cached, c_cached, xc_cached) = outputs["raw"], outputs["cached"]
    torch.testing.assert_close(z_cached, z_raw, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(c_cached, c_raw, rtol=1e-5, atol=1e-6)
    assert z_cached.shape == (2, 4, 8, 8) and c_cached.shape == (2, 8, 16)
    assert xc_cached == xc_raw
    with torch.no_grad():
        torch.testing.assert_close(c_cached[1], model.get_learned_conditioning([""])[0], rtol=1e-5, atol=1e-6)


def test_shards_round_trip(model, data, cache) -> None:
    """Shard tensors are the encoder's outputs; captions and labels ride in the metadata; uncond is τ("")."""
    index = CacheIndex.read(cache)
    assert (index.num_samples, index.num_shards, index.cond, index.uncond) == (6, 2, True, True)
    batch = collate(data, range(4, 6))
    x = batch["image"].permute(0, 3, 1, 2)
    with torch.no_grad():
        moments = model.encode_first_stage(x).parameters
        flipped = model.encode_first_stage(x.flip(-1)).parameters
        cond = model.get_learned_conditioning(batch["caption"])
        uncond = model.get_learned_conditioning([""])
    with safe_open(cache / shard_name(1), framework="pt") as shard:
        assert set(shard.keys()) == {"moments", "moments_flipped", "cond"}
        torch.testing.assert_close(shard.get_tensor("moments"), moments, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(shard.get_tensor("moments_flipped"), flipped, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(shard.get_tensor("cond"), cond, rtol=1e-5, atol=1e-6)
    with safe_open(cache / UNCOND_FILE, framework="pt") as stored:
        torch.testing.assert_close(stored.get_tensor("uncond"), uncond, rtol=1e-5, atol=1e-6)
    item = LatentCacheDataset(cache)[5]
    assert item["caption"] == data[5]["caption"] and item["class_label"] == data[5]["class_label"]
    assert item[cached_inputs.CACHED_UNCOND_VALUE] == ""
    assert torch.equal(item[cached_inputs.CACHED_MOMENTS], shard_tensor(cache, 1, "moments")[1])


def shard_tensor(root: Path, k: int, name: str) -> torch.Tensor:
    with safe_open(root / shard_name(k), framework="pt") as shard:
        return shard.get_tensor(name)


def test_random_flip_draws_either_orientation(cache) -> None:
    dataset = LatentCacheDataset(cache, random_flip=True)
    plain, mirrored = shard_tensor(cache, 0, "moments")[2], shard_tensor(cache, 0, "moments_flipped")[2]
    torch.manual_seed(0)
    drawn = [dataset[2][cached_inputs.CACHED_MOMENTS] for _ in range(16)]
    assert {torch.equal(d, plain) for d in drawn} == {True, False}
    assert all(torch.equal(d, plain) or torch.equal(d, mirrored) for d in drawn)


def test_fp16_cache_is_close_to_fp32(model, data, cache, tmp_path) -> None:
    write_latent_cache(model, data, tmp_path, batch_size=4, shard_size=4, limit=4, fp16=True)
    half = shard_tensor(tmp_path, 0, "moments")
    assert half.dtype == torch.float16
    torch.testing.assert_close(half.float(), shard_tensor(cache, 0, "moments"), rtol=2e-3, atol=2e-3)


def test_resume_writes_only_the_missing_shards(model, data, tmp_path, monkeypatch) -> None:
    write_latent_cache(model, data, tmp_path, batch_size=3, shard_size=3, limit=7)
    assert CacheIndex.read(tmp_path).num_shards == 3
    before = {k: shard_tensor(tmp_path, k, "moments") for k in range(3)}
    (tmp_path / shard_name(1)).unlink()
    with pytest.raises(ConfigError, match="incomplete"):
        LatentCacheDataset(tmp_path)
    encoded = []

    def counting(model_, batch, index):
        encoded.append(len(batch["caption"]))
        return encode_batch(model_, batch, index)

    monkeypatch.setattr("ldm.data.latent_cache.encode_batch", counting)
    write_latent_cache(model, data, tmp_path, batch_size=3, shard_size=3, limit=7)
    assert encoded == [3]  # shard 1 only
    assert all(torch.equal(shard_tensor(tmp_path, k, "moments"), before[k]) for k in range(3))
    assert len(LatentCacheDataset(tmp_path)) == 7
    with pytest.raises(SettingError, match="other settings"):
        write_latent_cache(model, data, tmp_path, batch_size=3, shard_size=2, limit=7)


def test_scale_by_std_measures_the_cached_latents(data, cache) -> None:
    rows = [0, 1, 2, 3]
    factors = []
    for batch in (collate(data, rows), collate(LatentCacheDataset(cache), rows)):
        model = build(scale_by_std=True, scale_factor=1.0)
        torch.manual_seed(9)
        model.on_train_batch_start(batch, 0)
        factors.append(float(model.scale_factor))
    assert factors[0] != 1.0
    assert factors[1] == pytest.approx(factors[0], rel=1e-5)


def test_dropout_value_must_match_the_cache(cache) -> None:
    model = build(ucg_training={"caption": {"p": 0.5, "val": "nothing"}})
    with pytest.raises(SettingError, match="--uncond_value 'nothing'"):
        model.get_input(collate(LatentCacheDataset(cache), [0, 1]), "image")


def test_script_writes_a_cache_that_trains(tmp_path) -> None:
    """scripts/cache_latents.py on a training config; the cache then feeds LatentDiffusion's training step."""
    from scripts.cache_latents import main

    config = {"model": tiny_ldm_config(),
              "data": {"target": "main.DataModuleFromConfig", "params": {"batch_size": 2, "train": {
                  "target": "ldm.data.shapes.ShapesDataset", "params": {"size": IMAGE, "length": 50}}}}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    out = tmp_path / "cache"
    main(["--config", str(path), "--out", str(out), "--limit", "3", "--fp16", "model.params.scale_factor=0.3"])
    index = CacheIndex.read(out)
    assert (index.num_samples, index.dtype, index.cond_key) == (3, "float16", "caption")
    model = build()
    loss, _ = model.shared_step(collate(LatentCacheDataset(out), [0, 1, 2]))
    assert torch.isfinite(loss)


def test_image_logs_from_a_cached_batch(model, cache) -> None:
    """The image logger's get_input call works without images: inputs = reconstructions = decoded cached latents."""
    batch = collate(LatentCacheDataset(cache), [0, 1])
    logs = model.log_images(batch, N=2, n_row=2, ddim_steps=2, inpaint=False, plot_progressive_rows=False,
                            plot_diffusion_rows=False)
    assert logs["inputs"].shape == (2, 3, IMAGE, IMAGE) and torch.equal(logs["inputs"], logs["reconstruction"])
    assert logs["samples"].shape == (2, 3, IMAGE, IMAGE) and logs["conditioning"].shape[0] == 2
