"""Autoencoder reconstruction metrics (ldm/evaluation/reconstruction.py, autoencoder_cli.py): PSNR and SSIM against
closed forms, latent statistics against LatentDiffusion's own scale_by_std, rFID/LPIPS plumbing, the command."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from ldm.evaluation import autoencoder_cli
from ldm.evaluation.features import POOL, FeatureExtractor
from ldm.evaluation.frechet import feature_statistics, frechet_distance
from ldm.evaluation.reconstruction import (
    RunningMoments,
    encode_decode,
    evaluate_autoencoder,
    psnr_8bit,
    ssim_8bit,
    to_8bit,
)
from ldm.models.autoencoder import AutoencoderKL, VQModel
from ldm.models.diffusion.ddpm import LatentDiffusion
from ldm.modules.losses.lpips import PerceptualWeightsError
from scripts import evaluate as evaluate_script
from tests.fakes import EchoUNet, unet

IDENTITY = {"target": "torch.nn.Identity"}
DDCONFIG = dict(double_z=True, z_channels=2, resolution=16, in_channels=3, out_ch=3, ch=32, ch_mult=[1, 2],
                num_res_blocks=1, attn_resolutions=[], dropout=0.0)


def from_levels(levels: torch.Tensor) -> torch.Tensor:
    """8-bit levels -> the [-1, 1] values that map back to exactly those levels."""
    return levels.float() / 127.5 - 1.0


def tiny_kl(seed: int = 0) -> AutoencoderKL:
    torch.manual_seed(seed)
    return AutoencoderKL(ddconfig=DDCONFIG, lossconfig=IDENTITY, embed_dim=2).eval()


class TinyFeatures(FeatureExtractor):
    """A fixed random 3x3 conv + ReLU + global average: uint8 ``(B, 3, H, W)`` -> ``{"pool": (B, 6)}``."""

    name = "tiny-test-features"

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 6, 3)
        with torch.no_grad():
            generator = torch.Generator().manual_seed(0)
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=generator))
            self.conv.bias.zero_()

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return {POOL: torch.relu(self.conv(images.float() / 255.0)).mean(dim=(2, 3))}


class MeanAbsoluteDistance(torch.nn.Module):
    """A stand-in for LPIPS with its interface: two ``(B, 3, H, W)`` images in [-1, 1] -> ``(B, 1, 1, 1)``."""

    def __init__(self) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # gives it a device

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (x - y).abs().mean(dim=(1, 2, 3), keepdim=True) + self.anchor


def tiny_features() -> TinyFeatures:
    """The ``--features tests.test_eval_autoencoder:tiny_features`` factory."""
    return TinyFeatures()


# ---- PSNR and SSIM against closed forms ------------------------------------------------------------------------


def test_psnr_of_constant_offsets_is_10_log10_of_max_squared_over_mse() -> None:
    x = from_levels(torch.full((3, 3, 8, 8), 100))
    offsets = torch.tensor([1, 10, 50]).view(3, 1, 1, 1)
    x_hat = from_levels(100 + offsets.expand(3, 3, 8, 8))
    expected = torch.tensor([10 * math.log10(255**2 / d**2) for d in (1, 10, 50)], dtype=torch.float64)
    torch.testing.assert_close(psnr_8bit(x, x_hat), expected)
    assert psnr_8bit(x, x_hat)[1].item() == pytest.approx(28.1308, abs=1e-4)  # 20 log10(25.5)
    assert torch.isinf(psnr_8bit(x, x)).all()
    with pytest.raises(ValueError, match="equal shapes"):
        psnr_8bit(x, x[..., :4])


def test_8bit_mapping_clamps_and_rounds() -> None:
    values = torch.tensor([-2.0, -1.0, 0.0, 1.0, 3.0, from_levels(torch.tensor(17)).item()])
    assert to_8bit(values).tolist() == [0.0, 0.0, 128.0, 255.0, 255.0, 17.0]


def test_ssim_of_identical_images_is_one_and_of_constants_the_luminance_term() -> None:
    images = from_levels(torch.randint(0, 256, (2, 3, 16, 16), generator=torch.Generator().manual_seed(0)))
    torch.testing.assert_close(ssim_8bit(images, images), torch.ones(2, dtype=torch.float64), atol=1e-6, rtol=0)
    a, b = 60.0, 200.0
    c1 = (0.01 * 255) ** 2
    constant = ssim_8bit(from_levels(torch.full((1, 3, 16, 16), a)), from_levels(torch.full((1, 3, 16, 16), b)))
    assert constant.item() == pytest.approx((2 * a * b + c1) / (a**2 + b**2 + c1), rel=1e-5)


def gaussian_window(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    offsets = np.arange(size) - (size - 1) / 2
    line = np.exp(-(offsets**2) / (2 * sigma**2))
    line /= line.sum()
    return np.outer(line, line)


def hand_ssim(x: np.ndarray, y: np.ndarray, data_range: float = 255.0) -> float:
    """SSIM of two ``(C, H, W)`` images written out: at every pixel, Gaussian-weighted (11x11, σ = 1.5) means,
    variances and covariance over the window around it (the image reflected at its borders), the formula of Wang
    et al. 2004, then the mean over pixels and channels (torchmetrics' convention: the whole reflect-padded map)."""
    w = gaussian_window()
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    values = []
    for xc, yc in zip(x, y):
        xp, yp = np.pad(xc, 5, mode="reflect"), np.pad(yc, 5, mode="reflect")
        for i in range(xc.shape[0]):
            for j in range(xc.shape[1]):
                a, b = xp[i : i + 11, j : j + 11], yp[i : i + 11, j : j + 11]
                ma, mb = (w * a).sum(), (w * b).sum()
                va, vb, cab = (w * a * a).sum() - ma**2, (w * b * b).sum() - mb**2, (w * a * b).sum() - ma * mb
                values.append((2 * ma * mb + c1) * (2 * cab + c2) / ((ma**2 + mb**2 + c1) * (va + vb + c2)))
    return float(np.mean(values))


def test_ssim_equals_the_hand_computed_formula() -> None:
    generator = torch.Generator().manual_seed(1)
    x_levels = torch.randint(0, 256, (2, 3, 12, 14), generator=generator)
    y_levels = (x_levels + torch.randint(-40, 41, x_levels.shape, generator=generator)).clamp(0, 255)
    measured = ssim_8bit(from_levels(x_levels), from_levels(y_levels))
    for k in range(2):
        expected = hand_ssim(x_levels[k].double().numpy(), y_levels[k].double().numpy())
        assert measured[k].item() == pytest.approx(expected, rel=1e-6)
    assert 0.0 < measured.min() and measured.max() < 1.0
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim_8bit(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8))


