"""scripts/inpaint.py (LDM and SD 2.x modes), scripts/depth2img.py and scripts/upscale.py end to end on tiny models.

The models are tiny versions of the released configs, built here and saved with random weights in the original
checkpoint layout: SD 2.x inpainting / depth / x4 upscaling with the tiny OpenCLIP text tower of the sd2 refdata
(an f=4 KL autoencoder, a 2-level UNet with linear-projection transformers), and the LDM inpainting model (an f=4
VQ autoencoder that is also the conditioner, ``conditioning_key: concat``). The depth stage is a one-conv stand-in
for MiDaS (the DPT-hybrid network is far too big for a test) that records the size of its input.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from ldm.conditioned_sampling import (
    depth_concat,
    inpainting_concat,
    ldm_inpainting_batch,
    midas_input,
    midas_size,
    paste_prediction,
)
from ldm.sampling_cli import run_script
from ldm.util import instantiate_from_config
from scripts.depth2img import main as depth2img
from scripts.inpaint import main as inpaint
from scripts.upscale import main as upscale

TINY_TEXT = str(Path(__file__).parent / "refdata" / "sd2" / "configs" / "sd2ref-tiny-text.json")
TEXT = {
    "target": "ldm.modules.encoders.modules.FrozenOpenCLIPEmbedder",
    "params": {"arch": TINY_TEXT, "version": None, "device": "cpu", "freeze": True, "layer": "penultimate"},
}
KL_F4 = {
    "target": "ldm.models.autoencoder.AutoencoderKL",
    "params": {
        "embed_dim": 4,
        "ddconfig": {"double_z": True, "z_channels": 4, "resolution": 32, "in_channels": 3, "out_ch": 3, "ch": 32,
                     "ch_mult": [1, 2, 2], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0},
        "lossconfig": {"target": "torch.nn.Identity"},
    },
}
VQ_F4 = {
    "target": "ldm.models.autoencoder.VQModelInterface",
    "params": {
        "embed_dim": 3, "n_embed": 64,
        "ddconfig": {"double_z": False, "z_channels": 3, "resolution": 32, "in_channels": 3, "out_ch": 3, "ch": 32,
                     "ch_mult": [1, 2, 2], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0},
        "lossconfig": {"target": "torch.nn.Identity"},
    },
}
UNET = {
    "target": "ldm.modules.diffusionmodules.openaimodel.UNetModel",
    "params": {
        "image_size": 8, "in_channels": 4, "out_channels": 4, "model_channels": 32, "attention_resolutions": [2],
        "num_res_blocks": 1, "channel_mult": [1, 2], "num_head_channels": 8, "use_spatial_transformer": True,
        "use_linear_in_transformer": True, "transformer_depth": 1, "context_dim": 64, "legacy": False,
    },
}
#: Image sides must be multiples of 8: the f=4 first stage times the UNet's one halving.
MULTIPLE = 8
FAST = ["--ddim_steps", "2", "--seed", "3"]


class TinyDepth(torch.nn.Module):
    """A stand-in for ``MiDaSInference``: ``(B, 3, H, W)`` → softplus(conv) ``(B, 1, H, W)`` ≥ 0, remembering the
    size of the last input it saw (class attribute: the script builds its own instance)."""

    last_input_size: tuple[int, int] | None = None

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        type(self).last_input_size = tuple(x.shape[-2:])
        return torch.nn.functional.softplus(self.conv(x))


def _sd2_config(target: str, in_channels: int, **extra) -> dict:
    unet = copy.deepcopy(UNET)
    unet["params"]["in_channels"] = in_channels
    params = {
        "linear_start": 0.00085, "linear_end": 0.012, "timesteps": 1000, "first_stage_key": "jpg",
        "cond_stage_key": "txt", "image_size": 8, "channels": 4, "cond_stage_trainable": False,
        "conditioning_key": "hybrid", "scale_factor": 0.18215, "use_ema": False, "unet_config": unet,
        "first_stage_config": KL_F4, "cond_stage_config": TEXT, **extra,
    }
    return {"model": {"target": f"ldm.models.diffusion.ddpm.{target}", "params": params}}


def _save(folder: Path, config: dict, seed: int) -> tuple[str, str]:
    """Build ``config`` with random weights (norm scales near 1, everything else small noise: none zero, unlike
    the original init's zeroed output layers); write ``config.yaml`` and an original-layout ``model.ckpt``."""
    folder.mkdir(parents=True)
    model = instantiate_from_config(OmegaConf.create(config).model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            noise = 0.05 * torch.randn(parameter.shape, generator=generator)
            parameter.copy_(1 + noise if parameter.ndim == 1 and name.endswith("weight") else noise)
    OmegaConf.save(OmegaConf.create(config), folder / "config.yaml")
    torch.save({"state_dict": model.state_dict(), "global_step": 1}, folder / "model.ckpt")
    return str(folder / "config.yaml"), str(folder / "model.ckpt")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def inpaint_model(tmp_path_factory) -> tuple[str, str]:
    config = _sd2_config("LatentInpaintDiffusion", 9, finetune_keys=None)
    return _save(tmp_path_factory.mktemp("sd2-inpaint") / "run", config, seed=0)


@pytest.fixture(scope="module")
def depth_model(tmp_path_factory) -> tuple[str, str]:
    config = _sd2_config("LatentDepth2ImageDiffusion", 5, finetune_keys=None,
                         depth_stage_config={"target": f"{__name__}.TinyDepth"})
    return _save(tmp_path_factory.mktemp("sd2-depth") / "run", config, seed=1)


@pytest.fixture(scope="module")
def upscale_model(tmp_path_factory) -> tuple[str, str]:
    low_scale = {
        "target": "ldm.modules.diffusionmodules.upscaling.ImageConcatWithNoiseAugmentation",
        "params": {"noise_schedule_config": {"linear_start": 0.0001, "linear_end": 0.02}, "max_noise_level": 350},
    }
    config = _sd2_config("LatentUpscaleDiffusion", 7, low_scale_config=low_scale, low_scale_key="lr",
                         parameterization="v", scale_factor=0.08333)
    config["model"]["params"]["conditioning_key"] = "hybrid-adm"
    config["model"]["params"]["unet_config"]["params"]["num_classes"] = 1000
    return _save(tmp_path_factory.mktemp("x4") / "run", config, seed=2)


@pytest.fixture(scope="module")
def ldm_inpaint_model(tmp_path_factory) -> tuple[str, str]:
    unet = {
        "target": "ldm.modules.diffusionmodules.openaimodel.UNetModel",
        "params": {"image_size": 8, "in_channels": 7, "out_channels": 3, "model_channels": 32,
                   "attention_resolutions": [2], "num_res_blocks": 1, "channel_mult": [1, 2], "num_heads": 2,
                   "resblock_updown": True},
    }
    params = {
        "linear_start": 0.0015, "linear_end": 0.0205, "timesteps": 1000, "loss_type": "l1", "first_stage_key": "image",
        "cond_stage_key": "masked_image", "image_size": 8, "channels": 3, "concat_mode": True, "use_ema": False,
        "unet_config": unet, "first_stage_config": VQ_F4, "cond_stage_config": "__is_first_stage__",
    }
    config = {"model": {"target": "ldm.models.diffusion.ddpm.LatentDiffusion", "params": params}}
    return _save(tmp_path_factory.mktemp("ldm-inpaint") / "run", config, seed=3)


def _model_args(model: tuple[str, str]) -> list[str]:
    return ["--config", model[0], "--ckpt", model[1]]


def _write_image(path: Path, width: int, height: int, seed: int) -> np.ndarray:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return pixels


def _write_mask(path: Path, width: int, height: int, box: tuple[int, int, int, int]) -> np.ndarray:
    """A mask white (repaint) inside ``box = (left, top, right, bottom)``, black elsewhere."""
    mask = np.zeros((height, width), dtype=np.uint8)
    left, top, right, bottom = box
    mask[top:bottom, left:right] = 255
    Image.fromarray(mask).save(path)
    return mask


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def _samples(outdir: Path) -> list[np.ndarray]:
    return [_pixels(path) for path in sorted((outdir / "samples").iterdir())]


# ------------------------------------------------------------------------------------------------------------------
# LDM inpainting (--indir)
# ------------------------------------------------------------------------------------------------------------------


def test_ldm_inpaint_writes_each_pair_and_keeps_the_unmasked_pixels(ldm_inpaint_model, tmp_path):
    indir, outdir = tmp_path / "in", tmp_path / "out"
    indir.mkdir()
    images = {name: _write_image(indir / f"{name}.png", 32, 24, seed) for seed, name in enumerate(["cat", "dog"])}
    masks = {"cat": _write_mask(indir / "cat_mask.png", 32, 24, (8, 4, 24, 16)),
             "dog": _write_mask(indir / "dog_mask.png", 32, 24, (0, 0, 16, 24))}
    inpaint(["--indir", str(indir), "--outdir", str(outdir), "--steps", "2", "--seed", "0",
             *_model_args(ldm_inpaint_model)])
    assert sorted(p.name for p in outdir.iterdir()) == ["cat.png", "dog.png"]
    for name, image in images.items():
        result = _pixels(outdir / f"{name}.png")
        keep = masks[name] == 0
        assert result.shape == (24, 32, 3)
        np.testing.assert_array_equal(result[keep], image[keep])  # bit for bit outside the mask
        assert np.abs(result[~keep].astype(int) - image[~keep]).mean() > 10  # repainted inside


def test_ldm_inpaint_prediction_depends_on_the_mask(ldm_inpaint_model, tmp_path):
    """Same seed, same image, two masks over the same area but different elsewhere: the conditioning differs, so
    the prediction inside the common area does too; the same mask again gives the same bytes."""
    results = []
    for run, box in enumerate([(0, 0, 16, 16), (0, 0, 16, 16), (0, 0, 32, 16)]):
        indir = tmp_path / f"in{run}"
        indir.mkdir()
        _write_image(indir / "x.png", 32, 16, seed=5)
        _write_mask(indir / "x_mask.png", 32, 16, box)
        inpaint(["--indir", str(indir), "--outdir", str(tmp_path / f"out{run}"), "--steps", "2", "--seed", "9",
                 *_model_args(ldm_inpaint_model)])
        results.append(_pixels(tmp_path / f"out{run}" / "x.png")[:, :16])
    np.testing.assert_array_equal(results[0], results[1])
    assert np.abs(results[0].astype(int) - results[2]).max() > 0


def test_ldm_inpainting_batch_follows_the_original_conventions():
    """latent-diffusion's make_batch: every entry ×2 − 1, masked_image = (1 − m)·x before that (masked → −1)."""
    image = torch.tensor([0.25, 0.5, 1.0, 0.0]).reshape(1, 1, 2, 2).expand(1, 3, 2, 2)
    mask = torch.tensor([0.0, 1.0, 1.0, 0.0]).reshape(1, 1, 2, 2)
    batch = ldm_inpainting_batch(image, mask)
    np.testing.assert_array_equal(batch["mask"][0, 0].flatten(), [-1, 1, 1, -1])
    np.testing.assert_array_equal(batch["image"][0, 0].flatten(), [-0.5, 0, 1, -1])
    np.testing.assert_array_equal(batch["masked_image"][0, 0].flatten(), [-0.5, -1, -1, -1])


def test_paste_prediction_takes_the_prediction_only_inside_the_mask():
    image, predicted = np.full((2, 2, 3), 7, np.uint8), np.full((2, 2, 3), 200, np.uint8)
    out = paste_prediction(image, predicted, np.array([[0.0, 1.0], [1.0, 0.0]]))
    np.testing.assert_array_equal(out[..., 0], [[7, 200], [200, 7]])


# ------------------------------------------------------------------------------------------------------------------
# SD 2.x inpainting (--image/--mask)
# ------------------------------------------------------------------------------------------------------------------


def _sd2_inpaint(model, tmp_path: Path, outdir: str, box=(8, 8, 24, 24), *extra: str) -> Path:
    image, mask = tmp_path / "image.png", tmp_path / f"mask-{'-'.join(map(str, box))}.png"
    if not image.exists():
        _write_image(image, 36, 44, seed=1)
    _write_mask(mask, 36, 44, box)
    out = tmp_path / outdir
    inpaint(["--image", str(image), "--mask", str(mask), "--prompt", "a red cube", "--outdir", str(out), *FAST,
             *_model_args(model), *extra])
    return out


def test_sd2_inpaint_writes_samples_and_a_grid_at_the_model_multiple(inpaint_model, tmp_path):
    out = _sd2_inpaint(inpaint_model, tmp_path, "out", (8, 8, 24, 24), "--n_samples", "2")
    samples = _samples(out)
    assert [s.shape for s in samples] == [(40, 32, 3)] * 2  # 36x44 resized down to multiples of 8
    assert samples[0].tobytes() != samples[1].tobytes()
    assert _pixels(out / "grid-0000.png").shape == (2 + 40 + 2, 2 + 2 * (32 + 2), 3)


def test_sd2_inpaint_output_depends_on_the_mask_and_prompt(inpaint_model, tmp_path):
    first = _samples(_sd2_inpaint(inpaint_model, tmp_path, "a", (8, 8, 24, 24)))[0]
    again = _samples(_sd2_inpaint(inpaint_model, tmp_path, "b", (8, 8, 24, 24)))[0]
    other_mask = _samples(_sd2_inpaint(inpaint_model, tmp_path, "c", (0, 0, 36, 20)))[0]
    other_prompt = _samples(_sd2_inpaint(inpaint_model, tmp_path, "d", (8, 8, 24, 24), "--prompt", "a dog"))[0]
    np.testing.assert_array_equal(first, again)
    assert np.abs(first.astype(int) - other_mask).max() > 0
    assert np.abs(first.astype(int) - other_prompt).max() > 0


def test_sd2_inpaint_runs_k_samplers(inpaint_model, tmp_path):
    out = _sd2_inpaint(inpaint_model, tmp_path, "k", (8, 8, 24, 24), "--sampler", "DPM++ 2M Karras")
    assert [s.shape for s in _samples(out)] == [(40, 32, 3)]


class _FirstStageSpy:
    """Just enough of a LatentInpaintDiffusion for ``inpainting_concat``: f=4, the encoder input recorded, the
    'latent' = the input's mean over channels, pooled 4x."""

    def __init__(self, concat_keys):
        self.concat_keys, self.masked_image_key = concat_keys, "masked_image"
        self.first_stage_model = type("FS", (), {"encoder": type("E", (), {"num_resolutions": 3})()})()
        self.seen = None

    def encode_first_stage(self, x):
        self.seen = x.clone()
        return torch.nn.functional.avg_pool2d(x.mean(1, keepdim=True), 4)

    def get_first_stage_encoding(self, z):
        return z


def test_inpainting_concat_masks_with_grey_and_follows_concat_keys():
    """SD 2.x's masked image is x·[m < 0.5] (grey 0 where repainted), the mask goes nearest-resized to the latent
    grid, and the channels come in ``concat_keys`` order."""
    image = torch.linspace(-1, 1, 3 * 8 * 8).reshape(1, 3, 8, 8)
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., :4, :] = 1
    spy = _FirstStageSpy(("mask", "masked_image"))
    c = inpainting_concat(spy, image, mask)
    assert c.shape == (1, 2, 2, 2)
    torch.testing.assert_close(spy.seen[..., :4, :], torch.zeros(1, 3, 4, 8), rtol=0, atol=0)
    torch.testing.assert_close(spy.seen[..., 4:, :], image[..., 4:, :], rtol=0, atol=0)
    torch.testing.assert_close(c[:, 0], torch.tensor([[[1.0, 1.0], [0.0, 0.0]]]))
    swapped = inpainting_concat(_FirstStageSpy(("masked_image", "mask")), image, mask)
    torch.testing.assert_close(swapped, c.flip(1))


# ------------------------------------------------------------------------------------------------------------------
# depth-to-image
# ------------------------------------------------------------------------------------------------------------------


def _depth2img(model, tmp_path: Path, outdir: str, *extra: str) -> Path:
    image = tmp_path / "room.png"
    if not image.exists():
        _write_image(image, 40, 32, seed=2)
    out = tmp_path / outdir
    depth2img(["--init-img", str(image), "--prompt", "a cabin", "--strength", "0.75", "--ddim_steps", "4",
               "--outdir", str(out), *_model_args(model), *extra])
    return out


def test_depth2img_writes_samples_with_the_midas_input_size(depth_model, tmp_path):
    TinyDepth.last_input_size = None
    out = _depth2img(depth_model, tmp_path, "out", "--n_samples", "2")
    assert [s.shape for s in _samples(out)] == [(32, 40, 3)] * 2
    assert (out / "grid-0000.png").is_file()
    assert TinyDepth.last_input_size == (320, 384)  # 40x32 scaled by 384/40 = 9.6 (closer to 1 than 384/32)


def test_depth2img_runs_k_samplers(depth_model, tmp_path):
    out = _depth2img(depth_model, tmp_path, "k", "--sampler", "Euler a", "--skip_grid")
    assert [s.shape for s in _samples(out)] == [(32, 40, 3)]


def test_depth2img_output_depends_on_the_depth_map(depth_model, tmp_path):
    ramp = np.tile(np.linspace(0, 255, 40, dtype=np.uint8), (32, 1))
    Image.fromarray(ramp).save(tmp_path / "ramp.png")
    Image.fromarray(ramp.T.copy()).save(tmp_path / "ramp_t.png")
    first = _samples(_depth2img(depth_model, tmp_path, "a", "--depth", str(tmp_path / "ramp.png")))[0]
    again = _samples(_depth2img(depth_model, tmp_path, "b", "--depth", str(tmp_path / "ramp.png")))[0]
    other = _samples(_depth2img(depth_model, tmp_path, "c", "--depth", str(tmp_path / "ramp_t.png")))[0]
    np.testing.assert_array_equal(first, again)
    assert np.abs(first.astype(int) - other).max() > 0


def test_depth_concat_normalises_a_given_map_per_sample():
    """A given map resized to the latent grid, min → −1 and max → 2·range/(range + 0.001) − 1, as the model's
    own normalisation of MiDaS output."""
    depth = torch.stack([torch.linspace(0, 1, 64), torch.linspace(3, 5, 64)]).reshape(2, 1, 8, 8)
    c = depth_concat(None, torch.zeros(2, 3, 8, 8), (8, 8), depth_map=depth)
    torch.testing.assert_close(c.amin(dim=(1, 2, 3)), torch.tensor([-1.0, -1.0]))
    torch.testing.assert_close(c.amax(dim=(1, 2, 3)), torch.tensor([2 / 1.001 - 1, 4 / 2.001 - 1]))


@pytest.mark.parametrize(
    ("size", "expected"),
    [((512, 512), (384, 384)), ((640, 480), (512, 384)), ((1000, 300), (1280, 384)), ((100, 50), (384, 192)),
     ((384, 80), (384, 64)), ((384, 112), (384, 128))],
)
def test_midas_size_is_the_dpt_minimal_resize(size, expected):
    """The scale closer to 1 of 384/W and 384/H for both sides, each side rounded half-to-even to a multiple of 32
    (80/32 = 2.5 -> 2, 112/32 = 3.5 -> 4)."""
    assert midas_size(*size) == expected
    assert midas_input(torch.zeros(1, 3, size[1], size[0])).shape[-2:] == expected[::-1]


# ------------------------------------------------------------------------------------------------------------------
# x4 upscaling
# ------------------------------------------------------------------------------------------------------------------


def _upscale(model, tmp_path: Path, outdir: str, *extra: str) -> Path:
    image = tmp_path / "small.png"
    if not image.exists():
        _write_image(image, 10, 9, seed=3)
    out = tmp_path / outdir
    upscale(["--init-img", str(image), "--outdir", str(out), *FAST, *_model_args(model), *extra])
    return out


def test_upscale_output_is_four_times_the_low_res_image(upscale_model, tmp_path):
    out = _upscale(upscale_model, tmp_path, "out", "--n_samples", "2")
    assert [s.shape for s in _samples(out)] == [(32, 40, 3)] * 2  # 10x9 down to a multiple of 8 / f = 2, x4
    sized = _upscale(upscale_model, tmp_path, "sized", "--H", "16", "--W", "40", "--sampler", "DPM++ 2M Karras")
    assert [s.shape for s in _samples(sized)] == [(16, 40, 3)]


def test_upscale_output_depends_on_the_noise_level(upscale_model, tmp_path):
    first = _samples(_upscale(upscale_model, tmp_path, "a", "--noise_level", "20"))[0]
    again = _samples(_upscale(upscale_model, tmp_path, "b", "--noise_level", "20"))[0]
    other = _samples(_upscale(upscale_model, tmp_path, "c", "--noise_level", "300"))[0]
    np.testing.assert_array_equal(first, again)
    assert np.abs(first.astype(int) - other).max() > 0


# ------------------------------------------------------------------------------------------------------------------
# bad flags: one line, exit status 2, nothing written
# ------------------------------------------------------------------------------------------------------------------


def test_bad_flags_are_one_line_errors(inpaint_model, depth_model, upscale_model, tmp_path, monkeypatch, capsys):
    image = tmp_path / "img.png"
    _write_image(image, 16, 16, seed=0)
    mask = tmp_path / "mask.png"
    _write_mask(mask, 16, 16, (0, 0, 8, 8))
    small_mask = tmp_path / "small_mask.png"
    _write_mask(small_mask, 8, 8, (0, 0, 4, 4))
    (tmp_path / "pairs").mkdir()
    out = tmp_path / "out"
    common = ["--outdir", str(out), "--ddim_steps", "2"]
    cases = [
        (inpaint, ["--indir", str(tmp_path), "--image", str(image), *common], "either --indir DIR"),
        (inpaint, [*common], "nothing to inpaint"),
        (inpaint, ["--image", str(image), *common], "--image needs --mask too"),
        (inpaint, ["--indir", str(tmp_path / "pairs"), "--prompt", "x", *common], "takes no prompt"),
        (inpaint, ["--indir", str(tmp_path / "pairs"), *common], "no <name>_mask.png files"),
        (inpaint, ["--indir", str(tmp_path), *common, *_model_args(inpaint_model)], "has no image small.png beside"),
        (inpaint, ["--image", str(image), "--mask", str(small_mask), *common, *_model_args(inpaint_model)],
         "make the mask (--mask) the image's size"),
        (inpaint, ["--image", str(image), "--mask", str(mask), *common, *_model_args(depth_model)],
         "not an SD 2.x inpainting model"),
        (depth2img, ["--init-img", str(image), "--strength", "1.5", *common, *_model_args(depth_model)],
         "--strength: 1.5 is out of range"),
        (depth2img, ["--init-img", str(image), *common, *_model_args(inpaint_model)], "not a depth-to-image model"),
        (depth2img, ["--init-img", str(image), "--depth", str(tmp_path / "no.png"), *common,
                     *_model_args(depth_model)], "depth map not found"),
        (upscale, ["--init-img", str(image), "--H", "30", "--W", "32", *common, *_model_args(upscale_model)],
         "--H 30 is not a multiple of 8"),
        (upscale, ["--init-img", str(image), "--H", "32", *common, *_model_args(upscale_model)],
         "--H needs --W too"),
        (upscale, ["--init-img", str(image), "--noise_level", "400", *common, *_model_args(upscale_model)],
         "--noise_level 400 is outside the model's levels 0..350"),
        (upscale, ["--init-img", str(image), *common, *_model_args(inpaint_model)], "not a latent upscaler"),
        (upscale, ["--init-img", str(image), "--f", "8", *common, *_model_args(upscale_model)], "pass --f 4"),
    ]
    monkeypatch.delenv("LDM_TRACEBACK", raising=False)
    for script, argv, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            run_script(lambda script=script, argv=argv: script(argv))
        assert exit_info.value.code == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and "error:" in lines[0] and message in lines[0], (message, lines)
        assert not out.exists()


def test_ldm_mode_rejects_an_sd2_inpainting_model(inpaint_model, tmp_path):
    indir = tmp_path / "in"
    indir.mkdir()
    _write_image(indir / "x.png", 16, 16, seed=0)
    _write_mask(indir / "x_mask.png", 16, 16, (0, 0, 8, 8))
    with pytest.raises(ValueError, match="not the LDM inpainting model.*--image FILE --mask FILE"):
        inpaint(["--indir", str(indir), "--outdir", str(tmp_path / "out"), *_model_args(inpaint_model)])
