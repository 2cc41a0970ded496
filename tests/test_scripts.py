"""The sampling scripts (scripts/txt2img.py, img2img.py, sample_diffusion.py) end to end on tiny models.

The models are tiny LatentDiffusion configs (a 2-level UNet with cross-attention, an f=4 AutoencoderKL, and an
offline BERTEmbedder with the CLIP BPE tokenizer or a ClassEmbedder), saved in the original checkpoint layout.
"""

from __future__ import annotations

import copy
import importlib
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from ldm.checkpoint import ema_key, save_safetensors
from ldm.util import instantiate_from_config
from scripts.img2img import main as img2img
from scripts.sample_diffusion import main as sample_diffusion
from scripts.txt2img import main as txt2img

UNET = {
    "target": "ldm.modules.diffusionmodules.openaimodel.UNetModel",
    "params": {
        "image_size": 8, "in_channels": 4, "out_channels": 4, "model_channels": 32, "attention_resolutions": [2],
        "num_res_blocks": 1, "channel_mult": [1, 2], "num_heads": 4, "use_spatial_transformer": True,
        "transformer_depth": 1, "context_dim": 32, "legacy": False,
    },
}
FIRST_STAGE = {
    "target": "ldm.models.autoencoder.AutoencoderKL",
    "params": {
        "embed_dim": 4,
        "ddconfig": {
            "double_z": True, "z_channels": 4, "resolution": 32, "in_channels": 3, "out_ch": 3, "ch": 32,
            "ch_mult": [1, 2, 2], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0,
        },
        "lossconfig": {"target": "torch.nn.Identity"},
    },
}
TEXT_ENCODER = {
    "target": "ldm.modules.encoders.modules.BERTEmbedder",
    "params": {"n_embed": 32, "n_layer": 1, "vocab_size": 49408, "max_seq_len": 16, "tokenizer": "clip"},
}
CLASS_ENCODER = {
    "target": "ldm.modules.encoders.modules.ClassEmbedder",
    "params": {"embed_dim": 32, "n_classes": 11, "key": "class_label"},
}
#: The first stage's downsampling factor (3 levels); with the UNet's halving, image sides must be multiples of 8.
F = 4
SIZE = ["--H", "32", "--W", "32", "--f", str(F)]
FAST = ["--ddim_steps", "5", "--n_samples", "2", "--n_iter", "1"]


def _config(cond_stage: dict | str, cond_key: str, timesteps: int = 1000) -> dict:
    params = copy.deepcopy({
        "linear_start": 0.00085, "linear_end": 0.012, "timesteps": timesteps, "first_stage_key": "image",
        "cond_stage_key": cond_key, "image_size": 8, "channels": 4, "cond_stage_trainable": False,
        "conditioning_key": "crossattn", "scale_factor": 0.18215, "use_ema": False,
        "unet_config": UNET, "first_stage_config": FIRST_STAGE, "cond_stage_config": cond_stage,
    })
    if cond_stage == "__is_unconditional__":
        params["conditioning_key"] = None
        params["unet_config"]["params"].update(use_spatial_transformer=False, context_dim=None)
    return {"model": {"target": "ldm.models.diffusion.ddpm.LatentDiffusion", "params": params}}


