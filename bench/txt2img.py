"""txt2img: a whole guided DDIM run (20 steps, 256x256, one prompt, scale 7.5), ours (``LatentDiffusion`` +
``DDIMSampler``) against diffusers' ``StableDiffusionPipeline`` built from the same converted random weights,
from the same starting noise; wall time of the run (text encoding, sampling, decoding) and peak memory. Ours
runs with ``optimize_for_inference(fast_blocks=True, prepack=True)``: the inference blocks swapped in and the
UNet channels-last with prepacked convs, our fastest CPU inference setting."""

from __future__ import annotations

from collections.abc import Callable

import torch

from bench.common import SD_CONFIG, Row, median_times, peak_memory_mb, randomize_
from bench.convert_diffusers import (
    clip_to_diffusers,
    unet_diffusers_config,
    unet_to_diffusers,
    vae_diffusers_config,
    vae_to_diffusers,
)
from ldm.inference import load_config, optimize_for_inference
from ldm.models.diffusion.ddim import DDIMSampler
from ldm.modules.encoders.clip_text import vit_l14_text_config
from ldm.util import instantiate_from_config

PROMPT = "a photograph of an astronaut riding a horse"
STEPS, SIZE, SCALE = 20, 256, 7.5


def _submodule_state(model: torch.nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in model.state_dict().items() if k.startswith(prefix)}


def build_pair(seed: int = 3) -> tuple[torch.nn.Module, object]:
    """Our ``LatentDiffusion`` with random weights and a ``StableDiffusionPipeline`` holding the same weights."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    ours = randomize_(instantiate_from_config(load_config(SD_CONFIG).model), seed)
    unet = UNet2DConditionModel(**unet_diffusers_config(ours.model.diffusion_model))
    unet.load_state_dict(unet_to_diffusers(ours.model.diffusion_model), strict=True)
    vae = AutoencoderKL(**vae_diffusers_config(ours.first_stage_model))
    vae.load_state_dict(vae_to_diffusers(ours.first_stage_model), strict=True)
    text = CLIPTextModel(vit_l14_text_config())
    text.load_state_dict(clip_to_diffusers(_submodule_state(ours, "cond_stage_model."), set(text.state_dict())))
    scheduler = DDIMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        clip_sample=False, set_alpha_to_one=False, steps_offset=1,
    )
    pipe = StableDiffusionPipeline(
        vae=vae.eval(), text_encoder=text.eval(), tokenizer=ours.cond_stage_model.tokenizer, unet=unet.eval(),
        scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return ours, pipe


def run(repeats: int = 1, seed: int = 3) -> list[Row]:
    ours, pipe = build_pair(seed)
    optimize_for_inference(ours, fast_blocks=True, prepack=True)
    sampler = DDIMSampler(ours)
    x_T = torch.randn(1, 4, SIZE // 8, SIZE // 8, generator=torch.Generator().manual_seed(seed))

    def ours_run() -> torch.Tensor:
        c, uc = ours.get_learned_conditioning([PROMPT]), ours.get_learned_conditioning([""])
        samples, _ = sampler.sample(
            S=STEPS, conditioning=c, batch_size=1, shape=(4, SIZE // 8, SIZE // 8), verbose=False,
            unconditional_guidance_scale=SCALE, unconditional_conditioning=uc, eta=0.0, x_T=x_T,
            disable_progress=True,
        )
        return ((ours.decode_first_stage(samples) + 1) / 2).clamp(0, 1)

    def theirs_run() -> torch.Tensor:
        out = pipe(PROMPT, height=SIZE, width=SIZE, num_inference_steps=STEPS, guidance_scale=SCALE,
                   latents=x_T.clone(), output_type="pt")
        return out.images

    step = {"ours": ours_run, "theirs": theirs_run}
    mem: dict[str, float | None] = {}

    def measured(name: str) -> Callable[[], None]:
        def run_once() -> None:
            mem[name] = peak_memory_mb(step[name])
        return run_once

    with torch.no_grad():
        # the first, untimed run of each is the warm-up (our packed convs are laid out for these shapes there)
        images = {name: fn() for name, fn in step.items()}
        diff = (images["ours"] - images["theirs"]).abs().max().item()
        seconds = median_times({name: measured(name) for name in step}, repeats, warmup=0)
    return [Row(f"txt2img DDIM {STEPS} steps, {SIZE}x{SIZE}, scale {SCALE}", seconds["ours"], seconds["theirs"],
                mem["ours"], mem["theirs"], diff,
                note="incl. text encoding and decoding; ours with fast blocks, UNet prepacked")]
