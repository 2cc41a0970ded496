"""Precision, float32 autoencoder and speed options of the sampling scripts (ldm/inference.py, ldm/sampling_cli.py).

The tiny text-to-image model of tests/test_scripts.py samples in-process; the options must give the float32
numbers (channels-last, prepack, compile) or numbers close to them (bf16), and bad combinations end the scripts
with one line and exit status 2.
"""

from __future__ import annotations

import copy
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ldm import inference
from ldm.inference import (
    PRECISIONS,
    decode_latents,
    encode_latents,
    load_config,
    load_model_from_config,
    make_sampler,
    optimize_for_inference,
    precision_scope,
    text_conditioning,
)
from ldm.modules.diffusionmodules.openaimodel import UNetModel
from ldm.modules.diffusionmodules.prepack import PackedConv2d
from ldm.sampling_cli import run_script, speed_options
from scripts.img2img import main as img2img
from scripts.txt2img import main as txt2img
from scripts.txt2img import parse_args
from tests import test_scripts
from tests.test_scripts import FAST, SIZE

#: The script tests' fixtures: their tiny text-conditional model, and one torch thread for this module.
one_thread = test_scripts.one_thread
text_model = test_scripts.text_model

CPU = torch.device("cpu")
needs_onednn = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN")


@pytest.fixture(scope="module")
def loaded(text_model) -> torch.nn.Module:
    config, ckpt = text_model
    return load_model_from_config(load_config(config), ckpt, CPU)[0]


@pytest.fixture
def model(loaded) -> torch.nn.Module:
    """A fresh copy of the tiny model (the options change it in place)."""
    return copy.deepcopy(loaded)


def _sample(model: torch.nn.Module, precision: str = "full", scale: float = 1.0, steps: int = 4) -> torch.Tensor:
    """Decoded DDIM samples ``(2, 3, 32, 32)`` of a fixed seed, as txt2img computes them."""
    sampler = make_sampler("ddim", model)
    torch.manual_seed(0)
    with torch.no_grad(), precision_scope(precision, CPU), model.ema_scope():
        c, uc = text_conditioning(model, ["a red cube", "a blue ball"], "", scale)
        z, _ = sampler.sample(S=steps, conditioning=c, batch_size=2, shape=(4, 8, 8), verbose=False,
                              unconditional_guidance_scale=scale, unconditional_conditioning=uc, eta=0.0)
        return decode_latents(model, z)


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path), dtype=int)


# ----------------------------------------------------------------------------------------------------------------
# precision


def test_precision_scope_on_cpu(caplog):
    with precision_scope("full", CPU):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    with caplog.at_level("INFO", logger="ldm.inference"), precision_scope("autocast", CPU):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    assert "no effect on cpu" in caplog.text
    with precision_scope("bf16", CPU):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    with pytest.raises(ValueError, match=r"--precision fp16 needs a CUDA or MPS device, not cpu; use --precision bf16"):
        precision_scope("fp16", CPU)
    with pytest.raises(ValueError, match=r"unknown --precision 'half'; choose one of full, autocast, bf16, fp16"):
        precision_scope("half", CPU)
    assert [parse_args(["--precision", p]).precision for p in PRECISIONS] == list(PRECISIONS)
    assert parse_args([]).precision == "autocast"


@pytest.mark.filterwarnings("ignore:.*CUDA is not available")
def test_precision_scope_dtypes_on_gpus(monkeypatch):
    """The dtype each choice autocasts to on CUDA and MPS (the contexts are only built here, never entered)."""
    cuda, mps = torch.device("cuda"), torch.device("mps")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    for device in (cuda, mps):
        for precision in ("autocast", "fp16"):
            scope = precision_scope(precision, device)
            assert (scope.device, scope.fast_dtype) == (device.type, torch.float16)
    scope = precision_scope("bf16", cuda)
    assert (scope.device, scope.fast_dtype) == ("cuda", torch.bfloat16)
    with pytest.raises(ValueError, match=r"--precision bf16 is not supported on mps .*; use --precision fp16"):
        precision_scope("bf16", mps)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: False)
    with pytest.raises(ValueError, match=r"--precision bf16 is not supported on cuda .*; use --precision fp16"):
        precision_scope("bf16", cuda)