def _save_model(folder: Path, config: dict, seed: int) -> tuple[Path, Path]:
    """Build ``config`` with random weights (none zero: the original init zeroes the UNet's output layers; norm
    scales near 1 so the prompt matters); write ``config.yaml`` and an original-layout ``model.ckpt``."""
    folder.mkdir(parents=True)
    model = instantiate_from_config(OmegaConf.create(config).model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            noise = 0.05 * torch.randn(parameter.shape, generator=generator)
            parameter.copy_(1 + noise if parameter.ndim == 1 and name.endswith("weight") else noise)
    OmegaConf.save(OmegaConf.create(config), folder / "config.yaml")
    torch.save({"state_dict": model.state_dict(), "global_step": 1234, "epoch": 3}, folder / "model.ckpt")
    return folder / "config.yaml", folder / "model.ckpt"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run fastest on one thread, above all on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def text_model(tmp_path_factory) -> tuple[Path, Path]:
    return _save_model(tmp_path_factory.mktemp("txt") / "run", _config(TEXT_ENCODER, "caption"), seed=0)


@pytest.fixture(scope="module")
def class_model(tmp_path_factory) -> Path:
    """A class-conditional model with a 20-step schedule (fast vanilla sampling)."""
    config = _config(CLASS_ENCODER, "class_label", timesteps=20)
    return _save_model(tmp_path_factory.mktemp("cls") / "run", config, seed=1)[1]


def _txt2img(text_model, outdir: Path, *extra: str) -> None:
    config, ckpt = text_model
    txt2img(["--config", str(config), "--ckpt", str(ckpt), "--outdir", str(outdir), *SIZE, *FAST,
             "--prompt", "a red cube", *extra])


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def test_txt2img_writes_numbered_samples_and_a_grid(text_model, tmp_path):
    _txt2img(text_model, tmp_path, "--n_iter", "2", "--seed", "7")
    samples = sorted((tmp_path / "samples").iterdir())
    assert [p.name for p in samples] == ["00000.png", "00001.png", "00002.png", "00003.png"]
    assert all(_pixels(p).shape == (32, 32, 3) for p in samples)
    grid = _pixels(tmp_path / "grid-0000.png")
    assert grid.shape == (2 + 2 * (32 + 2), 2 + 2 * (32 + 2), 3)  # 2 per row, 2-pixel padding as torchvision
    np.testing.assert_array_equal(grid[2:34, 36:68], _pixels(samples[1]))
    assert not np.array_equal(_pixels(samples[0]), _pixels(samples[1])), "each sample starts from its own noise"

    _txt2img(text_model, tmp_path, "--seed", "7", "--skip_grid")
    assert sorted(p.name for p in (tmp_path / "samples").iterdir())[-2:] == ["00004.png", "00005.png"]
    assert sorted(p.name for p in tmp_path.glob("grid-*.png")) == ["grid-0000.png"]


def test_txt2img_same_seed_gives_identical_files(text_model, tmp_path):
    for name, seed in (("a", "11"), ("b", "11"), ("c", "12")):
        _txt2img(text_model, tmp_path / name, "--seed", seed)
    first, again, other = ((tmp_path / n / "samples" / "00000.png").read_bytes() for n in "abc")
    assert first == again
    assert (tmp_path / "a" / "grid-0000.png").read_bytes() == (tmp_path / "b" / "grid-0000.png").read_bytes()
    assert first != other


def test_txt2img_fixed_code_and_negative_prompt(text_model, tmp_path):
    _txt2img(text_model, tmp_path / "fixed", "--seed", "3", "--fixed_code", "--skip_grid", "--n_iter", "2")
    fixed = [_pixels(tmp_path / "fixed" / "samples" / f"0000{i}.png") for i in range(4)]
    np.testing.assert_array_equal(fixed[0], fixed[2])  # every iteration starts from the same codes
    np.testing.assert_array_equal(fixed[1], fixed[3])
    assert not np.array_equal(fixed[0], fixed[1])
    _txt2img(text_model, tmp_path / "neg", "--seed", "3", "--fixed_code", "--skip_grid", "--negative_prompt", "blue")
    assert not np.array_equal(_pixels(tmp_path / "neg" / "samples" / "00000.png"), fixed[0])


@pytest.mark.parametrize("sampler", ["--plms", "--dpm_solver"])
def test_txt2img_other_samplers_run_and_differ_from_ddim(text_model, tmp_path, sampler):
    _txt2img(text_model, tmp_path / "ddim", "--seed", "5", "--skip_grid")
    _txt2img(text_model, tmp_path / "other", "--seed", "5", "--skip_grid", sampler)
    ddim, other = (_pixels(tmp_path / n / "samples" / "00000.png") for n in ("ddim", "other"))
    assert other.shape == (32, 32, 3) and other.std() > 0
    assert not np.array_equal(ddim, other)


def test_txt2img_from_safetensors_matches_ckpt(text_model, tmp_path):
    config, ckpt = text_model
    converted = tmp_path / "model.safetensors"
    save_safetensors(converted, torch.load(ckpt, weights_only=True)["state_dict"])
    _txt2img(text_model, tmp_path / "ckpt", "--seed", "9")
    _txt2img((config, converted), tmp_path / "st", "--seed", "9")
    for name in ("samples/00000.png", "samples/00001.png", "grid-0000.png"):
        assert (tmp_path / "ckpt" / name).read_bytes() == (tmp_path / "st" / name).read_bytes()


def test_txt2img_use_ema_samples_with_the_ema_weights(text_model, tmp_path):
    config, ckpt = text_model
    state_dict = torch.load(ckpt, weights_only=True)["state_dict"]
    unet = {k: 0.9 * v for k, v in state_dict.items() if k.startswith("model.diffusion_model.")}
    ema = {ema_key(k): v for k, v in unet.items()}
    torch.save({"state_dict": {**state_dict, **ema, "model_ema.decay": torch.tensor(0.9999)}}, tmp_path / "ema.ckpt")
    torch.save({"state_dict": {**state_dict, **unet}}, tmp_path / "swapped.ckpt")
    _txt2img((config, tmp_path / "ema.ckpt"), tmp_path / "ema", "--seed", "6", "--use_ema", "--skip_grid")
    _txt2img((config, tmp_path / "swapped.ckpt"), tmp_path / "swapped", "--seed", "6", "--skip_grid")
    _txt2img((config, tmp_path / "ema.ckpt"), tmp_path / "raw", "--seed", "6", "--skip_grid")
    ema_png, swapped_png, raw_png = ((tmp_path / n / "samples" / "00000.png").read_bytes() for n in
                                     ("ema", "swapped", "raw"))
    assert ema_png == swapped_png and ema_png != raw_png


def test_txt2img_prompts_from_file_batches_the_lines(text_model, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red cube\na blue ball\n\na green cone\n")
    _txt2img(text_model, tmp_path / "out", "--seed", "1", "--from-file", str(prompts))
    assert len(list((tmp_path / "out" / "samples").iterdir())) == 3  # batches of 2 and 1


def test_txt2img_size_not_a_multiple_of_f_names_the_fix(text_model, tmp_path):
    config, ckpt = text_model
    with pytest.raises(ValueError, match=r"--H 30 is not a multiple of 4 \(--f\); use --H 28 or --H 32"):
        txt2img(["--config", str(config), "--ckpt", str(ckpt), "--H", "30", "--W", "32", "--f", "4"])
    with pytest.raises(ValueError, match=r"--H 36 is not a multiple of 8 .*use --H 32 or --H 40"):
        txt2img(["--config", str(config), "--ckpt", str(ckpt), "--H", "36", "--W", "32", "--f", "4"])
    with pytest.raises(ValueError, match=r"--f 8 does not match .* downsamples by 4; pass --f 4"):
        txt2img(["--config", str(config), "--ckpt", str(ckpt), "--outdir", str(tmp_path)])


def test_txt2img_shape_mismatch_names_first_key_and_both_shapes(text_model, tmp_path):
    config, ckpt = text_model
    wider = OmegaConf.load(config)
    wider.model.params.unet_config.params.model_channels = 64
    OmegaConf.save(wider, tmp_path / "wider.yaml")
    with pytest.raises(ValueError, match=r"'model\.diffusion_model\.time_embed\.0\.weight' has shape \(128, 32\) "
                                         r"but the model expects \(256, 64\)"):
        txt2img(["--config", str(tmp_path / "wider.yaml"), "--ckpt", str(ckpt), *SIZE])


def test_txt2img_missing_checkpoint_names_the_flag(text_model, tmp_path):
    config, _ = text_model
    with pytest.raises(FileNotFoundError, match=r"nope\.ckpt.*--ckpt"):
        txt2img(["--config", str(config), "--ckpt", str(tmp_path / "nope.ckpt"), *SIZE])


def test_img2img_resizes_down_to_the_model_multiple(text_model, tmp_path):
    config, ckpt = text_model
    init = tmp_path / "init.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (45, 37, 3), dtype=np.uint8)).save(init)
    args = ["--config", str(config), "--ckpt", str(ckpt), "--init-img", str(init), "--f", str(F), *FAST,
            "--strength", "0.6", "--seed", "4"]
    img2img([*args, "--outdir", str(tmp_path / "a")])
    img2img([*args, "--outdir", str(tmp_path / "b")])
    samples = sorted((tmp_path / "a" / "samples").iterdir())
    assert [_pixels(p).shape for p in samples] == [(40, 32, 3), (40, 32, 3)]  # 45x37 down to multiples of 8
    assert samples[0].read_bytes() == (tmp_path / "b" / "samples" / "00000.png").read_bytes()
    assert _pixels(tmp_path / "a" / "grid-0000.png").shape == (44, 70, 3)


def test_img2img_unreadable_init_image_names_the_file(text_model, tmp_path):
    config, ckpt = text_model
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(ValueError, match=r"cannot read init image .*broken\.png"):
        img2img(["--config", str(config), "--ckpt", str(ckpt), "--init-img", str(broken)])


def test_bad_input_is_one_line_and_exit_2_with_nothing_written(text_model, tmp_path, monkeypatch, capsys):
    """As a command: each bad input ends with one stderr line naming it, status 2, and no output folder."""
    from ldm.sampling_cli import run_script

    config, ckpt = text_model
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    out = tmp_path / "out"
    common = ["--config", str(config), "--outdir", str(out)]
    cases = [
        (txt2img, [*common, *SIZE, "--ckpt", str(ckpt), "--H", "30"], "not a multiple of 4"),
        (txt2img, [*common, *SIZE, "--ckpt", str(tmp_path / "missing.ckpt")], "missing.ckpt"),
        (txt2img, [*common, *SIZE, "--ckpt", str(ckpt), "--from-file", str(empty)], "has no prompts"),
        (img2img, [*common, "--ckpt", str(ckpt), "--init-img", str(broken)], "cannot read init image"),
    ]
    monkeypatch.delenv("LDM_TRACEBACK", raising=False)
    for script, argv, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            run_script(lambda script=script, argv=argv: script(argv))
        assert exit_info.value.code == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and "error:" in lines[0] and message in lines[0], lines
        assert not out.exists()


def test_sample_diffusion_class_conditional(class_model, tmp_path):
    args = ["-r", str(class_model), "-n", "3", "--batch_size", "2", "-c", "5", "-e", "0", "--seed", "2",
            "-l", str(tmp_path)]
    outdir = sample_diffusion([*args, "--class", "3"])
    assert outdir.parent.name == "00001234" and outdir.is_relative_to(tmp_path / "run" / "samples")
    images = sorted((outdir / "img").iterdir())
    assert [p.name for p in images] == ["sample_000000.png", "sample_000001.png", "sample_000002.png"]
    arrays = np.load(next((outdir / "numpy").iterdir()))["arr_0"]
    assert arrays.shape == (3, 32, 32, 3) and arrays.dtype == np.uint8
    np.testing.assert_array_equal(arrays[0], _pixels(images[0]))

    other = sample_diffusion([*args, "--class", "7"])
    assert not np.array_equal(_pixels(other / "img" / "sample_000000.png"), _pixels(images[0]))
    with pytest.raises(ValueError, match=r"class-conditional \(11 classes\): pass --class"):
        sample_diffusion(args)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 10\]"):
        sample_diffusion([*args, "--class", "11"])


def test_sample_diffusion_vanilla_and_unconditional(class_model, tmp_path):
    vanilla = sample_diffusion(["-r", str(class_model), "-n", "2", "--batch_size", "2", "-v", "--class", "1", "2",
                                "--seed", "0", "-l", str(tmp_path)])
    images = [_pixels(p) for p in sorted((vanilla / "img").iterdir())]
    assert len(images) == 2 and images[0].shape == (32, 32, 3) and not np.array_equal(*images)

    _, ckpt = _save_model(tmp_path / "uncond", _config("__is_unconditional__", "image", timesteps=20), seed=2)
    outdir = sample_diffusion(["-r", str(tmp_path / "uncond"), "-n", "1", "-c", "5", "--seed", "0"])
    assert outdir.is_relative_to(tmp_path / "uncond" / "samples" / "00001234")
    assert _pixels(outdir / "img" / "sample_000000.png").shape == (32, 32, 3)
    with pytest.raises(ValueError, match="unconditional; drop --class"):
        sample_diffusion(["-r", str(ckpt), "-n", "1", "--class", "3"])


def test_sample_diffusion_finds_config_and_checkpoint_of_a_training_logdir(tmp_path):
    from scripts.sample_diffusion import resolve_run, run_config

    logdir = tmp_path / "2026-01-01T00-00-00_tiny"
    (logdir / "checkpoints").mkdir(parents=True)
    (logdir / "configs").mkdir()
    (logdir / "checkpoints" / "last.ckpt").write_bytes(b"")
    OmegaConf.save(OmegaConf.create(_config(CLASS_ENCODER, "class_label")), logdir / "configs" / "t-project.yaml")
    assert resolve_run(str(logdir)) == (logdir, logdir / "checkpoints" / "last.ckpt")
    assert resolve_run(str(logdir / "checkpoints" / "last.ckpt")) == (logdir, logdir / "checkpoints" / "last.ckpt")
    config = run_config(logdir, ["model.params.scale_factor=0.5"])
    assert config.model.params.scale_factor == 0.5 and config.model.params.cond_stage_key == "class_label"
    with pytest.raises(FileNotFoundError, match="neither model.ckpt nor checkpoints/last.ckpt"):
        resolve_run(str(tmp_path))


def test_txt2img_laion400m_switches_the_default_files():
    from scripts.txt2img import parse_args

    opt = parse_args(["--laion400m"])
    assert opt.config == "configs/latent-diffusion/txt2img-1p4B-eval.yaml"
    assert opt.ckpt == "models/ldm/text2img-large/model.ckpt" and opt.outdir == "outputs/txt2img-samples-laion400m"
    opt = parse_args(["--laion400m", "--ckpt", "mine.ckpt"])
    assert opt.ckpt == "mine.ckpt"
    assert parse_args([]).config == "configs/stable-diffusion/v1-inference.yaml"
    with pytest.raises(SystemExit):
        parse_args(["--plms", "--dpm_solver"])


# ----------------------------------------------------------------------------------------------------------------
# the original scripts' module-level helpers


def test_txt2img_original_helpers(text_model, tmp_path, monkeypatch):
    import inspect

    from scripts import txt2img as script

    assert [list(t) for t in script.chunk(range(5), 2)] == [[0, 1], [2, 3], [4]]
    (single,) = script.numpy_to_pil(np.full((2, 2, 3), 0.5))
    assert np.asarray(single).tolist() == [[[128] * 3] * 2] * 2  # round(127.5) = 128
    assert len(script.numpy_to_pil(np.zeros((3, 2, 2, 3)))) == 3

    class Negate:
        def encode(self, bgr: np.ndarray, method: str) -> np.ndarray:
            assert method == "dwtDct"
            return bgr[:, :, [0, 0, 0]]  # keeps the B channel (the image's blue)

    image = Image.fromarray(np.array([[[10, 20, 30]]], dtype=np.uint8))
    assert script.put_watermark(image) is image
    assert np.asarray(script.put_watermark(image, Negate())).tolist() == [[[30, 30, 30]]]

    monkeypatch.chdir(tmp_path)
    x = np.zeros((4, 6, 3), dtype=np.float32)
    assert script.load_replacement(x) is x  # no assets/rick.jpeg here
    (tmp_path / "assets").mkdir()
    Image.new("RGB", (3, 3), (255, 0, 0)).save(tmp_path / "assets" / "rick.jpeg")
    replacement = script.load_replacement(x)
    assert replacement.shape == (4, 6, 3) and replacement.dtype == np.float32 and replacement[..., 0].min() > 0.9

    assert list(inspect.signature(script.load_model_from_config).parameters)[:3] == ["config", "ckpt", "verbose"]
    config, ckpt = text_model
    model = script.load_model_from_config(OmegaConf.load(config), str(ckpt))
    assert not model.training and type(model).__name__ == "LatentDiffusion"
    saved = torch.load(ckpt, weights_only=True)["state_dict"]
    torch.testing.assert_close(model.state_dict()["model.diffusion_model.out.2.weight"].cpu(),
                               saved["model.diffusion_model.out.2.weight"])
    assert callable(script.check_safety)


def test_img2img_load_img_uses_multiples_of_32(tmp_path):
    from scripts.img2img import load_img

    Image.new("RGB", (70, 40), (255, 0, 0)).save(tmp_path / "x.png")
    image = load_img(str(tmp_path / "x.png"))
    assert image.shape == (1, 3, 32, 64) and image.dtype == torch.float32
    torch.testing.assert_close(image[0, :, 5, 5], torch.tensor([1.0, -1.0, -1.0]))


def test_sample_diffusion_original_parser_and_array_helpers():
    from scripts.sample_diffusion import custom_to_np, custom_to_pil, get_parser

    opt, unknown = get_parser().parse_known_args(["-r", "x.ckpt", "model.params.a=1"])
    assert (opt.resume, opt.n_samples, opt.eta, opt.vanilla_sample, opt.logdir, opt.custom_steps,
            opt.batch_size) == ("x.ckpt", 50000, 1.0, False, "none", 50, 10)
    assert unknown == ["model.params.a=1"]
    x = torch.tensor([-2.0, -1.0, 0.0, 0.999, 1.0, 3.0]).view(1, 1, 2, 3).expand(1, 3, 2, 3)
    array = custom_to_np(x)
    assert array.shape == (1, 2, 3, 3) and array.dtype == torch.uint8
    assert array[0, :, :, 0].flatten().tolist() == [0, 0, 127, 254, 255, 255]
    assert np.asarray(custom_to_pil(x[0]))[:, :, 0].flatten().tolist() == [0, 0, 127, 254, 255, 255]


# ----------------------------------------------------------------------------------------------------------------
# --sampler / --schedule (ldm.models.diffusion.named_samplers)

_K = importlib.import_module("ldm.models.diffusion.k_samplers")
_K_READY = all(hasattr(_K, name) for name in ("CompVisDenoiser", "schedule_sigmas", "sample_dpmpp_2m"))
_NOISE_READY = all(hasattr(_K, name) for name in ("default_noise_sampler", "sample_euler_ancestral"))
_needs_k = pytest.mark.skipif(not _K_READY, reason="the k_samplers functions are not in this checkout yet")
_needs_noise = pytest.mark.skipif(not _NOISE_READY, reason="the ancestral k-samplers are not in this checkout yet")


@_needs_k
def test_txt2img_dpmpp_2m_karras_end_to_end(text_model, tmp_path):
    _txt2img(text_model, tmp_path / "ddim", "--seed", "5", "--skip_grid")
    _txt2img(text_model, tmp_path / "karras", "--seed", "5", "--skip_grid", "--sampler", "DPM++ 2M",
             "--schedule", "karras")
    _txt2img(text_model, tmp_path / "suffix", "--seed", "5", "--skip_grid", "--sampler", "dpmpp_2m_karras")
    ddim, karras, suffix = ((tmp_path / n / "samples" / "00000.png").read_bytes() for n in ("ddim", "karras",
                                                                                           "suffix"))
    assert karras == suffix and karras != ddim
    assert _pixels(tmp_path / "karras" / "samples" / "00000.png").std() > 0


@_needs_noise
def test_txt2img_euler_a_is_seeded(text_model, tmp_path):
    for run, seed in (("a", "5"), ("b", "5"), ("c", "6")):
        _txt2img(text_model, tmp_path / run, "--seed", seed, "--skip_grid", "--sampler", "euler_a")
    a, b, c = ((tmp_path / n / "samples" / "00000.png").read_bytes() for n in "abc")
    assert a == b and a != c


@_needs_noise
def test_img2img_with_a_k_sampler(text_model, tmp_path):
    config, ckpt = text_model
    init = tmp_path / "init.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(init)
    args = ["--config", str(config), "--ckpt", str(ckpt), "--init-img", str(init), "--f", str(F), *FAST,
            "--strength", "0.6", "--seed", "4", "--skip_grid"]
    for name, sampler in (("euler", ["--sampler", "Euler a"]), ("again", ["--sampler", "euler_a"]),
                          ("ddim", []), ("plms", ["--plms"])):
        img2img([*args, *sampler, "--outdir", str(tmp_path / name)])
    euler, again, ddim, plms = ((tmp_path / n / "samples" / "00000.png").read_bytes()
                                for n in ("euler", "again", "ddim", "plms"))
    assert euler == again and len({euler, ddim, plms}) == 3


def test_help_lists_the_sampler_names_and_schedules(capsys):
    from scripts.img2img import parse_args as img2img_args
    from scripts.txt2img import parse_args as txt2img_args

    for parse in (txt2img_args, img2img_args):
        with pytest.raises(SystemExit):
            parse(["--help"])
        text = " ".join(capsys.readouterr().out.split())
        for name in ("--sampler NAME", "Euler a (euler_a/euler_ancestral)", "DPM++ 2M (dpmpp_2m)", "DPM++ 3M SDE",
                     "UniPC", "DDIM (ddim)", "PLMS (plms)", "DPM-Solver++ (dpm_solver", '"DPM++ 2M Karras"',
                     "{normal,karras,exponential,polyexponential,simple,ddim_uniform,uniform}"):
            assert name in text, name


def test_sampler_flags(text_model):
    from scripts.txt2img import parse_args

    assert parse_args([]).sampler == "ddim" and parse_args(["--plms"]).sampler == "plms"
    assert parse_args(["--dpm_solver"]).sampler == "dpm_solver"
    assert parse_args(["--sampler", "DPM++ 2M Karras"]).sampler == "DPM++ 2M Karras"
    assert parse_args(["--schedule", "Karras"]).schedule == "karras"
    for argv in (["--plms", "--sampler", "euler"], ["--dpm_solver", "--sampler", "dpm_solver"],
                 ["--schedule", "cosine"]):
        with pytest.raises(SystemExit):
            parse_args(argv)


def test_bad_sampler_choices_are_one_line_errors(text_model, tmp_path, monkeypatch, capsys):
    from ldm.sampling_cli import run_script

    config, ckpt = text_model
    common = ["--config", str(config), "--ckpt", str(ckpt), *SIZE, "--outdir", str(tmp_path / "out")]
    cases = [
        (["--sampler", "Eular a"], "unknown sampler 'Eular a'; did you mean 'Euler a'"),
        (["--sampler", "DDIM", "--schedule", "karras"], "DDIM spaces its steps itself"),
        (["--sampler", "DPM++ 2M Karras", "--schedule", "exponential"], "selects the 'karras' schedule"),
        (["--sampler", "DPM++ 2M", "--ddim_eta", "1"], "is deterministic and takes no eta"),
    ]
    monkeypatch.delenv("LDM_TRACEBACK", raising=False)
    for extra, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            run_script(lambda extra=extra: txt2img([*common, *extra]))
        assert exit_info.value.code == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], lines
