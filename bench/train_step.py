"""Stage-2 training step: our ``LatentDiffusion`` (encoding on the fly, and from a latent cache) against diffusers'
``UNet2DConditionModel`` forward + backward on the same converted weights and the same batch, fp32 on the CPU.

Two widths of Stable Diffusion v1's architecture (the full CLIP ViT-L/14 text tower, 256 px images = 32x32x4
latents, batch 2, no gradient checkpointing on either side, random weights with every layer non-zero):

- SD v1 itself (:data:`SD_V1_WIDTHS`: a 320-channel UNet, the 128-channel autoencoder), ~10 s a step here;
- a reduced width (:data:`REDUCED_WIDTHS`: a 64-channel UNet, 8-wide attention heads, a 32-channel autoencoder)
  that trains a step in about a second and is dominated by the self-attention over 1,024 tokens, the same
  ``scaled_dot_product_attention`` kernel on both sides.

Ours runs as ``main.py`` trains on the CPU: with the default ``FastTrainingConvs`` callback's swap
(``ldm.modules.fast.gemm_conv``; at the reduced width no conv is large enough for it, at SD v1's the 1280-channel
convs are; at SD v1's width the cached step is timed again beside the same step with the swap off, ours alone).
SD v1's rows hold both models with their gradients: about 15 GiB of memory. One timed step is

- ours, on the fly: ``shared_step`` (encode the images and captions, draw z, t, ε, UNet, loss) + ``backward``;
- ours, cached: the same from the batch of ``ldm.data.latent_cache`` (moments and text embeddings stored once);
- diffusers: ``unet(z_t, t, c)`` + MSE to ε + ``backward``, given the noised latents and the embeddings.

The optimizer step is excluded on every side (it is the same AdamW over the same weights); gradients are cleared,
untimed, before each step. Before timing, the two UNets' outputs are asserted equal within 1e-4. The demo config
(``configs/demo/txt2img_ldm.yaml``, batch 64; its text encoder is trained, so only the latents are cached) is
timed the same way, on the fly against cached.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from bench.common import SD_CONFIG, Row, median_times, randomize_
from bench.convert_diffusers import unet_diffusers_config, unet_to_diffusers
from ldm.data.latent_cache import CacheIndex, encode_batch
from ldm.data.shapes import ShapesDataset
from ldm.inference import load_config
from ldm.models.diffusion import cached_inputs
from ldm.modules.fast.gemm_conv import GemmConv2d, swap_gemm_convs
from ldm.util import instantiate_from_config

logger = logging.getLogger(__name__)

TOLERANCE = 1e-4
#: (UNet model_channels, autoencoder ch) of the two widths timed.
SD_V1_WIDTHS = (320, 128)
REDUCED_WIDTHS = (64, 32)
UNET_CHANNELS, VAE_CHANNELS = REDUCED_WIDTHS
IMAGE, BATCH = 256, 2
DEMO_CONFIG = "configs/demo/txt2img_ldm.yaml"
PROMPTS = ["a photograph of an astronaut riding a horse", "a watercolour of a lighthouse at dusk"]


def sd_like_config(unet_channels: int = UNET_CHANNELS, vae_channels: int = VAE_CHANNELS) -> Any:
    """``model:`` of SD v1 at the given widths, the UNet without gradient checkpointing (as diffusers trains)."""
    config = load_config(SD_CONFIG).model
    unet = config.params.unet_config.params
    unet.model_channels, unet.use_checkpoint = unet_channels, False
    OmegaConf.update(unet, "checkpoint_transformers", False, force_add=True)
    config.params.first_stage_config.params.ddconfig.ch = vae_channels
    return config


def cached_batch(model: Any, batch: Mapping[str, Any]) -> dict[str, Any]:
    """The batch a ``LatentCacheDataset`` would give for ``batch`` (float32 cache, conditioning when frozen)."""
    index = CacheIndex(num_samples=1, shard_size=1, first_stage_key=model.first_stage_key,
                       cond_key=model.cond_stage_key, cond=not model.cond_stage_trainable)
    tensors = encode_batch(model, batch, index)
    names = {"moments": cached_inputs.CACHED_MOMENTS, "z": cached_inputs.CACHED_Z, "cond": cached_inputs.CACHED_COND}
    out = {key: value for key, value in batch.items() if key != model.first_stage_key}
    return {**out, **{names[name]: value for name, value in tensors.items()}}


def _training_step(model: Any, batch: Mapping[str, Any]) -> Callable[[], object]:
    def step() -> object:
        loss, _ = model.shared_step(batch)
        loss.backward()
        return loss

    return step


def _clear(module: torch.nn.Module) -> Callable[[], None]:
    return lambda: module.zero_grad(set_to_none=True)


def _gemm_route_switches(module: torch.nn.Module) -> tuple[Callable[[], None], Callable[[], None]]:
    """Two set-ups that clear the gradients and switch every ``GemmConv2d``'s GEMM route on (the threshold it has
    now) or off (the reference conv runs, as with ``FastTrainingConvs`` disabled)."""
    convs = [m for m in module.modules() if isinstance(m, GemmConv2d)]
    thresholds = [m.max_positions for m in convs]

    def switch(on: bool) -> Callable[[], None]:
        def setup() -> None:
            module.zero_grad(set_to_none=True)
            for conv, threshold in zip(convs, thresholds, strict=True):
                conv.max_positions = threshold if on else 0

        return setup

    return switch(True), switch(False)


def build_sd_like(
    seed: int = 0, unet_channels: int = UNET_CHANNELS, vae_channels: int = VAE_CHANNELS
) -> tuple[Any, torch.nn.Module]:
    """Our LatentDiffusion with random weights, and diffusers' UNet with the same UNet weights."""
    from diffusers import UNet2DConditionModel

    ours = randomize_(instantiate_from_config(sd_like_config(unet_channels, vae_channels)), seed)
    unet = ours.model.diffusion_model
    theirs = UNet2DConditionModel(**unet_diffusers_config(unet))
    theirs.load_state_dict(unet_to_diffusers(unet), strict=True)
    return ours.train(), theirs.train()


