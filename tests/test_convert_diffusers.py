"""scripts/convert_diffusers.py and ldm.convert.pipeline: tiny SD v1- and SD 2.x-like models → a diffusers pipeline
folder (loaded back with diffusers' own classes, local files only) → the original layout, exactly."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import open_clip
import pytest
import torch
from omegaconf import OmegaConf

from ldm.checkpoint import load_state_dict_file, save_safetensors
from ldm.convert.pipeline import OPENCLIP_EXTRA, to_diffusers, to_ldm
from ldm.util import instantiate_from_config

SD2 = Path(__file__).parent / "refdata" / "sd2"
SCRIPT = Path(__file__).parents[1] / "scripts" / "convert_diffusers.py"
PARTS = {"unet_config": "model.diffusion_model.", "first_stage_config": "first_stage_model.",
         "cond_stage_config": "cond_stage_model."}
ATOL = 1e-5


def _randomize(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Non-zero random weights everywhere (zero-initialised output layers would hide mapping errors)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    return module.eval()


def _build(config) -> tuple[dict[str, torch.nn.Module], dict[str, torch.Tensor]]:
    params = config.model.params
    modules = {name: _randomize(instantiate_from_config(params[name]), i) for i, name in enumerate(PARTS)}
    with torch.no_grad():  # cross-attention strong enough that the prompt and the guidance visibly matter
        for name, p in modules["unet_config"].named_parameters():
            if ".attn2.to_k." in name or ".attn2.to_v." in name:
                p.mul_(30.0)
    state = {PARTS[name] + k: v for name, m in modules.items() for k, v in m.state_dict().items()}
    return modules, state


def _v1_config(tmp: Path):
    from transformers import CLIPTextConfig, CLIPTextModel

    text = CLIPTextConfig(vocab_size=49408, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                          num_attention_heads=4, max_position_embeddings=77, hidden_act="quick_gelu")
    CLIPTextModel(text).save_pretrained(tmp / "clip")
    config = OmegaConf.load(SD2 / "configs" / "ldm_v_tiny.yaml")
    params = config.model.params
    params.pop("parameterization")
    params.unet_config.params.update(num_heads=4, num_head_channels=-1, use_linear_in_transformer=False,
                                     context_dim=32, channel_mult=[1, 2, 2])
    params.cond_stage_config = {"target": "ldm.modules.encoders.modules.FrozenCLIPEmbedder",
                                "params": {"version": str(tmp / "clip"), "device": "cpu"}}
    return config


def _v2_config(tmp: Path):
    open_clip.add_model_config(str(SD2 / "configs" / "sd2ref-tiny-text.json"))
    return OmegaConf.load(SD2 / "configs" / "ldm_v_tiny.yaml")


@pytest.fixture(params=["v1", "v2"], scope="module")
def converted(request, tmp_path_factory):
    """(family, config, our modules, our state dict, pipeline folder)."""
    pytest.importorskip("diffusers")
    tmp = tmp_path_factory.mktemp(request.param)
    config = _v1_config(tmp) if request.param == "v1" else _v2_config(tmp)
    modules, state = _build(config)
    to_diffusers(config, state, tmp / "pipe")
    return request.param, config, modules, state, tmp / "pipe"


def test_unet_forward_matches_diffusers(converted) -> None:
    import diffusers

    _, config, modules, _, folder = converted
    theirs = diffusers.UNet2DConditionModel.from_pretrained(folder / "unet", local_files_only=True).eval()
    gen = torch.Generator().manual_seed(1)
    dim = config.model.params.unet_config.params.context_dim
    x, context = torch.randn(2, 4, 16, 16, generator=gen), torch.randn(2, 7, dim, generator=gen)
    t = torch.tensor([3, 900])
    with torch.no_grad():
        ours, ref = modules["unet_config"](x, t, context), theirs(x, t, context).sample
    assert ours.abs().mean() > 1e-2
    torch.testing.assert_close(ours, ref, atol=ATOL, rtol=0)


def test_vae_decode_matches_diffusers(converted) -> None:
    import diffusers

    _, config, modules, _, folder = converted
    theirs = diffusers.AutoencoderKL.from_pretrained(folder / "vae", local_files_only=True).eval()
    assert theirs.config.scaling_factor == pytest.approx(config.model.params.scale_factor)
    z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(modules["first_stage_config"].decode(z), theirs.decode(z).sample, atol=ATOL, rtol=0)


def test_text_encoder_matches_diffusers(converted) -> None:
    from transformers import CLIPTextModel

    family, _, modules, _, folder = converted
    theirs = CLIPTextModel.from_pretrained(folder / "text_encoder", local_files_only=True).eval()
    ids = torch.randint(1, 49406, (2, 77), generator=torch.Generator().manual_seed(3))
    ours = modules["cond_stage_config"]
    with torch.no_grad():
        if family == "v2":
            mine = ours.encode_with_transformer(ids)
        else:
            mine = ours.transformer(input_ids=ids).last_hidden_state
        torch.testing.assert_close(mine, theirs(input_ids=ids).last_hidden_state, atol=ATOL, rtol=0)
    assert (family == "v2") == (folder / "text_encoder" / OPENCLIP_EXTRA).is_file()


def test_scheduler_prediction_type(converted) -> None:
    import diffusers

    family, _, _, _, folder = converted
    scheduler = diffusers.PNDMScheduler.from_pretrained(folder / "scheduler", local_files_only=True)
    assert scheduler.config.prediction_type == ("v_prediction" if family == "v2" else "epsilon")
    assert scheduler.config.beta_schedule == "scaled_linear"


def test_round_trip_is_exact_and_config_builds_it(converted) -> None:
    family, config, _, state, folder = converted
    back, back_config = to_ldm(folder, openclip_arch="sd2ref-tiny-text")
    assert back.keys() == state.keys()
    assert all(torch.equal(back[k], v) for k, v in state.items())
    params = back_config.model.params
    assert params.get("parameterization", "eps") == ("v" if family == "v2" else "eps")
    for name, prefix in PARTS.items():
        if name == "cond_stage_config" and family == "v1":
            continue  # ViT-L from the template; the tiny tower's keys are checked above
        with torch.device("meta"):
            rebuilt = instantiate_from_config(params[name])
        assert set(rebuilt.state_dict()) == {k.removeprefix(prefix) for k in state if k.startswith(prefix)}


def test_script_both_ways(tmp_path, monkeypatch) -> None:
    pytest.importorskip("diffusers")
    spec = importlib.util.spec_from_file_location("convert_diffusers_script", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    config = _v2_config(tmp_path)
    OmegaConf.save(config, tmp_path / "model.yaml")
    _, state = _build(config)
    save_safetensors(tmp_path / "model.safetensors", state)
    script.main(["to-diffusers", "--config", str(tmp_path / "model.yaml"),
                 "--ckpt", str(tmp_path / "model.safetensors"), "--out", str(tmp_path / "pipe")])
    script.main(["to-ldm", "--pipeline", str(tmp_path / "pipe"), "--out", str(tmp_path / "back.ckpt"),
                 "--config-out", str(tmp_path / "back.yaml"), "--openclip-arch", "sd2ref-tiny-text"])
    back = load_state_dict_file(tmp_path / "back.ckpt")
    assert back.keys() == state.keys() and all(torch.equal(back[k], v) for k, v in state.items())
    assert OmegaConf.load(tmp_path / "back.yaml").model.params.parameterization == "v"


def test_missing_diffusers_is_one_line(monkeypatch, capsys) -> None:
    spec = importlib.util.spec_from_file_location("convert_diffusers_script", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    monkeypatch.setitem(sys.modules, "diffusers", None)
    with pytest.raises(SystemExit) as exit_info:
        script.main(["to-ldm", "--pipeline", "nowhere", "--out", "x.ckpt"])
    message = str(exit_info.value)
    assert "pip install diffusers" in message and "\n" not in message


def test_pipeline_output_equals_ours_at_the_same_seed(converted) -> None:
    """diffusers' StableDiffusionPipeline on the converted folder (DDIM, 4 steps, guidance 3, the same initial
    latents) gives our DDIMSampler's image: same timesteps (leading spacing, offset 1), same final alpha, the same
    guidance formula, v- or ε-prediction."""
    import diffusers

    from ldm.models.diffusion.ddim import DDIMSampler

    _, config, _, state, folder = converted
    model = instantiate_from_config(config.model).eval()
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and not [k for k in missing if k.startswith(tuple(PARTS.values()))]
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(folder, local_files_only=True, safety_checker=None)
    pipe.scheduler = diffusers.DDIMScheduler.from_config(pipe.scheduler.config, clip_sample=False)
    pipe.set_progress_bar_config(disable=True)
    factor = 2 ** (len(config.model.params.first_stage_config.params.ddconfig.ch_mult) - 1)
    shape = (4, 16, 16)
    latents = torch.randn(1, *shape, generator=torch.Generator().manual_seed(5))
    prompt = "a red square at the top left"
    with torch.no_grad():
        theirs = pipe(prompt, height=16 * factor, width=16 * factor, num_inference_steps=4, guidance_scale=3.0,
                      latents=latents.clone(), output_type="latent").images
        c, uc = model.get_learned_conditioning([prompt]), model.get_learned_conditioning([""])
        z, _ = DDIMSampler(model).sample(S=4, batch_size=1, shape=shape, conditioning=c, verbose=False, eta=0.0,
                                         unconditional_guidance_scale=3.0, unconditional_conditioning=uc,
                                         x_T=latents.clone())
        # The guidance visibly matters: guidance 3.05 moves the latents by ~3e-4 (v) to ~1e-3 (ε) here.
        torch.testing.assert_close(z, theirs, atol=5e-5, rtol=0)
        image = pipe.image_processor.postprocess(pipe.vae.decode(theirs / pipe.vae.config.scaling_factor).sample,
                                                 output_type="pt")
        ours = ((model.decode_first_stage(z) + 1) / 2).clamp(0, 1)
    assert ours.std() > 1e-2
    torch.testing.assert_close(ours, image, atol=1e-4, rtol=0)
