"""The SD 2.x model classes (inpainting, depth, x4 upscaling, unCLIP), the ``*-adm`` conditioning keys and the
checkpoint options ``make_it_fit`` / ``finetune_keys`` / ``reset_ema`` on tiny models (tests/sd2_fakes.py).

Conditionings are checked against their definitions recomputed from the same random draws (one seed, the
original's draw order), training steps for finite losses and gradients on the UNet only, sampling for running
with dict conditionings and guidance. The full-size key/shape checks are tests/test_sd2_configs.py.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ldm.models.diffusion import ddpm
from ldm.models.diffusion.ddim import DDIMSampler
from ldm.models.diffusion.diffusion_wrapper import DiffusionWrapper
from ldm.models.diffusion.finetune_diffusion import FINETUNE_KEYS, binarize_mask, masked_image, normalize_depth
from ldm.models.diffusion.weight_fitting import tile_to_shape
from ldm.modules.diffusionmodules.upscaling import LOW_SCALE_BUFFERS
from ldm.modules.diffusionmodules.util import timestep_embedding
from ldm.util import SettingError
from tests import sd2_fakes
from tests.fakes import RecordingUNet, unet

B = 2


def images(seed: int, size: int = 16, channels: int = 3) -> torch.Tensor:
    """Channel-last images ``(B, size, size, channels)`` in [-1, 1]."""
    return torch.rand(B, size, size, channels, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def latents(model, x_channels_last: torch.Tensor) -> torch.Tensor:
    """z = scale_factor · a posterior draw of the image (one randn draw, as ``get_input`` makes it)."""
    x = x_channels_last.permute(0, 3, 1, 2).contiguous()
    return model.get_first_stage_encoding(model.encode_first_stage(x))


def unet_only_gradients(model) -> None:
    """After backward: every UNet parameter has a finite gradient; nothing outside the UNet requires one."""
    for name, param in model.named_parameters():
        if name.startswith("model."):
            assert param.grad is not None and torch.isfinite(param.grad).all(), name
        else:
            assert not param.requires_grad, name


# --------------------------------------------------------------------------------------------------------
# DiffusionWrapper: the conditioning keys
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "channels", "context", "y"),
    [("hybrid-adm", 6, True, "c_adm"), ("crossattn-adm", 4, True, "c_adm"), ("adm", 4, False, "c_crossattn")],
)
def test_adm_keys_route_each_input_where_the_original_does(key, channels, context, y):
    wrapper = DiffusionWrapper(unet(RecordingUNet), key)
    x, concat = torch.randn(B, 4, 8, 8), torch.randn(B, 2, 8, 8)
    tokens, adm = [torch.randn(B, 3, 5), torch.randn(B, 2, 5)], torch.randn(B, 7)
    wrapper(x, torch.tensor([1, 2]), c_concat=[concat], c_crossattn=tokens if key != "adm" else [adm], c_adm=adm)
    seen = wrapper.diffusion_model.seen
    assert seen["x"].shape[1] == channels
    torch.testing.assert_close(seen["x"][:, :4], x, rtol=0, atol=0)
    if channels == 6:
        torch.testing.assert_close(seen["x"][:, 4:], concat, rtol=0, atol=0)
    if context:
        torch.testing.assert_close(seen["context"], torch.cat(tokens, 1), rtol=0, atol=0)
    else:
        assert "context" not in seen
    assert seen["y"] is adm


def test_a_missing_input_names_the_dict_the_key_needs():
    wrapper = DiffusionWrapper(unet(RecordingUNet), "hybrid-adm")
    with pytest.raises(ValueError, match=r"hybrid-adm.*\['c_adm'\] not given"):
        wrapper(torch.randn(1, 4, 2, 2), torch.tensor([0]), c_concat=[torch.randn(1, 1, 2, 2)],
                c_crossattn=[torch.randn(1, 3, 5)])


def test_sequential_crossattn_hands_the_list_to_the_unet():
    config = {**unet(RecordingUNet), "sequential_crossattn": True}
    wrapper = DiffusionWrapper(config, "crossattn")
    tokens = [torch.randn(1, 3, 5), torch.randn(1, 2, 5)]
    wrapper(torch.randn(1, 4, 2, 2), torch.tensor([0]), c_crossattn=tokens)
    assert isinstance(wrapper.diffusion_model.seen["context"], list)
    assert "sequential_crossattn" in config  # the caller's config is left alone


# --------------------------------------------------------------------------------------------------------
# Inpainting
# --------------------------------------------------------------------------------------------------------


def inpaint_batch(seed: int = 0) -> dict:
    image = images(seed)
    mask = binarize_mask(torch.rand(B, 16, 16, 1, generator=torch.Generator().manual_seed(seed + 1)))
    return {"jpg": image, "txt": ["a cat", "a dog"], "mask": mask, "masked_image": masked_image(image, mask)}


def test_masked_image_zeroes_exactly_the_region_to_repaint():
    image = torch.randn(1, 3, 4, 4)
    mask = torch.rand(1, 1, 4, 4)
    out = masked_image(image, mask)
    repaint = (mask >= 0.5).expand_as(image)
    assert (out[repaint] == 0).all() and torch.equal(out[~repaint], image[~repaint])
    assert set(binarize_mask(mask).unique().tolist()) <= {0.0, 1.0}


def test_inpainting_concat_is_the_resized_mask_then_the_encoded_masked_image():
    model = ddpm.LatentInpaintDiffusion(**sd2_fakes.inpaint_params())
    batch = inpaint_batch()
    torch.manual_seed(3)
    z, cond = model.get_input(batch, "jpg")
    torch.manual_seed(3)
    z_ref = latents(model, batch["jpg"])
    masked_ref = latents(model, batch["masked_image"])
    c_cat = cond["c_concat"][0]
    assert c_cat.shape == (B, 5, 8, 8) and set(cond) == {"c_concat", "c_crossattn"}
    torch.testing.assert_close(z, z_ref, rtol=0, atol=0)
    torch.testing.assert_close(c_cat[:, :1], batch["mask"].permute(0, 3, 1, 2)[:, :, ::2, ::2], rtol=0, atol=0)
    torch.testing.assert_close(c_cat[:, 1:], masked_ref, rtol=0, atol=0)
    torch.testing.assert_close(cond["c_crossattn"][0], model.cond_stage_model(batch["txt"]))


def test_inpainting_trains_the_unet_only_and_samples_with_guidance():
    torch.manual_seed(0)
    model = ddpm.LatentInpaintDiffusion(**sd2_fakes.inpaint_params())
    model.train()
    loss, logs = model.shared_step(inpaint_batch())
    assert torch.isfinite(loss) and set(logs) >= {"train/loss_simple", "train/loss"}
    loss.backward()
    unet_only_gradients(model)

    model.eval()
    _, cond = model.get_input(inpaint_batch(), "jpg")
    uncond = {"c_concat": cond["c_concat"], "c_crossattn": [model.get_unconditional_conditioning(B, [""])]}
    samples, _ = DDIMSampler(model).sample(4, B, (4, 8, 8), cond, verbose=False, eta=1.0,
                                           unconditional_guidance_scale=4.0, unconditional_conditioning=uncond)
    assert samples.shape == (B, 4, 8, 8) and torch.isfinite(samples).all()
    log = model.log_images(inpaint_batch(), N=2, ddim_steps=2, unconditional_guidance_scale=3.0)
    assert {"samples", "samples_cfg_scale_3.00", "masked_image", "diffusion_row"} <= set(log)


def test_finetune_widens_the_first_conv_with_zeros_beyond_the_checkpoint_channels(tmp_path):
    torch.manual_seed(0)
    text_to_image = ddpm.LatentDiffusion(**sd2_fakes.common(conditioning_key="crossattn",
                                                             unet_config=sd2_fakes.unet(4)))
    state = text_to_image.state_dict()
    torch.save({"state_dict": state}, tmp_path / "t2i.ckpt")
    with pytest.raises(SettingError, match="ckpt_path"):
        ddpm.LatentInpaintDiffusion(**{**sd2_fakes.inpaint_params(), "finetune_keys": FINETUNE_KEYS})

    params = {**sd2_fakes.inpaint_params(), "ckpt_path": str(tmp_path / "t2i.ckpt")}
    params["finetune_keys"] = ("model.diffusion_model.input_blocks.0.0.weight",)
    model = ddpm.LatentInpaintDiffusion(**params)
    first = model.model.diffusion_model.input_blocks[0][0].weight
    key = "model.diffusion_model.input_blocks.0.0.weight"
    assert first.shape[1] == 9 and model.keep_dims == 4
    torch.testing.assert_close(first[:, :4], state[key], rtol=0, atol=0)
    assert (first[:, 4:] == 0).all()
    torch.testing.assert_close(model.state_dict()["model.diffusion_model.out.2.weight"],
                               state["model.diffusion_model.out.2.weight"], rtol=0, atol=0)


# --------------------------------------------------------------------------------------------------------
# make_it_fit, reset_ema
# --------------------------------------------------------------------------------------------------------


def test_make_it_fit_tiles_and_divides_as_the_original():
    old = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    # columns 0, 1, 0 read old columns 0, 1, 0; old column k is divided by 1 + (number of new columns it feeds)
    expected = torch.tensor([[1 / 3, 1.0, 1 / 3], [1.0, 2.0, 1.0], [1 / 3, 1.0, 1 / 3]])
    torch.testing.assert_close(tile_to_shape(old, (3, 3)), expected)
    torch.testing.assert_close(tile_to_shape(torch.tensor([1.0, 2.0]), (5,)), torch.tensor([1.0, 2, 1, 2, 1]))
    kernel = torch.randn(2, 3, 3, 3)
    assert tile_to_shape(kernel, (2, 3, 3, 3)).mul(2).allclose(kernel)  # same width: halved (the original's count)
    with pytest.raises(ValueError, match="first two axes"):
        tile_to_shape(kernel, (2, 3, 1, 1))


def test_make_it_fit_loads_a_checkpoint_with_fewer_input_channels(tmp_path):
    torch.manual_seed(0)
    small = ddpm.LatentDiffusion(**sd2_fakes.common(conditioning_key="crossattn", unet_config=sd2_fakes.unet(4)))
    torch.save({"state_dict": small.state_dict()}, tmp_path / "small.ckpt")
    old = small.state_dict()["model.diffusion_model.input_blocks.0.0.weight"]
    with pytest.raises(ValueError, match="input_blocks.0.0.weight"):
        ddpm.LatentInpaintDiffusion(**sd2_fakes.inpaint_params(ckpt_path=str(tmp_path / "small.ckpt")))
    model = ddpm.LatentInpaintDiffusion(**sd2_fakes.inpaint_params(ckpt_path=str(tmp_path / "small.ckpt"),
                                                                  make_it_fit=True))
    new = model.model.diffusion_model.input_blocks[0][0].weight.detach()
    uses = torch.tensor([4.0, 3.0, 3.0, 3.0])  # old input channel k feeds new channels k, k+4 (and 8 for k=0)
    for j in range(9):
        torch.testing.assert_close(new[:, j], old[:, j % 4] / uses[j % 4])


def test_reset_ema_restarts_the_average_from_the_loaded_weights(tmp_path):
    torch.manual_seed(0)
    params = sd2_fakes.common(conditioning_key="crossattn", unet_config=sd2_fakes.unet(4), use_ema=True)
    trained = ddpm.LatentDiffusion(**params)
    with torch.no_grad():
        for p in trained.model.parameters():
            p.add_(1.0)
    trained.model_ema.num_updates.fill_(7)
    torch.save({"state_dict": trained.state_dict()}, tmp_path / "m.ckpt")

    kept = ddpm.LatentDiffusion(**params, ckpt_path=str(tmp_path / "m.ckpt"))
    reset = ddpm.LatentDiffusion(**params, ckpt_path=str(tmp_path / "m.ckpt"), reset_ema=True)
    counted = ddpm.LatentDiffusion(**params, ckpt_path=str(tmp_path / "m.ckpt"), reset_num_ema_updates=True)
    name = "diffusion_modelout2weight"
    unet_out = trained.model.diffusion_model.out[2].weight
    assert not torch.equal(kept.model_ema.state_dict()[name], unet_out)
    torch.testing.assert_close(reset.model_ema.state_dict()[name], unet_out, rtol=0, atol=0)
    assert int(kept.model_ema.num_updates) == 7 and int(counted.model_ema.num_updates) == 0
    with pytest.raises(SettingError, match="ckpt_path"):
        ddpm.LatentDiffusion(**params, reset_ema=True)
    with pytest.raises(SettingError, match="use_ema"):
        ddpm.LatentDiffusion(**{**params, "use_ema": False}, reset_num_ema_updates=True)


def test_unconditional_conditioning_repeats_the_null_label_and_force_null_keeps_the_key():
    model = ddpm.LatentDiffusion(**sd2_fakes.common(conditioning_key="crossattn", unet_config=sd2_fakes.unet(4)))
    uc = model.get_unconditional_conditioning(3, [""])
    assert uc.shape == (3, 3, sd2_fakes.TEXT_DIM) and torch.equal(uc[0], uc[2])
    torch.testing.assert_close(uc[:1], model.cond_stage_model([""]))
    with pytest.raises(ValueError, match="null_label"):
        model.get_unconditional_conditioning(3)
    forced = ddpm.LatentDiffusion(**sd2_fakes.common(conditioning_key="crossattn", unet_config=sd2_fakes.unet(4),
                                                     cond_stage_config="__is_unconditional__",
                                                     force_null_conditioning=True))
    assert forced.model.conditioning_key == "crossattn"
    _, c = forced.get_input({"jpg": images(0), "txt": ["a", "b"]}, "jpg")
    assert c is None


# --------------------------------------------------------------------------------------------------------
# Depth-to-image
# --------------------------------------------------------------------------------------------------------


def test_depth_concat_is_the_bicubic_resized_depth_normalised_per_sample():
    model = ddpm.LatentDepth2ImageDiffusion(**sd2_fakes.depth_params())
    midas_in = images(5, size=12).permute(0, 3, 1, 2) * torch.tensor([1.0, 3.0])[:, None, None, None]
    batch = {"jpg": images(0), "txt": ["a", "b"], "midas_in": midas_in}
    _, cond = model.get_input(batch, "jpg")
    depth = cond["c_concat"][0]
    resized = F.interpolate(model.depth_model(midas_in), size=(8, 8), mode="bicubic", align_corners=False)
    low, high = resized.amin(dim=(1, 2, 3)), resized.amax(dim=(1, 2, 3))
    assert depth.shape == (B, 1, 8, 8)
    torch.testing.assert_close(depth.amin(dim=(1, 2, 3)), torch.full((B,), -1.0))
    torch.testing.assert_close(depth.amax(dim=(1, 2, 3)), 2 * (high - low) / (high - low + 1e-3) - 1)
    # affine in the depth: the same normalised map for a depth scaled and shifted
    torch.testing.assert_close(normalize_depth(3 * resized + 2, eps=0.0), normalize_depth(resized, eps=0.0))
    assert "depth_model.proj.weight" in model.state_dict()
    assert not model.depth_model.training and not model.depth_model.proj.weight.requires_grad

    model.train()
    loss, _ = model.shared_step(batch)
    loss.backward()
    unet_only_gradients(model)
    log = model.log_images(batch, N=2, ddim_steps=2, plot_diffusion_rows=False)
    assert log["depth"].shape == (B, 1, 6, 6) and "samples" in log


# --------------------------------------------------------------------------------------------------------
# x4 upscaler
# --------------------------------------------------------------------------------------------------------


def upscale_batch() -> dict:
    return {"jpg": images(0), "txt": ["a", "b"], "lr": images(1, size=8)}


def test_upscaler_noises_the_low_res_image_at_the_drawn_level_and_passes_the_level_as_y():
    model = ddpm.LatentUpscaleDiffusion(**sd2_fakes.upscale_params())
    batch = upscale_batch()
    torch.manual_seed(11)
    z, cond = model.get_input(batch, "jpg")
    torch.manual_seed(11)
    z_ref = latents(model, batch["jpg"])
    levels = torch.randint(0, 350, (B,))
    x_low = batch["lr"].permute(0, 3, 1, 2).contiguous()
    noise = torch.randn_like(x_low)
    low = model.low_scale_model
    expected = low.sqrt_alphas_cumprod[levels].view(-1, 1, 1, 1) * x_low + \
        low.sqrt_one_minus_alphas_cumprod[levels].view(-1, 1, 1, 1) * noise
    torch.testing.assert_close(z, z_ref, rtol=0, atol=0)
    assert torch.equal(cond["c_adm"], levels) and cond["c_adm"].dtype == torch.long
    torch.testing.assert_close(cond["c_concat"][0], expected, rtol=0, atol=0)
    assert [k for k in model.state_dict() if k.startswith("low_scale_model.")] == [
        f"low_scale_model.{name}" for name in LOW_SCALE_BUFFERS
    ]


def test_upscaler_trains_and_samples_at_a_fixed_noise_level():
    torch.manual_seed(0)
    model = ddpm.LatentUpscaleDiffusion(**sd2_fakes.upscale_params())
    model.train()
    loss, _ = model.shared_step(upscale_batch())
    assert torch.isfinite(loss)
    loss.backward()
    unet_only_gradients(model)

    model.eval()
    c = model.get_learned_conditioning(["a", "b"])
    cond = model.low_scale_cond(upscale_batch()["lr"].permute(0, 3, 1, 2), c, noise_level=20)
    assert cond["c_adm"].tolist() == [20, 20]
    uncond = {**cond, "c_crossattn": [model.get_unconditional_conditioning(B, [""])]}
    samples, _ = DDIMSampler(model).sample(4, B, (4, 8, 8), cond, verbose=False,
                                           unconditional_guidance_scale=5.0, unconditional_conditioning=uncond)
    assert samples.shape == (B, 4, 8, 8) and torch.isfinite(samples).all()
    log = model.log_images(upscale_batch(), N=2, ddim_steps=2, plot_diffusion_rows=False)
    assert "x_lr" in log and any(key.startswith("x_lr_rec_@noise_levels") for key in log)


def test_upscaler_reads_noise_levels_from_the_batch_when_noise_level_key_is_set():
    model = ddpm.LatentUpscaleDiffusion(**sd2_fakes.upscale_params(noise_level_key="level"))
    _, cond = model.get_input({**upscale_batch(), "level": torch.tensor([0, 349])}, "jpg")
    assert cond["c_adm"].tolist() == [0, 349]
    x_low = upscale_batch()["lr"].permute(0, 3, 1, 2)
    torch.testing.assert_close(cond["c_concat"][0][0], x_low[0] * model.low_scale_model.sqrt_alphas_cumprod[0],
                               atol=0.05, rtol=0)  # level 0: noise std 0.01


# --------------------------------------------------------------------------------------------------------
# unCLIP
# --------------------------------------------------------------------------------------------------------


def unclip_batch() -> dict:
    return {"jpg": images(0), "txt": ["a", "b"]}


def test_unclip_c_adm_is_the_noised_embedding_and_its_level_embedding():
    model = ddpm.ImageEmbeddingConditionedLatentDiffusion(**sd2_fakes.unclip_params()).eval()
    batch = unclip_batch()
    torch.manual_seed(5)
    z, cond = model.get_input(batch, "jpg")
    torch.manual_seed(5)
    latents(model, batch["jpg"])
    embedding = model.embedder(batch["jpg"].permute(0, 3, 1, 2))
    levels = torch.randint(0, 1000, (B,))
    noise = torch.randn_like(embedding)
    ac = model.noise_augmentor.alphas_cumprod[levels][:, None]
    expected = torch.cat([ac.sqrt() * embedding + (1 - ac).sqrt() * noise, timestep_embedding(levels, 4)], 1)
    assert set(cond) == {"c_crossattn", "c_adm"} and cond["c_adm"].shape == (B, 8)
    torch.testing.assert_close(cond["c_adm"], expected)
    assert not [k for k in model.state_dict() if "data_mean" in k or "data_std" in k]
    assert len([k for k in model.state_dict() if k.startswith("noise_augmentor.")]) == 8


def test_unclip_drops_the_embedding_in_training_only_and_trains_the_unet():
    model = ddpm.ImageEmbeddingConditionedLatentDiffusion(**sd2_fakes.unclip_params(embedding_dropout=1.0))
    model.train()
    assert (model.get_input(unclip_batch(), "jpg")[1]["c_adm"] == 0).all()
    model.eval()
    assert (model.get_input(unclip_batch(), "jpg")[1]["c_adm"] != 0).any()

    torch.manual_seed(0)
    model = ddpm.ImageEmbeddingConditionedLatentDiffusion(**sd2_fakes.unclip_params())
    model.train()
    loss, _ = model.shared_step(unclip_batch())
    loss.backward()
    unet_only_gradients(model)
    model.eval()
    log = model.log_images(unclip_batch(), N=2, ddim_steps=2)
    assert log["samplescfg_scale_5.00"].shape == (B, 3, 16, 16)


# --------------------------------------------------------------------------------------------------------
# Every sampler family with dict conditionings; the SD 2.x UNet options
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sampler", ["plms", "dpm_solver", "euler_ancestral", "ancestral"])
def test_guided_sampling_of_a_v_model_with_concat_and_adm_conditionings(sampler):
    from ldm.models.diffusion.dpm_solver.sampler import DPMSolverSampler
    from ldm.models.diffusion.named_samplers import NamedSampler
    from ldm.models.diffusion.plms import PLMSSampler

    torch.manual_seed(0)
    model = ddpm.LatentUpscaleDiffusion(**sd2_fakes.upscale_params()).eval()
    _, cond = model.get_input(upscale_batch(), "jpg")
    uncond = {**cond, "c_crossattn": [model.get_unconditional_conditioning(B, [""])]}
    x_T = torch.randn(B, 4, 8, 8)
    if sampler == "ancestral":
        samples = model.sample(cond, batch_size=B, timesteps=4, x_T=x_T, verbose=False)
    else:
        front = {"plms": PLMSSampler, "dpm_solver": DPMSolverSampler}.get(sampler)
        front = front(model) if front else NamedSampler(model, sampler)
        samples, _ = front.sample(4, B, (4, 8, 8), cond, verbose=False, x_T=x_T, unconditional_guidance_scale=3.0,
                                  unconditional_conditioning=uncond)
    assert samples.shape == (B, 4, 8, 8) and torch.isfinite(samples).all()


def test_the_sd2_unet_takes_the_unclip_vector_as_its_sequential_label():
    torch.manual_seed(0)
    params = sd2_fakes.unclip_params(unet_config=sd2_fakes.unet(4, num_classes="sequential", adm_in_channels=8,
                                                                use_linear_in_transformer=True))
    model = ddpm.ImageEmbeddingConditionedLatentDiffusion(**params)
    assert model.model.diffusion_model.label_emb[0][0].in_features == 8
    model.train()
    loss, _ = model.shared_step(unclip_batch())
    loss.backward()
    unet_only_gradients(model)