# ---- latent statistics -----------------------------------------------------------------------------------------


def test_running_moments_equal_torch_mean_and_std() -> None:
    values = torch.randn(5, 7, generator=torch.Generator().manual_seed(2)) * 3 + 1
    moments = RunningMoments()
    for row in values:
        moments.update(row)
    assert moments.mean == pytest.approx(float(values.double().mean()), rel=1e-12)
    assert moments.std == pytest.approx(float(values.double().std()), rel=1e-12)


def test_scale_factor_is_one_over_the_std_of_the_posterior_samples() -> None:
    model = tiny_kl()
    images = torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(3)) * 2 - 1
    report = evaluate_autoencoder(model, images.split(4), seed=7)
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        z = torch.cat([model.encode(part).sample(generator) for part in images.split(4)])
    assert report.latent_std == pytest.approx(float(z.double().std()), rel=1e-6)
    assert report.latent_mean == pytest.approx(float(z.double().mean()), rel=1e-6, abs=1e-9)
    assert report.scale_factor == pytest.approx(1.0 / float(z.double().std()), rel=1e-6)
    assert report.latent_shape == (2, 8, 8) and report.images == 6


def test_scale_factor_equals_latent_diffusions_scale_by_std_on_the_same_batch() -> None:
    autoencoder = tiny_kl()
    ldm = LatentDiffusion(first_stage_config={"target": "ldm.models.autoencoder.AutoencoderKL",
                                              "params": {"ddconfig": DDCONFIG, "lossconfig": IDENTITY, "embed_dim": 2}},
                          cond_stage_config="__is_unconditional__", unet_config=unet(EchoUNet), use_ema=False,
                          scale_by_std=True, image_size=8, channels=2, timesteps=10)
    ldm.first_stage_model.load_state_dict(autoencoder.state_dict())
    images = torch.rand(4, 16, 16, 3, generator=torch.Generator().manual_seed(4)) * 2 - 1
    torch.manual_seed(11)  # LatentDiffusion draws its posterior sample from the global CPU generator
    ldm.on_train_batch_start({"image": images}, 0)
    report = evaluate_autoencoder(autoencoder, [images.permute(0, 3, 1, 2)], seed=11)
    assert report.scale_factor == pytest.approx(float(ldm.scale_factor), rel=1e-5)


# ---- reconstructions, LPIPS, rFID, VQ ----------------------------------------------------------------------------


def test_psnr_ssim_lpips_and_rfid_are_those_of_the_decoded_modes() -> None:
    model = tiny_kl()
    images = torch.rand(5, 3, 16, 16, generator=torch.Generator().manual_seed(5)) * 2 - 1
    lpips = MeanAbsoluteDistance()  # LPIPS itself is tested in test_lpips.py; here: what it is given
    features = TinyFeatures()
    report = evaluate_autoencoder(model, images.split(2), lpips=lpips, feature_extractor=features)
    with torch.no_grad():
        x_hat = model.decode(model.encode(images).mode())
        psnrs, ssims = psnr_8bit(images, x_hat), ssim_8bit(images, x_hat)
        x8, x8_hat = to_8bit(images), to_8bit(x_hat)
        lpipses = lpips(x8.float() / 127.5 - 1, x8_hat.float() / 127.5 - 1).flatten()
        real, fake = features(x8.to(torch.uint8))[POOL], features(x8_hat.to(torch.uint8))[POOL]
    assert report.psnr == pytest.approx(float(psnrs.mean()), rel=1e-6)
    assert report.psnr_std == pytest.approx(float(psnrs.std()), rel=1e-6)
    assert report.ssim == pytest.approx(float(ssims.mean()), rel=1e-6)
    assert report.lpips == pytest.approx(float(lpipses.double().mean()), rel=1e-5)
    assert report.rfid == pytest.approx(frechet_distance(*feature_statistics(real), *feature_statistics(fake)),
                                        rel=1e-5)
    assert "| 5 |" in report.table() and set(report.as_dict()) >= {"psnr", "ssim", "lpips", "rfid", "scale_factor"}