def _check_equal(ours: Any, theirs: torch.nn.Module, z_t: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> float:
    with torch.no_grad():
        diff = (ours.apply_model(z_t, t, c) - theirs(z_t, t, c).sample).abs().max().item()
    if diff > TOLERANCE:
        raise RuntimeError(f"UNet outputs differ from diffusers' by {diff:.2e} > {TOLERANCE}")
    return diff


def sd_like_rows(repeats: int, seed: int = 0, widths: tuple[int, int] = REDUCED_WIDTHS) -> list[Row]:
    """Ours on the fly and cached, each against diffusers, at ``widths`` (UNet, autoencoder channels)."""
    unet_channels, vae_channels = widths
    ours, theirs = build_sd_like(seed, unet_channels, vae_channels)
    swapped = swap_gemm_convs(ours.model)  # as main.py's default FastTrainingConvs does on the CPU
    gen = torch.Generator().manual_seed(seed)
    raw = {"jpg": torch.rand(BATCH, IMAGE, IMAGE, 3, generator=gen) * 2 - 1, "txt": PROMPTS[:BATCH]}
    cached = cached_batch(ours, raw)
    z, c = ours.get_input(cached, ours.first_stage_key)
    t = torch.randint(0, ours.num_timesteps, (BATCH,), generator=gen)
    noise = torch.randn(z.shape, generator=gen)
    z_t = ours.q_sample(z, t, noise)
    diff = _check_equal(ours, theirs, z_t, t, c)

    def theirs_step() -> object:
        loss = F.mse_loss(theirs(z_t, t, c).sample, noise)
        loss.backward()
        return loss

    (clear_ours, route_off), clear_theirs = _gemm_route_switches(ours), _clear(theirs)
    seconds = median_times({
        "on the fly": (clear_ours, _training_step(ours, raw)),
        "cached": (clear_ours, _training_step(ours, cached)),
        "diffusers": (clear_theirs, theirs_step),
    }, repeats)
    if swapped:  # ours alone, GEMM route on and off in turn
        alone = median_times({"on": (clear_ours, _training_step(ours, cached)),
                              "off": (route_off, _training_step(ours, cached))}, repeats)
        logger.info("train step SD-like %s, ours alone, GEMM route on / off: %s", widths, alone)
    logger.info("train step SD-like %s: %s", widths, seconds)
    name = "SD v1" if widths == SD_V1_WIDTHS else "SD v1 layout"
    label = f"train step {name} ({unet_channels}-ch UNet, {vae_channels}-ch VAE, CLIP-L), {IMAGE} px, batch {BATCH}"
    convs = f"; ours: {swapped} convs as GemmConv2d"
    speedup = seconds["on the fly"] / seconds["cached"]
    return [
        Row(f"{label}, ours on the fly", seconds["on the fly"], seconds["diffusers"], max_abs_diff=diff,
            note=f"forward + backward, no optimizer step; diffusers: UNet only, given z_t and c{convs}"),
        Row(f"{label}, ours cached latents + text", seconds["cached"], seconds["diffusers"], max_abs_diff=diff,
            note=f"{speedup:.2f}x faster than on the fly"),
    ] + ([
        Row(f"{label}, ours alone: cached, GemmConv2d", alone["on"],
            note="steps of ours only, GEMM route on and off in turn"),
        Row(f"{label}, ours alone: cached, reference convs", alone["off"],
            note=f"FastTrainingConvs disabled; the GEMM route takes {alone['on'] / alone['off']:.2f}x this time"),
    ] if swapped else [])


def demo_rows(repeats: int, seed: int = 4) -> list[Row]:
    """The demo config's training step (batch 64), images encoded on the fly against cached latents."""
    config = OmegaConf.load(DEMO_CONFIG)  # its first stage's ckpt_path is ??? (random weights here)
    config.model.params.first_stage_config.params.ckpt_path = None
    torch.manual_seed(seed)
    model = instantiate_from_config(config.model).train()
    size = config.data.params.batch_size
    data = ShapesDataset(size=32, length=size, split="train")
    raw = torch.utils.data.default_collate([data[i] for i in range(size)])
    cached = cached_batch(model, raw)
    clear = _clear(model)
    seconds = median_times({"on the fly": (clear, _training_step(model, raw)),
                            "cached": (clear, _training_step(model, cached))}, repeats)
    logger.info("train step demo: %s", seconds)
    label = f"train step demo txt2img LDM, batch {size}"
    return [
        Row(f"{label}, on the fly", seconds["on the fly"], note="forward + backward, no optimizer step"),
        Row(f"{label}, cached latents", seconds["cached"],
            note=f"{seconds['on the fly'] / seconds['cached']:.2f}x faster than on the fly (text encoder trained)"),
    ]


def run(repeats: int = 5, seed: int = 0) -> list[Row]:
    """Rows of SD v1 and of the reduced width (ours on the fly, ours cached, each against diffusers) and of the
    demo config."""
    rows = sd_like_rows(repeats, seed, SD_V1_WIDTHS)
    return rows + sd_like_rows(repeats, seed, REDUCED_WIDTHS) + demo_rows(repeats)