def test_autoencoder_runs_in_float32_under_bf16_autocast(model):
    seen = []

    def record(module: torch.nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        seen.append((type(module).__name__, args[0].dtype, output.dtype, torch.is_autocast_enabled("cpu")))

    model.first_stage_model.decoder.register_forward_hook(record)
    model.first_stage_model.encoder.register_forward_hook(record)
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = decode_latents(model, z)
        with precision_scope("bf16", CPU):
            assert model.first_stage_model.post_quant_conv(z).dtype == torch.bfloat16  # autocast is on here
            image = decode_latents(model, z.bfloat16())
            latent = encode_latents(model, image.bfloat16())
    assert image.dtype == latent.dtype == torch.float32
    assert seen == [("Decoder", torch.float32, torch.float32, False)] * 2 + [
        ("Encoder", torch.float32, torch.float32, False)]
    torch.testing.assert_close(image, decode_latents(model, z.bfloat16().float()))
    assert (image - reference).abs().max() < 0.05  # only the bf16 rounding of the latent differs


def test_bf16_on_cpu_samples_close_to_float32(model):
    reference = _sample(model, scale=3.0)
    image = _sample(model, "bf16", scale=3.0)
    assert image.dtype == torch.float32 and torch.isfinite(image).all()
    error = (image - reference).abs()
    assert error.max() > 1e-4, "bf16 autocast did not change anything: it did not run"
    assert error.mean() < 0.02 and error.max() < 0.25, (error.mean(), error.max())


def test_fp16_on_cpu_is_one_line_and_exit_2(text_model, tmp_path, monkeypatch, capsys):
    config, ckpt = text_model
    out = tmp_path / "out"
    common = ["--config", str(config), "--ckpt", str(ckpt), "--outdir", str(out), *SIZE, "--device", "cpu"]
    monkeypatch.delenv("LDM_TRACEBACK", raising=False)
    for extra, message in (
        (["--precision", "fp16"], "--precision fp16 needs a CUDA or MPS device, not cpu; use --precision bf16"),
        (["--precision", "bf16", "--prepack"], "drop --prepack or use --precision full"),
        (["--attention_slicing", "0"], "--attention_slicing: 0 is out of range"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            run_script(lambda extra=extra: txt2img([*common, *extra]))
        assert exit_info.value.code == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], lines
        assert not out.exists()


# ----------------------------------------------------------------------------------------------------------------
# speed options


def test_channels_last_gives_the_float32_samples(model, loaded):
    optimize_for_inference(model, channels_last=True)
    unet = model.model.diffusion_model
    assert unet.input_blocks[0][0].weight.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(_sample(model), _sample(copy.deepcopy(loaded)), atol=1e-5, rtol=1e-5)


@needs_onednn
def test_prepack_gives_the_float32_samples_with_the_ema_weights(text_model, loaded):
    """Prepacked convolutions compute the same numbers (within float rounding: the upsampling convs run fused), and a
    model that keeps EMA weights samples with them."""
    config = load_config(text_model[0])
    config.model.params.use_ema = True
    with_ema = load_model_from_config(config, text_model[1], CPU)[0]
    shadow = dict(with_ema.model_ema.named_buffers())
    with torch.no_grad():
        for name, parameter in with_ema.model.named_parameters():
            shadow[with_ema.model_ema.m_name2s_name[name]].copy_(0.9 * parameter)
    reference = _sample(copy.deepcopy(with_ema))
    assert (reference - _sample(copy.deepcopy(loaded))).abs().max() > 1e-3, "the EMA weights must matter here"
    optimize_for_inference(with_ema, prepack=True)
    packed = [m for m in with_ema.model.diffusion_model.modules() if isinstance(m, PackedConv2d)]
    assert packed and not with_ema.use_ema and not hasattr(with_ema, "model_ema")  # EMA copied in, copy freed
    torch.testing.assert_close(_sample(with_ema), reference, atol=1e-5, rtol=1e-5)


def test_compile_wraps_the_unet_forward_and_keeps_its_numbers(monkeypatch):
    """``--compile`` is ``UNetModel.compile`` (state-dict keys unchanged); here with the fast eager backend."""
    torch.manual_seed(0)
    unet = UNetModel(image_size=8, in_channels=4, out_channels=4, model_channels=32, attention_resolutions=[],
                     num_res_blocks=1, channel_mult=[1], num_heads=1).eval()
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([3, 700])
    with torch.no_grad():
        reference = unet(x, t)
    keys = list(unet.state_dict())
    monkeypatch.setattr(inference, "COMPILE_BACKEND", "eager")
    optimize_for_inference(types.SimpleNamespace(model=types.SimpleNamespace(diffusion_model=unet)), compile=True)
    assert unet._compiled_call_impl is not None and list(unet.state_dict()) == keys
    with torch.no_grad():
        torch.testing.assert_close(unet(x, t), reference, atol=1e-6, rtol=1e-6)


def test_attention_slicing_and_vae_tiling_keep_the_samples(model, loaded):
    """Slices of 4 query rows (the tiny UNet attends over 16 positions) and a latent that fits in one VAE tile
    give the default numbers."""
    optimize_for_inference(model, attention_slicing=4, vae_tiling=True)
    attentions = [m for m in model.modules() if hasattr(m, "slice_size")]
    assert attentions and all(m.slice_size == 4 for m in attentions)
    assert model.first_stage_model.vae_tiling == (inference.VAE_TILE, 16)
    torch.testing.assert_close(_sample(model), _sample(copy.deepcopy(loaded)), atol=1e-5, rtol=1e-5)


def test_txt2img_speed_flags_reach_the_model(text_model, tmp_path, monkeypatch):
    """The flags arrive at the UNet (compile: inductor), the attention layers (slicing) and the autoencoder
    (tiles of 64 latent pixels); all three are recorded here instead of run."""
    calls = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kwargs: calls.append(("compile", self, kwargs)))
    monkeypatch.setattr(inference, "set_attention_slicing",
                        lambda module, slice_size: calls.append(("slice", module, slice_size)) or 3)
    monkeypatch.setattr(inference, "set_vae_tiling",
                        lambda autoencoder, tile, overlap=16: calls.append(("tile", autoencoder, tile)))
    config, ckpt = text_model
    txt2img(["--config", str(config), "--ckpt", str(ckpt), "--outdir", str(tmp_path), *SIZE, *FAST, "--seed", "1",
             "--skip_grid", "--compile", "--attention_slicing", "256", "--vae_tiling"])
    assert [(name, type(module).__name__, arg) for name, module, arg in calls] == [
        ("slice", "LatentDiffusion", 256),
        ("tile", "AutoencoderKL", 64),
        ("compile", "UNetModel", {"backend": "inductor"}),
    ]
    assert len(list((tmp_path / "samples").iterdir())) == 2


@needs_onednn
def test_txt2img_fast_blocks_channels_last_and_prepack_write_the_reference_pixels(text_model, tmp_path):
    config, ckpt = text_model
    common = ["--config", str(config), "--ckpt", str(ckpt), *SIZE, *FAST, "--seed", "2", "--skip_grid"]
    runs = {"reference": ["--reference_blocks"], "default": [], "packed": ["--channels_last", "--prepack"]}
    for name, extra in runs.items():
        txt2img([*common, "--outdir", str(tmp_path / name), *extra])
    for name in ("00000.png", "00001.png"):
        reference = _pixels(tmp_path / "reference" / "samples" / name)
        for run in ("default", "packed"):
            assert np.abs(_pixels(tmp_path / run / "samples" / name) - reference).max() <= 1, run


def test_speed_option_conflicts_name_the_fix():
    opt = parse_args(["--prepack", "--precision", "bf16"])
    with pytest.raises(ValueError, match="--prepack packs float32 convolutions.*--precision bf16"):
        speed_options(opt)
    assert speed_options(parse_args([])) == {
        "fast_blocks": True, "channels_last": False, "prepack": False, "compile": False, "attention_slicing": None,
        "vae_tiling": False,
    }
    assert speed_options(parse_args(["--reference_blocks"]))["fast_blocks"] is False
    with torch.device("meta"):
        off_cpu = types.SimpleNamespace(model=types.SimpleNamespace(diffusion_model=torch.nn.Conv2d(4, 4, 3)))
    with pytest.raises(ValueError, match="model is on meta; drop --prepack or pass --device cpu"):
        optimize_for_inference(off_cpu, prepack=True)
    with pytest.raises(ValueError, match="--prepack and --compile exclude each other"):
        optimize_for_inference(off_cpu, prepack=True, compile=True)


@pytest.mark.slow
def test_txt2img_compile_with_inductor_writes_the_default_pixels(text_model, tmp_path):
    config, ckpt = text_model
    common = ["--config", str(config), "--ckpt", str(ckpt), *SIZE, *FAST, "--seed", "3", "--skip_grid"]
    txt2img([*common, "--outdir", str(tmp_path / "default")])
    txt2img([*common, "--outdir", str(tmp_path / "compiled"), "--compile"])
    for name in ("00000.png", "00001.png"):
        assert np.abs(_pixels(tmp_path / "default" / "samples" / name) -
                      _pixels(tmp_path / "compiled" / "samples" / name)).max() <= 1


def test_img2img_bf16_and_prepack(text_model, tmp_path):
    """img2img encodes and decodes in float32 under bf16 autocast; prepack keeps the float32 pixels."""
    config, ckpt = text_model
    init = tmp_path / "init.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(init)
    common = ["--config", str(config), "--ckpt", str(ckpt), "--init-img", str(init), "--f", "4", *FAST,
              "--strength", "0.6", "--seed", "4", "--skip_grid"]
    prepack = ["--prepack"] if torch.backends.mkldnn.is_available() else []
    runs = {"full": [], "bf16": ["--precision", "bf16"], "prepack": prepack}
    for name, extra in runs.items():
        img2img([*common, "--outdir", str(tmp_path / name), *extra])
    full, bf16, prepack = (_pixels(tmp_path / name / "samples" / "00000.png") for name in runs)
    assert np.abs(prepack - full).max() <= 1
    assert 0 < np.abs(bf16 - full).mean() < 5