def test_vq_models_reconstruct_through_the_quantiser_and_report_the_prequant_latents() -> None:
    torch.manual_seed(0)
    model = VQModel(ddconfig={**DDCONFIG, "double_z": False}, lossconfig=IDENTITY, n_embed=8, embed_dim=2).eval()
    images = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(6)) * 2 - 1
    with torch.no_grad():
        x_hat, h = encode_decode(model, images)
        torch.testing.assert_close(x_hat, model(images)[0])
        torch.testing.assert_close(h, model.encode_to_prequant(images))
    report = evaluate_autoencoder(model, [images])
    assert report.scale_factor == pytest.approx(1.0 / float(h.double().std()), rel=1e-6)
    with pytest.raises(TypeError, match="AutoencoderKL or VQModel"):
        encode_decode(torch.nn.Conv2d(3, 3, 1), images)


def test_missing_vgg_weights_say_which_file_goes_where(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))

    def offline(*args, **kwargs):
        raise OSError("offline")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(PerceptualWeightsError) as error:
        autoencoder_cli.load_lpips("pretrained", torch.device("cpu"))
    message = str(error.value)
    assert str(tmp_path / "checkpoints" / "vgg16-397923af.pth") in message and "--no-lpips" in message
    assert "\n" not in message


# ---- the command -------------------------------------------------------------------------------------------------


@pytest.fixture
def saved_model(tmp_path: Path) -> tuple[Path, Path, AutoencoderKL]:
    model = tiny_kl(seed=3)
    config = {"model": {"target": "ldm.models.autoencoder.AutoencoderKL",
                        "params": {"ddconfig": DDCONFIG, "lossconfig": IDENTITY, "embed_dim": 2}}}
    config_path, ckpt_path = tmp_path / "ae.yaml", tmp_path / "ae.ckpt"
    OmegaConf.save(OmegaConf.create(config), config_path)
    torch.save({"state_dict": model.state_dict(), "global_step": 1}, ckpt_path)
    return config_path, ckpt_path, model


def test_command_on_an_image_folder_writes_the_figures(tmp_path, saved_model) -> None:
    config_path, ckpt_path, model = saved_model
    folder = tmp_path / "images"
    folder.mkdir()
    levels = torch.randint(0, 256, (4, 16, 16, 3), generator=torch.Generator().manual_seed(8), dtype=torch.uint8)
    for i, picture in enumerate(levels.numpy()):
        Image.fromarray(picture).save(folder / f"{i}.png")
    out = tmp_path / "report.json"
    autoencoder_cli.main(["--config", str(config_path), "--ckpt", str(ckpt_path), "--images", str(folder),
                          "--no-lpips", "--features", "tests.test_eval_autoencoder:tiny_features",
                          "--batch-size", "3", "--device", "cpu", "--out", str(out)])
    written = json.loads(out.read_text())
    expected = evaluate_autoencoder(model, [from_levels(levels.permute(0, 3, 1, 2))], feature_extractor=TinyFeatures())
    assert written["images"] == 4 and written["features"] == "tests.test_eval_autoencoder:tiny_features"
    for key in ("psnr", "ssim", "rfid", "latent_std", "scale_factor"):  # (SSIM of an untrained model is ≈ 0)
        assert written[key] == pytest.approx(getattr(expected, key), rel=1e-5, abs=1e-4), key
    assert written["lpips"] is None


def test_command_on_a_dataset_config(tmp_path, saved_model) -> None:
    config_path, ckpt_path, _ = saved_model
    data = {"data": {"params": {"validation": {"target": "ldm.data.shapes.ShapesDataset",
                                               "params": {"size": 16, "length": 8, "split": "test"}}}}}
    data_path = tmp_path / "data.yaml"
    OmegaConf.save(OmegaConf.create(data), data_path)
    out = tmp_path / "report.json"
    evaluate_script.main(["autoencoder", "--config", str(config_path), "--ckpt", str(ckpt_path), "--data-config",
                          str(data_path), "--num-images", "5", "--no-lpips", "--features", "none", "--device", "cpu",
                          "--out", str(out)])
    report = json.loads(out.read_text())  # scripts/evaluate.py autoencoder is this command
    assert report["images"] == 5 and report["rfid"] is None and report["psnr"] > 0
    with pytest.raises(Exception, match="data.params.train"):
        autoencoder_cli.main(["--config", str(config_path), "--data-config", str(data_path), "--split", "train",
                              "--no-lpips", "--features", "none", "--device", "cpu"])
